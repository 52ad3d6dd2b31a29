"""The local STS answers boto3 the way STS answers a pod with IRSA on EKS."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from rdsiam.testing.sts import StsServer


@pytest.fixture
def irsa(sts: StsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Put this process in IRSA mode (as the webhook would) for a fresh role; returns the role ARN."""
    role = sts.create_role("test-sts-irsa")
    # Credentials an outer environment might carry must not win over IRSA.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOUTERENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outer-secret")
    monkeypatch.setenv("AWS_PROFILE", "some-developer-profile")
    for name, value in sts.irsa_env(role, tmp_path, namespace="shop", service_account="orders").items():
        monkeypatch.setenv(name, value)
    return role


def test_default_chain_assumes_role_with_web_identity(sts: StsServer, irsa: str) -> None:
    before = sts.calls("AssumeRoleWithWebIdentity")
    session = boto3.session.Session()
    credentials = session.get_credentials()
    assert credentials is not None and credentials.method == "assume-role-with-web-identity"
    frozen = credentials.get_frozen_credentials()
    assert frozen.access_key.startswith("ASIA") and frozen.token
    identity = session.client("sts").get_caller_identity()
    assert identity["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/test-sts-irsa/")
    assert identity["Account"] == sts.account_id
    assert sts.calls("AssumeRoleWithWebIdentity") == before + 1
    assert sts.calls("GetCallerIdentity") >= 1

    issued = sts.lookup(frozen.access_key)
    assert issued is not None
    matches = (issued.secret_access_key, issued.session_token) == (frozen.secret_key, frozen.token)
    assert matches
    assert issued.arn == identity["Arn"]
    assert issued.expiration is not None
    assert timedelta(minutes=59) < issued.expiration - datetime.now(UTC) <= timedelta(hours=1)


def test_chained_assume_role(sts: StsServer, irsa: str) -> None:
    target = sts.create_role("test-sts-chained")
    before = sts.calls("AssumeRole")
    client = boto3.session.Session().client("sts")
    answer = client.assume_role(RoleArn=target, RoleSessionName="rdsiam-chained", DurationSeconds=900)
    creds = answer["Credentials"]
    issued = sts.lookup(creds["AccessKeyId"])
    assert issued is not None and issued.arn == answer["AssumedRoleUser"]["Arn"]
    assert issued.arn.endswith(":assumed-role/test-sts-chained/rdsiam-chained")
    assert issued.expiration == creds["Expiration"]
    assert sts.calls("AssumeRole") == before + 1


def test_credential_duration_can_be_forced(sts: StsServer, irsa: str) -> None:
    sts.set_credential_duration(120)
    try:
        frozen = boto3.session.Session().get_credentials().get_frozen_credentials()
    finally:
        sts.set_credential_duration(None)
    issued = sts.lookup(frozen.access_key)
    assert issued is not None and issued.expiration is not None
    assert issued.expiration - datetime.now(UTC) <= timedelta(seconds=120)


def test_subprocess_with_irsa_env_resolves_through_the_server(sts: StsServer, tmp_path: Path) -> None:
    role = sts.create_role("test-sts-subprocess")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **sts.irsa_env(role, tmp_path)}
    code = "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("arn:aws:sts::123456789012:assumed-role/test-sts-subprocess/")


def test_irsa_token_file_is_a_jwt_for_the_service_account(sts: StsServer, tmp_path: Path) -> None:
    import base64
    import json

    env = sts.irsa_env(sts.create_role("test-sts-jwt"), tmp_path, namespace="shop", service_account="orders")
    header, payload, signature = Path(env["AWS_WEB_IDENTITY_TOKEN_FILE"]).read_text().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == "system:serviceaccount:shop:orders"
    assert claims["aud"] == ["sts.amazonaws.com"]
    assert env["AWS_ACCESS_KEY_ID"] == "" and env["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"


def test_long_term_user_keys_are_looked_up(sts: StsServer) -> None:
    key = sts.create_user_key("test-sts-user")
    issued = sts.lookup(key.access_key_id)
    assert issued is not None
    assert issued.session_token is None and issued.expiration is None
    assert issued.arn == "arn:aws:iam::123456789012:user/test-sts-user"
    same_secret = issued.secret_access_key == key.secret_access_key
    assert same_secret


def test_unknown_key_and_call_reset(sts: StsServer) -> None:
    assert sts.lookup("ASIANEVERISSUED0000") is None
    sts.reset_calls()
    assert sts.calls() == 0


def test_repr_of_issued_hides_secrets(sts: StsServer) -> None:
    key = sts.create_user_key("test-sts-repr")
    leaked = key.secret_access_key in repr(key)
    assert not leaked


def test_server_stops_and_releases_its_port() -> None:
    server = StsServer().start()
    url = server.url
    server.stop()
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
