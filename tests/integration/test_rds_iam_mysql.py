"""The MySQL IAM front door (``rds_mysql``) lets in exactly the logins RDS would, answers the rest
as RDS does, and every MySQL integration of the in-pod library logs in through it across token
rotations without a single refused login.

The front door's endpoint name resolves to loopback only inside these tests (``vpc_dns``), so
clients dial the name the token is signed for and verify the certificate against it, as a pod in
the VPC does. Assertions look at booleans, reason codes and server messages, never at tokens.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pymysql
import pytest
from pymysql.err import OperationalError  # not pymysql.err.X: Django importing MySQLdb.err rebinds it

import rdsiam
from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.mysql import MariaDBServer
from rdsiam.testing.rds import LoginReason
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.sigv4 import Reason
from rdsiam.testing.sts import StsServer

pytestmark = pytest.mark.slow  # a MariaDB server starts (about 4 s)

USER, OTHER, DB = "iam_my_app", "iam_my_other", "iam_my_orders"
ALICE, BOB = "iam_my_alice", "iam_my_bob"
ROLE = "rdsiam-mysql-tests"
Mint = Callable[[str], str]


@pytest.fixture(scope="module")
def mint(sts: StsServer, rds_mysql: IamMySQL) -> Mint:
    for user in (USER, OTHER, ALICE, BOB):
        rds_mysql.create_user(user, database=DB)
    return sts.token_minter(ROLE, rds_mysql.endpoint, rds_mysql.port, rds_mysql.region)


@pytest.fixture
def vpc_dns(rds_mysql: IamMySQL, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint name resolves to the front door's loopback address (a VPC's DNS)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(rds_mysql.hostaddr if host == rds_mysql.endpoint else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def tls(rds_mysql: IamMySQL) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=rds_mysql.ca_file)  # verifies the endpoint name


def login(rds_mysql: IamMySQL, user: str, token: str, tls: ssl.SSLContext | None, **kw: Any) -> Any:
    ssl_args: dict[str, Any] = {"ssl": tls} if tls is not None else {"ssl_disabled": True}
    return pymysql.connect(
        host=rds_mysql.endpoint, port=rds_mysql.port, user=user, password=token, connect_timeout=10,
        **ssl_args, **kw,
    )  # fmt: skip


def refused(rds_mysql: IamMySQL, user: str, token: str, tls: ssl.SSLContext | None, **kw: Any) -> tuple[int, str]:
    with pytest.raises(OperationalError) as info:
        login(rds_mysql, user, token, tls, **kw).close()
    code, message = info.value.args
    leaked = bool(token) and token in str(message)
    assert not leaked
    return int(code), str(message)


def denied(user: str) -> tuple[int, str]:
    return 1045, f"Access denied for user '{user}'@'127.0.0.1' (using password: YES)"


def query(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


# -- the front door ------------------------------------------------------------------------------


def test_valid_token_logs_in_over_verified_tls(
    rds_mysql: IamMySQL, mint: Mint, vpc_dns: None, tls: ssl.SSLContext
) -> None:
    conn = login(rds_mysql, USER, mint(USER), tls, database=DB)
    try:
        assert query(conn, "SELECT CURRENT_USER(), DATABASE()") == ((f"{USER}@localhost", DB),)
        rows = query(conn, "SELECT seq FROM seq_1_to_50000")  # a result far larger than one read
        assert len(rows) == 50000 and rows[-1] == (50000,)
        version = str(rds_mysql.backend.execute("SELECT VERSION()")[0][0])
        assert conn.get_server_info() in (version, f"5.5.5-{version}")  # MariaDB's, as MariaDB sends it
    finally:
        conn.close()
    attempt = rds_mysql.last_login
    assert attempt is not None and attempt.accepted and attempt.reason == "ok" and attempt.tls
    assert attempt.user == USER and attempt.database == DB and attempt.client == "127.0.0.1"
    assert attempt.principal_arn and f":assumed-role/{ROLE}/" in attempt.principal_arn
    assert attempt.signed_at is not None


def test_the_clients_charset_and_flags_reach_mariadb(
    rds_mysql: IamMySQL, mint: Mint, vpc_dns: None, tls: ssl.SSLContext
) -> None:
    from pymysql.constants import CLIENT

    token = mint(USER)
    plain = login(rds_mysql, USER, token, tls, database=DB, charset="latin1", autocommit=True)
    found = login(rds_mysql, USER, token, tls, database=DB, client_flag=CLIENT.FOUND_ROWS, autocommit=True)
    try:
        assert query(plain, "SELECT @@character_set_client") == (("latin1",),)
        query(plain, "CREATE TABLE IF NOT EXISTS flags (id INT PRIMARY KEY, v INT)")
        query(plain, "REPLACE INTO flags VALUES (1, 7)")
        # An UPDATE that changes nothing: 1 row with CLIENT_FOUND_ROWS (matched), 0 without.
        with found.cursor() as cur:
            assert cur.execute("UPDATE flags SET v = 7 WHERE id = 1") == 1
        with plain.cursor() as cur:
            assert cur.execute("UPDATE flags SET v = 7 WHERE id = 1") == 0
    finally:
        plain.close()
        found.close()


@pytest.mark.parametrize(
    "case",
    ["wrong_user", "expired", "wrong_region", "wrong_host", "wrong_port", "unknown_keys", "tampered"],
)
def test_refused_tokens_get_access_denied(
    rds_mysql: IamMySQL,
    sts: StsServer,
    mint: Mint,
    vpc_dns: None,
    tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    endpoint, port, region = rds_mysql.endpoint, rds_mysql.port, rds_mysql.region
    if case == "wrong_user":
        token = mint(OTHER)
    elif case == "expired":
        token = mint(USER)
        monkeypatch.setattr(rds_mysql, "clock_offset", 901)
    elif case == "wrong_region":
        token = sts.token_minter(ROLE, endpoint, port, "eu-west-1")(USER)
    elif case == "wrong_host":
        token = sts.token_minter(ROLE, "orders-db.internal.example", port)(USER)  # e.g. a CNAME
    elif case == "wrong_port":
        token = sts.token_minter(ROLE, endpoint, port + 1)(USER)
    elif case == "unknown_keys":
        stranger = boto3.client(
            "rds", region_name=region, aws_access_key_id="AKIANEVERISSUEDBYSTS", aws_secret_access_key="nope"
        )
        token = stranger.generate_db_auth_token(DBHostname=endpoint, Port=port, DBUsername=USER, Region=region)
    else:
        token = mint(USER)
        token = token[:-1] + ("0" if token[-1] != "0" else "1")
    expected = {
        "wrong_user": Reason.WRONG_USER,
        "expired": Reason.EXPIRED,
        "wrong_region": Reason.WRONG_REGION,
        "wrong_host": Reason.WRONG_HOST,
        "wrong_port": Reason.WRONG_PORT,
        "unknown_keys": Reason.UNKNOWN_ACCESS_KEY,
        "tampered": Reason.BAD_SIGNATURE,
    }[case]
    assert refused(rds_mysql, USER, token, tls, database=DB) == denied(USER)
    attempt = rds_mysql.last_login
    assert attempt is not None and not attempt.accepted and attempt.reason == expected and attempt.tls
    leaked = token in repr(attempt)
    assert not leaked


def test_no_tls_is_refused_like_a_bad_token(rds_mysql: IamMySQL, mint: Mint, vpc_dns: None) -> None:
    assert refused(rds_mysql, USER, mint(USER), None, database=DB) == denied(USER)
    attempt = rds_mysql.last_login
    assert attempt is not None and not attempt.accepted and attempt.reason == LoginReason.NO_TLS
    assert not attempt.tls


def test_unknown_user_is_refused_like_a_bad_token(
    rds_mysql: IamMySQL, mint: Mint, vpc_dns: None, tls: ssl.SSLContext
) -> None:
    assert refused(rds_mysql, "nobody_here", mint("nobody_here"), tls) == denied("nobody_here")
    attempt = rds_mysql.last_login
    assert attempt is not None and attempt.reason == LoginReason.UNKNOWN_USER


def test_empty_token_says_using_password_no(
    rds_mysql: IamMySQL, mint: Mint, vpc_dns: None, tls: ssl.SSLContext
) -> None:
    message = f"Access denied for user '{USER}'@'127.0.0.1' (using password: NO)"
    assert refused(rds_mysql, USER, "", tls) == (1045, message)
    assert rds_mysql.last_login is not None and rds_mysql.last_login.reason == Reason.MALFORMED


def test_unknown_database_is_mariadbs_own_error(
    rds_mysql: IamMySQL, mariadb: MariaDBServer, mint: Mint, vpc_dns: None, tls: ssl.SSLContext
) -> None:
    rds_mysql.create_user("iam_my_gone", database="iam_my_gone_db")
    mariadb.execute("DROP DATABASE iam_my_gone_db")  # the grant stays, the database is gone
    code, message = refused(rds_mysql, "iam_my_gone", mint("iam_my_gone"), tls, database="iam_my_gone_db")
    assert (code, message) == (1049, "Unknown database 'iam_my_gone_db'")
    attempt = rds_mysql.last_login
    assert attempt is not None and attempt.reason == "ok" and "MariaDB refused" in attempt.detail


def test_login_log_never_holds_the_token(
    rds_mysql: IamMySQL, mint: Mint, vpc_dns: None, tls: ssl.SSLContext
) -> None:
    token = mint(USER)
    login(rds_mysql, USER, token, tls).close()
    refused(rds_mysql, OTHER, token, tls)
    refused(rds_mysql, USER, token, None)
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    text = repr(rds_mysql.login_log)
    leaked = token in text or signature in text
    assert not leaked


# -- rotation through each MySQL integration -----------------------------------------------------


class Mount:
    """A Secret volume kept by a fake kubelet; generations alternate alice and bob, so a reader
    mixing two generations sends one user's token as the other, which the front door refuses."""

    def __init__(self, path: Path, rds_mysql: IamMySQL, mint: Mint) -> None:
        self.path = path
        self.rds_mysql = rds_mysql
        self.mint = mint
        self.writer = AtomicWriter(path)
        self.user = ""

    def rotate(self, user: str | None = None) -> None:
        user = user or (BOB if self.user == ALICE else ALICE)
        token = self.mint(user)
        endpoint, port = self.rds_mysql.endpoint, self.rds_mysql.port
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)
        self.writer.write(
            secret_payload(
                username=user, password=token, host=endpoint, port=port, dbname=DB,
                dsn=f"mysql://{user}:{quote(token, safe='')}@{endpoint}:{port}/{DB}",
                expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        )  # fmt: skip
        self.user = user


@pytest.fixture
def mount(tmp_path: Path, rds_mysql: IamMySQL, mint: Mint, vpc_dns: None) -> Mount:
    m = Mount(tmp_path / "orders-db", rds_mysql, mint)
    m.rotate(ALICE)
    return m


def churn(mount: Mount, connect: Callable[[], str], rotations: int = 12) -> None:
    """Log in continuously (another thread) while the mount rotates ``rotations`` times; every
    login must be accepted and the logged-in user must follow the generations."""
    log = mount.rds_mysql.login_log
    start = len(log)
    users: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                users.append(connect().split("@")[0])
            except Exception as exc:  # counted and reported; PyMySQL's messages hold no token
                errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        for _ in range(rotations):
            time.sleep(0.1)
            mount.rotate()
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join(60)
    assert connect().split("@")[0] == mount.user  # the newest generation is used at once
    ours = [a for a in log[start:] if a.user in (ALICE, BOB)]
    failed = [(a.user, a.reason) for a in ours if not a.accepted]
    print(f"\n{rotations} rotations, {len(ours)} logins, {len(failed) + len(errors)} failed")
    assert not errors and not failed, (errors[:3], failed[:3])
    assert set(users) == {ALICE, BOB} and len(ours) >= len(users) >= rotations


def test_pymysql_rotation(mount: Mount, tls: ssl.SSLContext) -> None:
    from rdsiam.integrations import pymysql as rpm

    cred = rdsiam.MountedCredential(mount.path)
    first = rpm.connect(cred, ssl=tls)
    assert isinstance(first._sock, ssl.SSLSocket)

    def connect() -> str:
        conn = rpm.connect(cred, ssl=tls)
        try:
            return str(query(conn, "SELECT CURRENT_USER()")[0][0])
        finally:
            conn.close()

    churn(mount, connect)
    assert query(first, "SELECT CURRENT_USER()")[0][0].startswith(ALICE)  # opened before: lives on
    first.close()


def test_pymysql_default_tls_without_a_ca(mount: Mount) -> None:
    from rdsiam.integrations import pymysql as rpm

    conn = rpm.connect(mount.path)  # encrypted without verification: the front door lets it in
    assert query(conn, "SELECT CURRENT_USER()")[0][0].startswith(ALICE)
    conn.close()
    assert mount.rds_mysql.last_login is not None and mount.rds_mysql.last_login.tls


def test_sqlalchemy_pymysql_rotation(mount: Mount, tls: ssl.SSLContext) -> None:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from rdsiam.integrations import sqlalchemy as rsa

    engine = rsa.create_engine(mount.path, "mysql+pymysql", connect_args={"ssl": tls}, poolclass=NullPool)
    try:
        with engine.connect() as first:

            def connect() -> str:
                with engine.connect() as conn:  # NullPool: every checkout is a new login
                    return str(conn.scalar(sqlalchemy.text("SELECT CURRENT_USER()")))

            churn(mount, connect)
            assert str(first.scalar(sqlalchemy.text("SELECT CURRENT_USER()"))).startswith(ALICE)
    finally:
        engine.dispose()


def test_sqlalchemy_aiomysql_rotation(mount: Mount, tls: ssl.SSLContext) -> None:
    """SQLAlchemy's asyncio engine on aiomysql; each login runs on a loop of its own (NullPool)."""
    import asyncio

    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from rdsiam.integrations import sqlalchemy as rsa

    engine = rsa.create_async_engine(mount.path, "mysql+aiomysql", connect_args={"ssl": tls}, poolclass=NullPool)

    async def one() -> str:
        async with engine.connect() as conn:
            return str(await conn.scalar(sqlalchemy.text("SELECT CURRENT_USER()")))

    try:
        churn(mount, lambda: asyncio.run(one()))
    finally:
        asyncio.run(engine.dispose())


def test_django_mysql_backend_rotation(mount: Mount, rds_mysql: IamMySQL) -> None:
    """Django's MySQL backend on PyMySQL (mysqlclient is not installed here)."""
    pymysql.install_as_MySQLdb()
    from django.conf import settings

    if not settings.configured:
        settings.configure(USE_TZ=True, TIME_ZONE="UTC", INSTALLED_APPS=[], DATABASES={})
        import django

        django.setup()
    from django.db.utils import ConnectionHandler

    options = {"rdsiam_path": str(mount.path), "ssl": {"ca": rds_mysql.ca_file}}
    db = {"ENGINE": "rdsiam.integrations.django.mysql", "OPTIONS": options}

    def connect() -> str:
        wrapper = ConnectionHandler({"default": {"ENGINE": "django.db.backends.dummy"}, "mysql": db})["mysql"]
        try:
            with wrapper.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                return str(cur.fetchone()[0])
        finally:
            wrapper.close()

    churn(mount, connect)
