"""The IAM front door lets in exactly the logins RDS would, and says what RDS says otherwise.

Tokens are minted by boto3 from credentials obtained through the real default chain (IRSA env,
AssumeRoleWithWebIdentity against the local STS). Assertions look at booleans, reason codes and
server messages, never at token strings, so a failure cannot print a token.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from rdsiam.testing.postgres import PostgresServer, encode_startup, parse_error_fields
from rdsiam.testing.rds import IamPostgres, LoginReason
from rdsiam.testing.sigv4 import Reason
from rdsiam.testing.sts import StsServer

IAM_USER = "iam_app"
IAM_DB = "iam_app_db"
OTHER_IAM_USER = "iam_other"
PLAIN_USER = "plain_no_iam"


@pytest.fixture(scope="module")
def users(postgres: PostgresServer) -> None:
    postgres.create_user(IAM_USER, database=IAM_DB)
    postgres.create_user(OTHER_IAM_USER)
    postgres.create_user(PLAIN_USER, rds_iam=False, password="correct horse")


@pytest.fixture(scope="module")
def irsa_session(sts: StsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[boto3.session.Session]:
    """A boto3 session whose credentials came through the default chain in IRSA mode."""
    role = sts.create_role("test-rds-iam-connect")
    env = sts.irsa_env(role, tmp_path_factory.mktemp("irsa"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        session = boto3.session.Session()
        credentials = session.get_credentials()
        assert credentials is not None and credentials.method == "assume-role-with-web-identity"
        credentials.get_frozen_credentials()  # resolve now, while the IRSA environment is set
        yield session


@pytest.fixture(scope="module")
def rds_client(irsa_session: boto3.session.Session, rds: IamPostgres) -> Any:
    return irsa_session.client("rds", region_name=rds.region)


def mint(client: Any, rds: IamPostgres, user: str = IAM_USER, **overrides: Any) -> str:
    args = {"DBHostname": rds.endpoint, "Port": rds.port, "DBUsername": user, "Region": rds.region}
    args.update(overrides)
    return str(client.generate_db_auth_token(**args))


def refused(rds: IamPostgres, user: str, database: str, password: str, **kw: str) -> str:
    """Try to log in; return libpq's error message (it never contains the password)."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(rds.dsn(user, database, password, **kw), connect_timeout=10).close()
    message = str(info.value)
    leaked = bool(password) and password in message
    assert not leaked
    return message


PAM_FAILED = f'FATAL:  PAM authentication failed for user "{IAM_USER}"'


def test_boto3_token_from_irsa_credentials_logs_in(rds: IamPostgres, rds_client: Any, users: None) -> None:
    token = mint(rds_client, rds)
    with psycopg.connect(rds.dsn(IAM_USER, IAM_DB, token), connect_timeout=10) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row == (IAM_USER, IAM_DB)
        assert conn.info.pgconn.ssl_in_use
    attempt = rds.last_login
    assert attempt is not None and attempt.accepted and attempt.reason == "ok" and attempt.method == "iam"
    assert attempt.tls and attempt.access_key_id and attempt.access_key_id.startswith("ASIA")
    assert attempt.principal_arn and ":assumed-role/test-rds-iam-connect/" in attempt.principal_arn


def test_one_token_serves_many_connections_and_copy(rds: IamPostgres, rds_client: Any, users: None) -> None:
    token = mint(rds_client, rds)
    for _ in range(3):
        with psycopg.connect(rds.dsn(IAM_USER, IAM_DB, token), connect_timeout=10) as conn:
            with conn.cursor().copy("COPY (SELECT generate_series(1, 2000)) TO STDOUT") as copy:
                lines = sum(bytes(block).count(b"\n") for block in copy)
            assert lines == 2000


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("tampered_signature", Reason.BAD_SIGNATURE),
        ("wrong_user", Reason.WRONG_USER),
        ("wrong_host", Reason.WRONG_HOST),
        ("wrong_port", Reason.WRONG_PORT),
        ("wrong_region", Reason.WRONG_REGION),
        ("unknown_access_key", Reason.UNKNOWN_ACCESS_KEY),
    ],
)
def test_bad_tokens_get_the_opaque_pam_failure(
    rds: IamPostgres, rds_client: Any, users: None, case: str, expected: Reason
) -> None:
    if case == "tampered_signature":
        token = mint(rds_client, rds)
        token = token[:-1] + ("0" if token[-1] != "0" else "1")
    elif case == "wrong_user":
        token = mint(rds_client, rds, user=OTHER_IAM_USER)
    elif case == "wrong_host":
        token = mint(rds_client, rds, DBHostname="orders.example.internal")  # e.g. a CNAME
    elif case == "wrong_port":
        token = mint(rds_client, rds, Port=rds.port + 1)
    elif case == "wrong_region":
        token = mint(rds_client, rds, Region="eu-west-1")
    else:
        stranger = boto3.session.Session(
            aws_access_key_id="AKIANEVERISSUEDBYSTS", aws_secret_access_key="not-issued-secret"
        ).client("rds", region_name=rds.region)
        token = mint(stranger, rds)
    message = refused(rds, IAM_USER, IAM_DB, token)
    assert message.endswith(PAM_FAILED)
    attempt = rds.last_login
    assert attempt is not None and not attempt.accepted and attempt.reason == expected
    leaked = token in repr(attempt)
    assert not leaked


