"""The login probe behind ``spec.verify`` and ``rdsiam check --connect``, against the IAM-checking
PostgreSQL and against scripted servers for what it cannot play (no TLS, MD5, silence, garbage)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import boto3
import pytest

from rdsiam import _diagnose, _pgwire
from rdsiam._check import main as check_main
from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.sts import StsServer

IAM_USER, PASSWORD_USER, UNKNOWN_USER = "rdsiam_probe_iam", "rdsiam_probe_pw", "rdsiam_probe_nobody"
Mint = Callable[..., str]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def mint(sts: StsServer, rds: IamPostgres, postgres: PostgresServer) -> Mint:
    postgres.create_user(IAM_USER)
    postgres.create_user(PASSWORD_USER, rds_iam=False, password="a-real-password")
    postgres.drop_user(UNKNOWN_USER)
    creds = boto3.client(
        "sts",
        endpoint_url=sts.url,
        region_name=rds.region,
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ).assume_role(RoleArn=sts.create_role("rdsiam-probe-tests"), RoleSessionName="probe")["Credentials"]
    signer = boto3.client(
        "rds",
        region_name=rds.region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )

    def mint(user: str = IAM_USER, host: str | None = None, port: int | None = None) -> str:
        return str(
            signer.generate_db_auth_token(
                DBHostname=host or rds.endpoint, Port=port or rds.port, DBUsername=user, Region=rds.region
            )
        )

    return mint


async def probe_rds(rds: IamPostgres, user: str, token: str, **kw: object) -> _pgwire.ProbeResult:
    args: dict[str, object] = {
        "sslmode": "verify-full",
        "sslrootcert": rds.ca_file,
        "hostaddr": rds.hostaddr,
        "timeout": 5.0,
    }
    args.update(kw)
    host = str(args.pop("host", rds.endpoint))
    return await _pgwire.probe(host, rds.port, user, token, "postgres", **args)  # type: ignore[arg-type]


def ctx_for(rds: IamPostgres, user: str, **kw: str) -> _diagnose.Context:
    return _diagnose.Context(
        user=user,
        host=kw.pop("host", rds.endpoint),
        port=rds.port,
        database="postgres",
        region=rds.region,
        signing_host=kw.pop("signing_host", rds.endpoint),
        **kw,
    )


# -- against the IAM-checking PostgreSQL ---------------------------------------------------------------


async def test_good_token_logs_in_over_tls(rds: IamPostgres, mint: Mint) -> None:
    result = await probe_rds(rds, IAM_USER, mint())
    assert result.ok and result.stage == "done" and result.kind == ""
    assert result.tls and result.auth == "cleartext" and result.server_version
    assert result.address == f"127.0.0.1:{rds.port}"
    assert 0 < result.elapsed_ms < 2000
    last = rds.login_log[-1]
    assert (last.user, last.accepted, last.method, last.tls) == (IAM_USER, True, "iam", True)


@pytest.mark.parametrize("user", [PASSWORD_USER, UNKNOWN_USER])
async def test_not_an_iam_user_is_recognised_without_sending_the_token(rds: IamPostgres, mint: Mint, user: str) -> None:
    result = await probe_rds(rds, user, mint(user))
    assert (result.ok, result.stage, result.kind) == (False, "auth", "password")
    assert result.auth == "SASL (SCRAM-SHA-256)"
    # The probe hung up at the password prompt: the token never entered the password exchange.
    deadline = time.monotonic() + 5
    while not (rds.login_log and rds.login_log[-1].user == user) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert rds.login_log[-1].reason == "client_closed"
    d = _diagnose.diagnose(result.kind, result.code, result.message, ctx_for(rds, user), stage=result.stage)
    assert d.reason == "LoginRejected" and f'GRANT rds_iam TO "{user}"' in d.causes[0]


async def test_sslmode_disable_is_refused_by_pg_hba(rds: IamPostgres, mint: Mint) -> None:
    result = await probe_rds(rds, IAM_USER, mint(), sslmode="disable")
    assert (result.ok, result.kind, result.code, result.tls) == (False, "server", "28000", False)
    assert "no encryption" in result.message
    assert rds.login_log[-1].reason == "no_tls"
    reason, _ = _diagnose.explain(
        result.kind, result.code, result.message, ctx_for(rds, IAM_USER, sslmode="disable"), stage=result.stage
    )
    assert reason == "TLSRequired"


async def test_token_for_another_endpoint_gets_pam_failure(rds: IamPostgres, mint: Mint) -> None:
    other = "orders.cluster-zzz999.us-east-1.rds.amazonaws.com"
    result = await probe_rds(rds, IAM_USER, mint(host=other))
    assert (result.kind, result.code, result.auth) == ("server", "28000", "cleartext")
    assert result.message == f'PAM authentication failed for user "{IAM_USER}"'
    assert rds.login_log[-1].reason == "wrong_host"


async def test_verify_full_checks_the_dialled_name(rds: IamPostgres, mint: Mint) -> None:
    result = await probe_rds(rds, IAM_USER, mint(), host="db.internal.example")
    assert (result.kind, result.stage) == ("tls", "tls") and "certificate verify failed" in result.message
    assert (await probe_rds(rds, IAM_USER, mint(), host="db.internal.example", sslmode="verify-ca")).ok
    untrusted = await probe_rds(rds, IAM_USER, mint(), sslrootcert="system")  # not signed by a public CA
    assert untrusted.kind == "tls" and "certificate verify failed" in untrusted.message
    missing = await probe_rds(rds, IAM_USER, mint(), sslrootcert="/nonexistent/ca.pem")
    assert missing.kind == "tls" and "cannot read sslrootcert" in missing.message


async def test_dns_refused_and_invalid_hostaddr() -> None:
    result = await _pgwire.probe("db.invalid", 5432, "u", "tok", "d", timeout=5)
    assert (result.kind, result.stage) == ("dns", "dns") and "cannot resolve 'db.invalid'" in result.message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await _pgwire.probe("localhost", port, "u", "tok", "d", hostaddr="127.0.0.1", timeout=5)
    assert (result.kind, result.stage) == ("refused", "connect") and f"127.0.0.1:{port}" in result.message
    result = await _pgwire.probe("localhost", port, "u", "tok", "d", hostaddr="not-an-ip", timeout=5)
    assert result.kind == "dns" and "hostaddr is not a numeric IP address" in result.message


# -- scripted servers ----------------------------------------------------------------------------------


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


async def _startup(reader: asyncio.StreamReader) -> None:
    length = struct.unpack("!i", await reader.readexactly(4))[0]
    await reader.readexactly(length - 4)


async def test_silent_server_times_out_at_the_tls_request(scripted: Callable[[Handler], Awaitable[int]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, reads, never answers

    port = await scripted(silent)
    result = await _pgwire.probe("localhost", port, "u", "tok", "d", hostaddr="127.0.0.1", timeout=0.5)
    assert (result.kind, result.stage) == ("timeout", "tls")
    assert "no answer to the TLS request within 0.5 s" in result.message
    assert 450 < result.elapsed_ms < 2000


async def test_no_tls_server_never_gets_the_token(scripted: Callable[[Handler], Awaitable[int]]) -> None:
    seen: list[bytes] = []

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"N")
        await _startup(reader)
        writer.write(_message(b"R", struct.pack("!i", 3)))  # cleartext password, over plain TCP
        await writer.drain()
        seen.append(await reader.read())

    port = await scripted(plain)
    result = await _pgwire.probe(
        "localhost", port, "u", "tok-SECRET", "d", hostaddr="127.0.0.1", sslmode="require", timeout=2
    )
    assert (result.kind, result.stage) == ("no-tls", "tls")
    result = await _pgwire.probe(
        "localhost", port, "u", "tok-SECRET", "d", hostaddr="127.0.0.1", sslmode="prefer", timeout=2
    )
    assert (result.kind, result.stage, result.tls) == ("no-tls", "auth", False)
    assert "the token was not sent" in result.message
    await asyncio.sleep(0.05)
    assert seen and all(b"SECRET" not in data for data in seen)


async def test_md5_request_and_garbage(scripted: Callable[[Handler], Awaitable[int]]) -> None:
    async def md5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _startup(reader)
        writer.write(_message(b"R", struct.pack("!i", 5) + b"salt"))
        await writer.drain()
        await reader.read()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(8)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    async def hangup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    result = await _pgwire.probe(
        "localhost", await scripted(md5), "u", "tok", "d", hostaddr="127.0.0.1", sslmode="disable", timeout=2
    )
    assert (result.kind, result.auth) == ("password", "MD5 password")
    result = await _pgwire.probe("localhost", await scripted(garbage), "u", "tok", "d", hostaddr="127.0.0.1", timeout=2)
    assert (result.kind, result.stage) == ("protocol", "tls")
    result = await _pgwire.probe("localhost", await scripted(hangup), "u", "tok", "d", hostaddr="127.0.0.1", timeout=2)
    assert result.kind == "network" and "closed the connection" in result.message


# -- rdsiam check --connect gives the operator's diagnosis ------------------------------------------------


@pytest.mark.parametrize("user", [PASSWORD_USER, IAM_USER])
def test_check_connect_prints_the_same_diagnosis(tmp_path: Path, rds: IamPostgres, mint: Mint, user: str) -> None:
    other = "orders.cluster-zzz999.us-east-1.rds.amazonaws.com"
    token = mint(user, host=other if user == IAM_USER else None)
    dsn = rds.dsn(user, "postgres", token)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
    AtomicWriter(tmp_path, default_mode=0o400).write(
        secret_payload(
            username=user,
            password=token,
            host=rds.endpoint,
            port=rds.port,
            dbname="postgres",
            dsn=dsn,
            expires_at=expires,
        )
    )
    out = io.StringIO()
    assert check_main([str(tmp_path), "--connect"], out=out) == 1  # sslmode etc. from the mounted DSN
    text = out.getvalue()
    result = asyncio.run(probe_rds(rds, user, token))
    ctx = ctx_for(
        rds,
        user,
        sslmode="verify-full",
        hostaddr=rds.hostaddr,
        auth=result.auth,
        signing_host=other if user == IAM_USER else rds.endpoint,
    )
    expected = _diagnose.diagnose(result.kind, result.code, result.message, ctx, stage=result.stage)
    assert f"PROBLEM:    login failed: {expected.reason}: {expected.summary}" in text
    for cause in expected.causes:
        assert cause in text
    if user == IAM_USER:  # what the token itself shows comes first
        assert "likely cause 1: the token is signed for orders.cluster-zzz999" in text
    assert token not in text and "X-Amz-Signature=" not in text
