"""sign_token produces exactly what botocore's generate_db_auth_token does (no client per token)."""

from __future__ import annotations

import datetime as dt

import boto3

from rdsiam.operator.aws import Credentials, sign_token

HOST = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"


def test_same_token_as_botocore() -> None:
    creds = Credentials("ASIAEXAMPLE", "secret/key+x", "session+token/=", dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    client = boto3.Session(
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key, aws_session_token=creds.token
    ).client("rds", region_name="us-east-1")
    for _ in range(3):  # X-Amz-Date has one-second resolution: retry across a second boundary
        ours = sign_token(creds, HOST, 5432, "app@user", "us-east-1")
        theirs = client.generate_db_auth_token(DBHostname=HOST, Port=5432, DBUsername="app@user", Region="us-east-1")
        if ours == theirs:
            break
    assert ours == theirs
    assert ours.startswith(f"{HOST}:5432/?Action=connect&DBUser=app%40user&")


def test_credentials_repr_hides_keys() -> None:
    creds = Credentials("AKIAEXAMPLEKEY", "verysecret", "tok", None, "arn:aws:iam::1:role/x")
    assert "verysecret" not in repr(creds) and "tok" not in repr(creds) and "AKIAEXAMPLEKEY" not in repr(creds)
