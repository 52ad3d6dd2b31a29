"""The independent SigV4 verifier accepts what AWS SDKs mint and refuses each kind of bad token.

Tokens come from botocore's ``generate_db_auth_token`` (local signing, no network) or from the
verifier's own spec-based signer. Assertions compare booleans and reason codes only: a failing
assertion never prints a token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsiam.testing.sigv4 import Reason, Verdict, parse_token, sign_token, verify_token

HOST = "orders.cluster-abc123def456.us-east-1.rds.amazonaws.com"
PORT = 5432
REGION = "us-east-1"
AKID = "ASIAEXAMPLEAKID00001"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION = "FQoGZXIvYXdzEBYaD+session/token=="
LONG_TERM_AKID = "AKIAEXAMPLEAKID00002"


@dataclass(frozen=True)
class Cred:
    secret_access_key: str
    session_token: str | None
    expiration: datetime | None
    arn: str


TEMPORARY = Cred(SECRET, SESSION, datetime.now(UTC) + timedelta(hours=1), "arn:aws:sts::1:assumed-role/r/s")
LONG_TERM = Cred(SECRET, None, None, "arn:aws:iam::1:user/u")


def lookup(akid: str) -> Cred | None:
    return {AKID: TEMPORARY, LONG_TERM_AKID: LONG_TERM}.get(akid)


@functools.cache
def rds_client(akid: str, session: str | None) -> Any:  # one botocore client per credential (~100 ms each)
    return boto3.session.Session(
        aws_access_key_id=akid, aws_secret_access_key=SECRET, aws_session_token=session
    ).client("rds", region_name=REGION)


def botocore_token(user: str = "app_user", host: str = HOST, port: int = PORT, region: str = REGION,
                   akid: str = AKID, session: str | None = SESSION) -> str:  # fmt: skip
    client = rds_client(akid, session)
    return str(client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=region))


def verify(token: str, user: str = "app_user", now: datetime | None = None) -> Verdict:
    return verify_token(token, user=user, host=HOST, port=PORT, region=REGION, lookup=lookup, now=now)


def replace_param(token: str, name: str, value: str) -> str:
    head, _, query = token.partition("?")
    pairs = [p if not p.startswith(name + "=") else f"{name}={quote(value, safe='')}" for p in query.split("&")]
    return head + "?" + "&".join(pairs)


def test_botocore_token_with_session_credentials_is_accepted() -> None:
    verdict = verify(botocore_token())
    assert verdict.ok and verdict.reason is Reason.OK
    assert verdict.access_key_id == AKID and verdict.db_user == "app_user"
    assert verdict.principal_arn == TEMPORARY.arn
    assert verdict.signed_at is not None and verdict.expires_at == verdict.signed_at + timedelta(seconds=900)


def test_long_term_key_token_is_accepted() -> None:
    assert verify(botocore_token(akid=LONG_TERM_AKID, session=None)).reason is Reason.OK


def test_spec_signer_matches_botocore_byte_for_byte() -> None:
    for _ in range(3):  # X-Amz-Date has one-second resolution: retry across a second boundary
        now = datetime.now(UTC)
        theirs = botocore_token(user="app@user x")
        ours = sign_token(host=HOST, port=PORT, user="app@user x", region=REGION, access_key_id=AKID,
                          secret_access_key=SECRET, session_token=SESSION, now=now)  # fmt: skip
        if ours == theirs:
            break
    same = ours == theirs
    assert same


def test_hostname_case_does_not_matter() -> None:
    assert verify(botocore_token(host=HOST.upper())).ok


@pytest.mark.parametrize(
    ("token_kwargs", "login_user", "reason"),
    [
        ({"user": "someone_else"}, "app_user", Reason.WRONG_USER),
        ({"host": "orders.cluster-other.us-east-1.rds.amazonaws.com"}, "app_user", Reason.WRONG_HOST),
        ({"host": "db.example.com"}, "app_user", Reason.WRONG_HOST),  # a CNAME
        ({"port": 5433}, "app_user", Reason.WRONG_PORT),
        ({"region": "eu-west-1"}, "app_user", Reason.WRONG_REGION),
        ({"akid": "ASIAUNKNOWNKEY000000"}, "app_user", Reason.UNKNOWN_ACCESS_KEY),
        ({"session": None}, "app_user", Reason.MISSING_SESSION_TOKEN),
        ({"session": "another-session-token"}, "app_user", Reason.SESSION_TOKEN_MISMATCH),
        ({"akid": LONG_TERM_AKID}, "app_user", Reason.UNEXPECTED_SESSION_TOKEN),
    ],
)
def test_refusals(token_kwargs: dict[str, Any], login_user: str, reason: Reason) -> None:
    verdict = verify(botocore_token(**token_kwargs), user=login_user)
    assert not verdict and verdict.reason is reason


def test_tampered_signature_is_refused() -> None:
    token = botocore_token()
    last = token[-1]
    tampered = token[:-1] + ("0" if last != "0" else "1")
    assert verify(tampered).reason is Reason.BAD_SIGNATURE


def test_tampered_user_is_refused_even_when_login_matches() -> None:
    token = replace_param(botocore_token(user="app_user"), "DBUser", "admin")
    assert verify(token, user="admin").reason is Reason.BAD_SIGNATURE


def test_expiry_boundary() -> None:
    token = botocore_token()
    signed_at = verify(token).signed_at
    assert signed_at is not None
    assert verify(token, now=signed_at + timedelta(seconds=899)).ok
    assert verify(token, now=signed_at + timedelta(seconds=900)).reason is Reason.EXPIRED
    assert verify(token, now=signed_at + timedelta(seconds=901)).reason is Reason.EXPIRED


def test_future_token_is_not_yet_valid() -> None:
    token = botocore_token()
    assert verify(token, now=datetime.now(UTC) - timedelta(minutes=10)).reason is Reason.NOT_YET_VALID


def test_token_dies_with_its_credentials() -> None:
    soon = Cred(SECRET, SESSION, datetime.now(UTC) + timedelta(seconds=120), "arn:aws:sts::1:assumed-role/r/s")

    def short_lookup(akid: str) -> Cred | None:
        return soon if akid == AKID else None

    token = botocore_token()
    fresh = verify_token(token, user="app_user", host=HOST, port=PORT, region=REGION, lookup=short_lookup)
    assert fresh.ok and fresh.expires_at == soon.expiration
    later = verify_token(token, user="app_user", host=HOST, port=PORT, region=REGION, lookup=short_lookup,
                         now=datetime.now(UTC) + timedelta(seconds=121))  # fmt: skip
    assert later.reason is Reason.CREDENTIALS_EXPIRED


def test_expires_above_900_is_refused() -> None:
    token = sign_token(host=HOST, port=PORT, user="app_user", region=REGION, access_key_id=AKID,
                       secret_access_key=SECRET, session_token=SESSION, expires=3600)  # fmt: skip
    assert verify(token).reason is Reason.EXPIRES_TOO_LONG


def test_other_service_is_refused() -> None:
    token = sign_token(host=HOST, port=PORT, user="app_user", region=REGION, access_key_id=AKID,
                       secret_access_key=SECRET, session_token=SESSION, service="rds")  # fmt: skip
    assert verify(token).reason is Reason.WRONG_SERVICE


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        f"https://{HOST}:{PORT}/?Action=connect",
        f"{HOST}/?Action=connect",
        f"{HOST}:{PORT}/?Action=connect&DBUser=app_user",
        f"{HOST}:{PORT}/?Action=connect&Action=connect",
    ],
)
def test_malformed(token: str) -> None:
    assert verify(token).reason is Reason.MALFORMED


def test_wrong_action_is_refused() -> None:
    assert verify(replace_param(botocore_token(), "Action", "login")).reason is Reason.WRONG_ACTION


def test_nothing_secret_in_any_verdict_text() -> None:
    tokens = [botocore_token(), botocore_token(user="x"), botocore_token(session="another-session-token")]
    tokens.append(tokens[0][:-1] + "0")
    for token in tokens:
        verdict = verify(token)
        text = verdict.detail + repr(verdict) + repr(parse_token(token))
        signature = token.rsplit("X-Amz-Signature=", 1)[1]
        leaked = any(secret in text for secret in (signature, SECRET, SESSION, quote(SESSION, safe="")))
        assert not leaked


@settings(max_examples=60, deadline=None)
@given(user=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=40))
def test_any_user_name_round_trips(user: str) -> None:
    token = sign_token(host=HOST, port=PORT, user=user, region=REGION, access_key_id=AKID,
                       secret_access_key=SECRET, session_token=SESSION)  # fmt: skip
    verdict = verify(token, user=user)
    assert verdict.ok
    assert verify(token, user=user + "x").reason is Reason.WRONG_USER