def test_expired_token(rds: IamPostgres, rds_client: Any, users: None, monkeypatch: pytest.MonkeyPatch) -> None:
    token = mint(rds_client, rds)
    monkeypatch.setattr(rds, "clock_offset", 901)
    assert refused(rds, IAM_USER, IAM_DB, token).endswith(PAM_FAILED)
    assert rds.last_login is not None and rds.last_login.reason == Reason.EXPIRED


def test_token_dies_with_short_lived_credentials(
    rds: IamPostgres, sts: StsServer, users: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sts.set_credential_duration(60)
    try:
        client = boto3.session.Session().client("sts", endpoint_url=sts.url, region_name=sts.region)
        creds = client.assume_role_with_web_identity(
            RoleArn=sts.create_role("test-rds-iam-short"),
            RoleSessionName="short",
            WebIdentityToken=sts.web_identity_token(),
        )["Credentials"]
    finally:
        sts.set_credential_duration(None)
    signer = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ).client("rds", region_name=rds.region)
    token = mint(signer, rds)
    psycopg.connect(rds.dsn(IAM_USER, IAM_DB, token), connect_timeout=10).close()
    monkeypatch.setattr(rds, "clock_offset", 61)  # credentials dead, token itself has ~14 min left
    assert refused(rds, IAM_USER, IAM_DB, token).endswith(PAM_FAILED)
    assert rds.last_login is not None and rds.last_login.reason == Reason.CREDENTIALS_EXPIRED


def test_no_tls_is_refused_with_the_pg_hba_message(rds: IamPostgres, rds_client: Any, users: None) -> None:
    message = refused(rds, IAM_USER, IAM_DB, mint(rds_client, rds), sslmode="disable")
    assert message.endswith(
        f'FATAL:  pg_hba.conf rejects connection for host "127.0.0.1", user "{IAM_USER}", '
        f'database "{IAM_DB}", no encryption'
    )
    attempt = rds.last_login
    assert attempt is not None and attempt.reason == LoginReason.NO_TLS and not attempt.tls


