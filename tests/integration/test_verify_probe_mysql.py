"""The MySQL login probe behind ``spec.verify`` and ``rdsiam check --connect``: against the IAM-checking
MySQL front door (the IAM exchange, success and refusals), against a real MariaDB (its own 1045, 1044,
1049 and REQUIRE SSL answers), and against scripted servers for what neither plays (silence, garbage,
no TLS offered, a cleartext request over plain TCP)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from rdsiam import _diagnose, _mysqlwire
from rdsiam._check import main as check_main
from rdsiam._pgwire import ProbeResult
from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.mysql import MariaDBServer
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.sts import StsServer
from tests.integration import test_verify_probe

pytestmark = pytest.mark.slow  # a MariaDB server starts (about 4 s)

IAM_USER, DB, GONE_DB = "rdsiam_myprobe", "rdsiam_myprobe_db", "rdsiam_myprobe_gone"
Mint = Callable[[str], str]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
scripted = test_verify_probe.scripted  # the fixture: asyncio servers running a handler each
OTHER = "orders.cluster-zzz999.us-east-1.rds.amazonaws.com"


@pytest.fixture(scope="module")
def mint(sts: StsServer, rds_mysql: IamMySQL, mariadb: MariaDBServer) -> Mint:
    rds_mysql.create_user(IAM_USER, database=DB)
    rds_mysql.create_user("rdsiam_myprobe_gone_user", database=GONE_DB)
    mariadb.execute(f"DROP DATABASE `{GONE_DB}`")  # the grant stays: MariaDB now says 1049, not 1044
    return sts.token_minter("rdsiam-mysql-probe-tests", rds_mysql.endpoint, rds_mysql.port)


async def probe_rds(rds: IamMySQL, user: str, token: str, database: str = DB, **kw: object) -> ProbeResult:
    args: dict[str, object] = {"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": rds.ca_file, "hostaddr": rds.hostaddr,
                               "timeout": 5.0}
    args.update(kw)
    host = str(args.pop("host", rds.endpoint))
    return await _mysqlwire.probe(host, rds.port, user, token, database, **args)  # type: ignore[arg-type]


def ctx_for(rds: IamMySQL, user: str, result: ProbeResult, **kw: str) -> _diagnose.Context:
    return _diagnose.Context(user=user, host=rds.endpoint, port=rds.port, database=DB, region=rds.region,
                             signing_host=kw.pop("signing_host", rds.endpoint), auth=result.auth, engine="mysql",
                             tls=result.tls, sslmode=kw.pop("sslmode", "VERIFY_IDENTITY"),
                             hostaddr=kw.pop("hostaddr", ""))


# -- against the IAM-checking MySQL front door ----------------------------------------------------------


async def test_good_token_logs_in_over_tls(rds_mysql: IamMySQL, mint: Mint) -> None:
    result = await probe_rds(rds_mysql, IAM_USER, mint(IAM_USER))
    assert (result.ok, result.stage, result.kind) == (True, "done", ""), result
    assert result.tls and result.auth == "cleartext" and "MariaDB" in result.server_version
    assert result.address == f"127.0.0.1:{rds_mysql.port}" and 0 < result.elapsed_ms < 2000
    last = rds_mysql.login_log[-1]
    assert (last.user, last.accepted, last.tls, last.reason) == (IAM_USER, True, True, "ok")


@pytest.mark.parametrize("case", ["other-endpoint", "other-user", "unknown-user"])
async def test_a_refused_token_is_1045_with_the_iam_causes(rds_mysql: IamMySQL, mint: Mint, sts: StsServer,
                                                           case: str) -> None:
    user = "rdsiam_myprobe_nobody" if case == "unknown-user" else IAM_USER
    if case == "other-endpoint":
        token = sts.token_minter("rdsiam-mysql-probe-tests", OTHER, rds_mysql.port)(user)
    else:
        token = mint("someone_else" if case == "other-user" else user)
    result = await probe_rds(rds_mysql, user, token)
    assert (result.ok, result.kind, result.code) == (False, "server", "1045")
    assert result.auth == "cleartext" and result.tls
    assert result.message == f"ERROR 1045 (28000): Access denied for user '{user}'@'127.0.0.1' (using password: YES)"
    assert token not in result.message
    d = _diagnose.diagnose(result.kind, result.code, result.message,
                           ctx_for(rds_mysql, user, result, **({"signing_host": OTHER} if case == "other-endpoint"
                                                               else {})), stage=result.stage)
    assert d.reason == "LoginRejected" and result.message in d.summary
    assert any("rds-db:connect" in c and f"dbuser:RESOURCE_ID/{user}" in c for c in d.causes)
    assert "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'" in d.causes[-1]
    if case == "other-endpoint":
        assert d.causes[0].startswith(f"the token is signed for {OTHER}:{rds_mysql.port}")


async def test_without_tls_the_token_is_not_sent(rds_mysql: IamMySQL, mint: Mint) -> None:
    token = mint(IAM_USER)
    result = await probe_rds(rds_mysql, IAM_USER, token, ssl_mode="DISABLED", ssl_ca=None)
    assert (result.ok, result.stage, result.kind, result.tls) == (False, "auth", "no-tls", False)
    assert "the token was not sent" in result.message
    await asyncio.sleep(0.05)
    assert rds_mysql.login_log[-1].reason == "client_closed"  # hung up at the cleartext request
    d = _diagnose.diagnose(result.kind, result.code, result.message,
                           ctx_for(rds_mysql, IAM_USER, result, sslmode="DISABLED"), stage=result.stage)
    assert d.reason == "TLSRequired" and "the DSN sets ssl-mode=DISABLED" in d.causes[0]


async def test_verify_identity_checks_the_dialled_name(rds_mysql: IamMySQL, mint: Mint) -> None:
    token = mint(IAM_USER)
    result = await probe_rds(rds_mysql, IAM_USER, token, host="db.internal.example")
    assert (result.kind, result.stage) == ("tls", "tls") and "certificate verify failed" in result.message
    assert (await probe_rds(rds_mysql, IAM_USER, token, host="db.internal.example", ssl_mode="VERIFY_CA")).ok
    assert (await probe_rds(rds_mysql, IAM_USER, token, ssl_mode="REQUIRED", ssl_ca=None)).ok  # encrypted only
    missing = await probe_rds(rds_mysql, IAM_USER, token, ssl_ca="/nonexistent/ca.pem")
    assert missing.kind == "tls" and "cannot read ssl-ca '/nonexistent/ca.pem'" in missing.message


async def test_unknown_database_after_the_iam_login(rds_mysql: IamMySQL, mint: Mint) -> None:
    user = "rdsiam_myprobe_gone_user"
    result = await probe_rds(rds_mysql, user, mint(user), database=GONE_DB)
    assert (result.kind, result.code, result.auth) == ("server", "1049", "cleartext")
    assert result.message == f"ERROR 1049 (42000): Unknown database '{GONE_DB}'"
    d = _diagnose.diagnose(result.kind, result.code, result.message,
                           ctx_for(rds_mysql, user, result), stage=result.stage)
    assert d.reason == "LoginRejected" and d.summary.startswith(f"The IAM login as '{user}' worked")


# -- against MariaDB itself (password users: the token is never sent to them) ----------------------------


async def test_mariadb_answers(mariadb: MariaDBServer) -> None:
    mariadb.create_user("rdsiam_myprobe_pw", "a-real-password", database=DB)
    mariadb.create_user("rdsiam_myprobe_open", "", database="rdsiam_myprobe_gone2")
    mariadb.execute("DROP DATABASE `rdsiam_myprobe_gone2`")

    async def probe(user: str, database: str, **kw: object) -> ProbeResult:
        args: dict[str, object] = {"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": mariadb.ca_file, "timeout": 5.0, **kw}
        return await _mysqlwire.probe("localhost", mariadb.port, user, "tok-SECRET", database,  # type: ignore[arg-type]
                                      hostaddr=mariadb.host, **args)

    pw = await probe("rdsiam_myprobe_pw", DB)  # a password user: the server checks its own method
    assert (pw.kind, pw.code, pw.auth, pw.tls) == ("server", "1045", "mysql_native_password", True)
    assert "Access denied for user 'rdsiam_myprobe_pw'" in pw.message and "(using password: NO)" in pw.message
    gone = await probe("rdsiam_myprobe_open", "rdsiam_myprobe_gone2")
    assert (gone.kind, gone.code) == ("server", "1049") and "Unknown database" in gone.message
    other = await probe("rdsiam_myprobe_open", DB)
    assert other.code == "1044" and "to database" in other.message
    mariadb.execute("GRANT SELECT ON `mysql`.* TO 'rdsiam_myprobe_open'@'%'")
    opened = await probe("rdsiam_myprobe_open", "mysql")  # no password: in without being asked for the token
    assert (opened.ok, opened.auth, opened.tls) == (True, "mysql_native_password", True)
    plain = await probe("rdsiam_myprobe_open", "", ssl_mode="DISABLED")  # created REQUIRE SSL
    assert (plain.code, plain.tls) == ("1045", False)
    ctx = _diagnose.Context(user="rdsiam_myprobe_open", host="localhost", port=mariadb.port, database="",
                            engine="mysql", sslmode="DISABLED", auth=plain.auth, tls=plain.tls)
    assert _diagnose.diagnose(plain.kind, plain.code, plain.message, ctx).reason == "TLSRequired"
    ctx = _diagnose.Context(user="rdsiam_myprobe_pw", host="localhost", port=mariadb.port, database=DB,
                            engine="mysql", auth=pw.auth, tls=pw.tls)
    d = _diagnose.diagnose(pw.kind, pw.code, pw.message, ctx)
    assert d.reason == "LoginRejected" and "did not treat 'rdsiam_myprobe_pw' as an IAM user" in d.summary


async def test_dns_and_refused() -> None:
    result = await _mysqlwire.probe("db.invalid", 3306, "u", "tok", "d", timeout=5)
    assert (result.kind, result.stage) == ("dns", "dns") and "cannot resolve 'db.invalid'" in result.message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await _mysqlwire.probe("localhost", port, "u", "tok", "d", hostaddr="127.0.0.1", timeout=5)
    assert (result.kind, result.stage) == ("refused", "connect") and f"127.0.0.1:{port}" in result.message


# -- scripted servers ----------------------------------------------------------------------------------


def greeting(caps: int) -> bytes:
    """A Handshake v10 of MySQL 8.0 offering ``caps`` and mysql_native_password."""
    scramble = b"abcdefghijklmnopqrst"
    return (b"\x0a8.0.36\0" + struct.pack("<I", 7) + scramble[:8] + b"\0"
            + struct.pack("<HBHHB", caps & 0xFFFF, 45, 2, caps >> 16, 21) + b"\0" * 10
            + scramble[8:] + b"\0" + b"mysql_native_password\0")


async def test_silent_server_times_out_waiting_for_the_greeting(
        scripted: Callable[[Handler], Awaitable[int]]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    result = await _mysqlwire.probe("localhost", await scripted(silent), "u", "tok", "d", hostaddr="127.0.0.1",
                                    timeout=0.5)
    assert (result.kind, result.stage) == ("timeout", "startup")
    assert "did not answer within 0.5 s (startup)" in result.message and 450 < result.elapsed_ms < 2000


async def test_a_plain_server_never_gets_the_token(scripted: Callable[[Handler], Awaitable[int]]) -> None:
    seen: list[bytes] = []
    caps = _mysqlwire.NEEDED | _mysqlwire.CLIENT_CONNECT_WITH_DB  # no CLIENT_SSL

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_mysqlwire.packet(0, greeting(caps)))
        await writer.drain()
        _, response = await _mysqlwire.read_packet(reader)
        seen.append(response)
        writer.write(_mysqlwire.packet(2, b"\xfemysql_clear_password\0"))  # over plain TCP
        await writer.drain()
        seen.append(await reader.read())

    port = await scripted(plain)
    result = await _mysqlwire.probe("localhost", port, "u", "tok-SECRET", "d", hostaddr="127.0.0.1",
                                    ssl_mode="REQUIRED", timeout=2)
    assert (result.kind, result.stage) == ("no-tls", "tls") and "ssl-mode=REQUIRED" in result.message
    result = await _mysqlwire.probe("localhost", port, "u", "tok-SECRET", "d", hostaddr="127.0.0.1", timeout=2)
    assert (result.kind, result.stage, result.tls, result.auth) == ("no-tls", "auth", False, "cleartext")
    assert "the token was not sent" in result.message
    await asyncio.sleep(0.05)
    assert seen and all(b"SECRET" not in data for data in seen)
    assert seen[0].endswith(b"u\0\x00d\0mysql_native_password\0")  # user, no answer, database, plugin


async def test_garbage_and_hangup(scripted: Callable[[Handler], Awaitable[int]]) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        await reader.read()

    async def hangup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    result = await _mysqlwire.probe("localhost", await scripted(garbage), "u", "tok", "d", hostaddr="127.0.0.1",
                                    timeout=2)
    assert (result.kind, result.stage) == ("protocol", "startup") and "not a MySQL server" in result.message
    result = await _mysqlwire.probe("localhost", await scripted(hangup), "u", "tok", "d", hostaddr="127.0.0.1",
                                    timeout=2)
    assert result.kind == "network" and "closed the connection during startup" in result.message


# -- rdsiam check --connect gives the operator's diagnosis ------------------------------------------------


def _mount(path: Path, rds: IamMySQL, user: str, token: str, query: str) -> None:
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
    dsn = f"mysql://{user}:{quote(token, safe='')}@{rds.endpoint}:{rds.port}/{DB}?{query}"
    AtomicWriter(path, default_mode=0o400).write(secret_payload(
        username=user, password=token, host=rds.endpoint, port=rds.port, dbname=DB, dsn=dsn, expires_at=expires))


def test_check_connect_logs_in_and_explains_like_the_operator(tmp_path: Path, rds_mysql: IamMySQL, mint: Mint,
                                                              sts: StsServer) -> None:
    query = f"ssl-mode=VERIFY_IDENTITY&ssl-ca={rds_mysql.ca_file}&hostaddr={rds_mysql.hostaddr}"
    token = mint(IAM_USER)
    _mount(tmp_path / "good", rds_mysql, IAM_USER, token, query)
    out = io.StringIO()
    assert check_main([str(tmp_path / "good"), "--connect"], out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert f"target:     MySQL {IAM_USER}@{rds_mysql.endpoint}:{rds_mysql.port}/{DB}" in text
    assert f"OK: logged in as {IAM_USER} on 10." in text and "MariaDB" in text
    assert "(TLS, login and SELECT 1 in" in text and token not in text

    bad = sts.token_minter("rdsiam-mysql-probe-tests", OTHER, rds_mysql.port)(IAM_USER)
    _mount(tmp_path / "bad", rds_mysql, IAM_USER, bad, query)
    out = io.StringIO()
    assert check_main([str(tmp_path / "bad"), "--connect"], out=out) == 1
    text = out.getvalue()
    result = asyncio.run(probe_rds(rds_mysql, IAM_USER, bad))
    expected = _diagnose.diagnose(result.kind, result.code, result.message,
                                  ctx_for(rds_mysql, IAM_USER, result, signing_host=OTHER,
                                          hostaddr=rds_mysql.hostaddr), stage=result.stage)
    assert f"PROBLEM:    login failed: {expected.reason}: {expected.summary}" in text
    assert "LoginRejected" in text and "ERROR 1045 (28000)" in text
    for cause in expected.causes:
        assert cause in text
    assert f"likely cause 1: the token is signed for {OTHER}" in text  # what the token shows, first
    assert bad not in text and "X-Amz-Signature=" not in text