def test_force_ssl_refuses_plaintext_password_users(
    rds: IamPostgres, users: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = refused(rds, PLAIN_USER, "postgres", "correct horse", sslmode="disable")
    assert message.endswith(
        f'FATAL:  no pg_hba.conf entry for host "127.0.0.1", user "{PLAIN_USER}", database "postgres", no encryption'
    )
    monkeypatch.setattr(rds, "force_ssl", False)
    with psycopg.connect(rds.dsn(PLAIN_USER, "postgres", "correct horse", sslmode="disable")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (PLAIN_USER,)


def test_users_outside_rds_iam_get_password_authentication(rds: IamPostgres, rds_client: Any, users: None) -> None:
    """Without rds_iam, RDS uses password auth: a token fails as a password; unknown users look the same."""
    outside = refused(rds, PLAIN_USER, "postgres", mint(rds_client, rds, user=PLAIN_USER))
    assert rds.last_login is not None and rds.last_login.reason == LoginReason.NOT_IAM_USER
    unknown = refused(rds, "no_such_user", "postgres", mint(rds_client, rds, user="no_such_user"))
    assert rds.last_login is not None and rds.last_login.reason == LoginReason.UNKNOWN_USER
    assert outside.endswith(f'FATAL:  password authentication failed for user "{PLAIN_USER}"')
    assert unknown.replace("no_such_user", PLAIN_USER) == outside

    with psycopg.connect(rds.dsn(PLAIN_USER, "postgres", "correct horse"), connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (PLAIN_USER,)
    assert rds.last_login is not None and rds.last_login.reason == LoginReason.PASSWORD_OK


def test_failures_are_indistinguishable_on_the_wire(rds: IamPostgres, rds_client: Any, users: None) -> None:
    token = mint(rds_client, rds)
    bad_signature = _raw_login(rds, IAM_USER, IAM_DB, token[:-1] + ("0" if token[-1] != "0" else "1"))
    wrong_user = _raw_login(rds, IAM_USER, IAM_DB, mint(rds_client, rds, user=OTHER_IAM_USER))
    assert bad_signature == wrong_user
    assert bad_signature["C"] == "28000" and bad_signature["S"] == bad_signature["V"] == "FATAL"
    assert bad_signature["M"] == f'PAM authentication failed for user "{IAM_USER}"'
    assert bad_signature["R"] == "auth_failed"
    plaintext = _raw_login(rds, IAM_USER, IAM_DB, token, tls=False)
    assert plaintext["C"] == "28000" and plaintext["M"].startswith("pg_hba.conf rejects connection")
    password_users = {_raw_login(rds, user, "postgres", token).get("auth") for user in (PLAIN_USER, "nobody_here")}
    assert password_users == {"10"}  # both asked for SASL (SCRAM-SHA-256): indistinguishable


def test_psql_cli_logs_in_with_pgpassword(rds: IamPostgres, rds_client: Any, users: None) -> None:
    psql = "/usr/bin/psql" if os.path.exists("/usr/bin/psql") else shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed (scripts/setup.sh installs postgresql-client)")
    conninfo = " ".join(f"{key}={value}" for key, value in rds.conninfo(IAM_USER, IAM_DB).items())
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "PGPASSWORD": mint(rds_client, rds),
        "PGCONNECT_TIMEOUT": "10",
    }
    out = subprocess.run(
        [psql, "-X", "-At", conninfo, "-c", "SELECT current_user || ' ' || current_database()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr.replace(env["PGPASSWORD"], "<token>")
    assert out.stdout.strip() == f"{IAM_USER} {IAM_DB}"


def test_cancel_reaches_the_real_backend(rds: IamPostgres, rds_client: Any, users: None) -> None:
    with psycopg.connect(rds.dsn(IAM_USER, IAM_DB, mint(rds_client, rds)), connect_timeout=10) as conn:
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        timer.join()
        assert time.monotonic() - started < 10


def test_certificate_names_the_endpoint_only(rds: IamPostgres, rds_client: Any, users: None) -> None:
    token = mint(rds_client, rds)
    params = {**rds.conninfo(IAM_USER, IAM_DB), "password": token, "connect_timeout": "10"}
    with psycopg.connect(make_conninfo(**{**params, "host": "localhost"})) as conn:  # SAN has localhost
        assert conn.execute("SELECT current_user").fetchone() == (IAM_USER,)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(make_conninfo(**{**params, "host": "orders.example.internal"}))  # a CNAME
    assert "does not match host name" in str(info.value)


def test_missing_postgresql_names_the_setup_script(monkeypatch: pytest.MonkeyPatch) -> None:
    import glob

    from rdsiam.testing.postgres import PostgresUnavailable

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("RDSIAM_PG_BINDIR", raising=False)
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresUnavailable, match="scripts/setup.sh"):
        PostgresServer().start()


def test_login_log_never_holds_the_token(rds: IamPostgres, rds_client: Any, users: None) -> None:
    token = mint(rds_client, rds)
    psycopg.connect(rds.dsn(IAM_USER, IAM_DB, token), connect_timeout=10).close()
    refused(rds, OTHER_IAM_USER, "postgres", token)
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    text = repr(rds.login_log)
    leaked = token in text or signature in text
    assert not leaked


def _raw_login(rds: IamPostgres, user: str, database: str, password: str, tls: bool = True) -> dict[str, str]:
    """Speak the protocol by hand: return the ErrorResponse fields, or {"auth": code} when the
    server asks for anything but a cleartext password."""
    with socket.create_connection((rds.hostaddr, rds.port), timeout=10) as raw:
        sock: socket.socket = raw
        if tls:
            raw.sendall(struct.pack("!II", 8, 80877103))
            assert raw.recv(1) == b"S"
            context = ssl.create_default_context(cafile=rds.ca_file)
            sock = context.wrap_socket(raw, server_hostname=rds.endpoint)
        try:
            sock.sendall(encode_startup({"user": user, "database": database}))
            while True:
                header = _recv(sock, 5)
                payload = _recv(sock, struct.unpack("!I", header[1:])[0] - 4)
                if header[:1] == b"E":
                    return parse_error_fields(payload)
                if header[:1] == b"R":
                    (code,) = struct.unpack("!I", payload[:4])
                    if code != 3:
                        return {"auth": str(code)}
                    body = password.encode() + b"\0"
                    sock.sendall(b"p" + struct.pack("!I", len(body) + 4) + body)
        finally:
            if sock is not raw:
                sock.close()


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data
