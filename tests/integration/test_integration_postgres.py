"""Each PostgreSQL integration against the IAM-checking PostgreSQL of the local stack.

For every integration: build the pool/engine first, rotate the mounted Secret (kubelet's exact
layout, ``..data`` swapped atomically), then the next new connection logs in with the new
token, the connection opened before keeps working, and no login ever used a mixed generation.

The two generations use two different database users (alice, then bob), each with a token
signed for that user: a reader that mixed keys of two generations would send bob's token as
alice (or the reverse), which the server rejects and ``rds.login_log`` records.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rdsiam
from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.sts import StsServer

ALICE, BOB, DB = "rdsiam_lib_alice", "rdsiam_lib_bob", "rdsiam_lib_orders"


class Mount:
    """A Secret volume kept by a fake kubelet, with tokens minted against the local STS."""

    def __init__(self, path: Path, rds: IamPostgres, mint: Callable[[str], str]) -> None:
        self.path = path
        self.rds = rds
        self.mint = mint
        self.writer = AtomicWriter(path)
        self.generations: list[str] = []

    def rotate(self, user: str) -> None:
        token = self.mint(user)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)
        self.writer.write(
            secret_payload(
                username=user,
                password=token,
                host=self.rds.endpoint,
                port=self.rds.port,
                dbname=DB,
                dsn=self.rds.dsn(user, DB, token),
                expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
        )
        self.generations.append(user)


@pytest.fixture(scope="module")
def mint(sts: StsServer, rds: IamPostgres, postgres: PostgresServer) -> Callable[[str], str]:
    postgres.create_user(ALICE, database=DB)
    postgres.create_user(BOB, database=DB)
    return sts.token_minter("rdsiam-lib-tests", rds.endpoint, rds.port, rds.region)


@pytest.fixture
def mount(tmp_path: Path, rds: IamPostgres, mint: Callable[[str], str]) -> Iterator[Mount]:
    start = len(rds.login_log)
    m = Mount(tmp_path / "orders-db", rds, mint)
    m.rotate(ALICE)
    yield m
    ours = [a for a in rds.login_log[start:] if a.user in (ALICE, BOB)]
    assert ours, "no login reached the server"
    rejected = [(a.user, a.reason) for a in ours if not a.accepted]
    assert not rejected, f"logins rejected (a mixed or stale generation?): {rejected}"


@pytest.fixture
def libpq(rds: IamPostgres) -> dict[str, str]:
    """Dial loopback while verifying the certificate for the RDS endpoint name, as in a VPC."""
    return {"hostaddr": rds.hostaddr, "sslmode": "verify-full", "sslrootcert": rds.ca_file}


@pytest.fixture
def tls(rds: IamPostgres) -> ssl.SSLContext:
    """asyncpg verifies the name it dials: it dials 127.0.0.1, which the test certificate names
    too (asyncpg has no libpq-like ``hostaddr``). The token stays signed for the endpoint."""
    return ssl.create_default_context(cafile=rds.ca_file)


def test_psycopg_connect(mount: Mount, libpq: dict[str, str]) -> None:
    from rdsiam.integrations import psycopg as rp

    cred = rdsiam.MountedCredential(mount.path)
    first = rp.connect(cred, **libpq)
    mount.rotate(BOB)
    second = rp.connect(cred, **libpq)
    assert second.execute("select current_user").fetchone() == (BOB,)
    assert first.execute("select current_user").fetchone() == (ALICE,)
    first.close()
    second.close()


def test_psycopg_pool_callable_kwargs(mount: Mount, libpq: dict[str, str]) -> None:
    from psycopg_pool import ConnectionPool

    from rdsiam.integrations import psycopg as rp

    with ConnectionPool(kwargs=rp.connect_kwargs(mount.path, **libpq), min_size=1, max_size=2, open=True) as pool:
        pool.wait()  # the pool's first connection exists: the next one is made on demand
        with pool.connection() as first:
            assert first.execute("select current_user").fetchone() == (ALICE,)
            mount.rotate(BOB)
            with pool.connection() as second:  # the pool grows: a new connection
                assert second.execute("select current_user").fetchone() == (BOB,)
            assert first.execute("select 1").fetchone() == (1,)


def test_psycopg_pool_connection_class(mount: Mount, libpq: dict[str, str]) -> None:
    from psycopg_pool import ConnectionPool

    from rdsiam.integrations import psycopg as rp

    cls = rp.connection_class(mount.path)
    with ConnectionPool(connection_class=cls, kwargs=libpq, min_size=1, max_size=2, open=True) as pool:
        pool.wait()
        with pool.connection() as first:
            mount.rotate(BOB)
            with pool.connection() as second:
                assert second.execute("select current_user").fetchone() == (BOB,)
            assert first.execute("select current_user").fetchone() == (ALICE,)


async def test_psycopg_async_pool(mount: Mount, libpq: dict[str, str]) -> None:
    from psycopg_pool import AsyncConnectionPool

    from rdsiam.integrations import psycopg as rp

    pool = AsyncConnectionPool(kwargs=rp.connect_kwargs(mount.path, **libpq), min_size=1, max_size=2, open=False)
    async with pool:
        await pool.wait()
        async with pool.connection() as first:
            mount.rotate(BOB)
            async with pool.connection() as second:
                cur = await second.execute("select current_user")
                assert await cur.fetchone() == (BOB,)
            cur = await first.execute("select current_user")
            assert await cur.fetchone() == (ALICE,)
    conn = await rp.connect_async(mount.path, **libpq)
    cur = await conn.execute("select current_user")
    assert await cur.fetchone() == (BOB,)
    await conn.close()


def test_psycopg2_threaded_pool(mount: Mount, libpq: dict[str, str]) -> None:
    from rdsiam.integrations import psycopg2 as rp2

    pool = rp2.ThreadedConnectionPool(mount.path, 1, 4, **libpq)
    try:
        first = pool.getconn()
        mount.rotate(BOB)
        second = pool.getconn()  # the pool's only idle connection is taken: a new one
        with second.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == (BOB,)
        with first.cursor() as cur:
            cur.execute("select current_user")
            assert cur.fetchone() == (ALICE,)
        direct = rp2.connect(mount.path, **libpq)
        assert direct.get_dsn_parameters()["user"] == BOB
        direct.close()
    finally:
        pool.closeall()


def test_sqlalchemy_engine(mount: Mount, libpq: dict[str, str]) -> None:
    import sqlalchemy

    from rdsiam.integrations import sqlalchemy as rsa

    engine = rsa.create_engine(mount.path, "postgresql+psycopg", connect_args=libpq, pool_size=2)
    try:
        with engine.connect() as first:
            mount.rotate(BOB)
            with engine.connect() as second:
                assert second.scalar(sqlalchemy.text("select current_user")) == BOB
            assert first.scalar(sqlalchemy.text("select current_user")) == ALICE
    finally:
        engine.dispose()


def test_sqlalchemy_attach_to_an_existing_engine(mount: Mount, libpq: dict[str, str], rds: IamPostgres) -> None:
    import sqlalchemy

    from rdsiam.integrations import sqlalchemy as rsa

    url = sqlalchemy.URL.create("postgresql+psycopg2", username=ALICE, host=rds.endpoint, port=rds.port, database=DB)
    engine = sqlalchemy.create_engine(url, connect_args=libpq)
    rsa.attach(engine, mount.path)
    try:
        with engine.connect() as first:
            mount.rotate(ALICE)  # a new token for the same user: only the password changes
            with engine.connect() as second:
                assert second.scalar(sqlalchemy.text("select current_user")) == ALICE
            assert first.scalar(sqlalchemy.text("select 1")) == 1
        assert engine.url.password is None  # the engine's own parameters were never touched
    finally:
        engine.dispose()


async def test_sqlalchemy_async_engine(mount: Mount, tls: ssl.SSLContext) -> None:
    import sqlalchemy

    from rdsiam.integrations import sqlalchemy as rsa

    engine = rsa.create_async_engine(
        mount.path, "postgresql+asyncpg", connect_args={"host": "127.0.0.1", "ssl": tls}, pool_size=2
    )
    try:
        async with engine.connect() as first:
            mount.rotate(BOB)
            async with engine.connect() as second:
                assert await second.scalar(sqlalchemy.text("select current_user")) == BOB
            assert await first.scalar(sqlalchemy.text("select current_user")) == ALICE
    finally:
        await engine.dispose()


async def test_asyncpg_pool(mount: Mount, tls: ssl.SSLContext) -> None:
    from rdsiam.integrations import asyncpg as rapg

    async with rapg.create_pool(mount.path, host="127.0.0.1", ssl=tls, min_size=1, max_size=2) as pool:
        async with pool.acquire() as first:
            mount.rotate(BOB)
            async with pool.acquire() as second:
                assert await second.fetchval("select current_user") == BOB
            assert await first.fetchval("select current_user") == ALICE
    conn = await rapg.connect(mount.path, host="127.0.0.1", ssl=tls)
    assert await conn.fetchval("select current_user") == BOB
    await conn.close()


async def test_asyncpg_callable_password_pool(mount: Mount, tls: ssl.SSLContext) -> None:
    """The plain asyncpg route: a pool with a callable password (user read once)."""
    import asyncpg

    from rdsiam.integrations import asyncpg as rapg

    kwargs = rapg.connect_kwargs(mount.path, host="127.0.0.1", ssl=tls)
    async with asyncpg.create_pool(**kwargs, min_size=1, max_size=2) as pool:
        async with pool.acquire() as first:
            mount.rotate(ALICE)  # new token, same user
            async with pool.acquire() as second:
                assert await second.fetchval("select current_user") == ALICE
            assert await first.fetchval("select 1") == 1


def _django_settings() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(USE_TZ=True, TIME_ZONE="UTC", INSTALLED_APPS=[], DATABASES={})
        import django

        django.setup()


def _django_handler(mount: Mount, libpq: dict[str, str], alias: str, **options: Any) -> Any:
    from django.db.utils import ConnectionHandler

    db = {
        "ENGINE": "rdsiam.integrations.django.postgresql",
        "OPTIONS": {"rdsiam_path": str(mount.path), **libpq, **options},
    }
    return ConnectionHandler({"default": {"ENGINE": "django.db.backends.dummy"}, alias: db})[alias]


def _django_user(wrapper: Any) -> str:
    with wrapper.cursor() as cur:
        cur.execute("select current_user")
        user: str = cur.fetchone()[0]
    return user


def test_django_backend(mount: Mount, libpq: dict[str, str]) -> None:
    _django_settings()
    first = _django_handler(mount, libpq, "rdsiam_plain")
    assert _django_user(first) == ALICE
    assert first.settings_dict["NAME"] == ""  # the mount filled it in, settings untouched
    mount.rotate(BOB)
    second = _django_handler(mount, libpq, "rdsiam_plain")
    try:
        assert _django_user(second) == BOB
        assert _django_user(first) == ALICE  # CONN_MAX_AGE-style reuse of the open connection
        first.close()
        assert _django_user(first) == BOB  # reconnecting reads the mount again
    finally:
        first.close()
        second.close()


def test_django_native_pool_does_not_freeze_the_token(mount: Mount, libpq: dict[str, str]) -> None:
    _django_settings()
    first = _django_handler(mount, libpq, "rdsiam_pool", pool={"min_size": 0, "max_size": 3})
    try:
        assert _django_user(first) == ALICE  # Django builds the pool now, with alice's token
        mount.rotate(BOB)
        results: list[object] = []

        def other_thread() -> None:
            # Another thread has its own DatabaseWrapper; the pool (one per alias) must open a
            # new connection, since `first` holds the only one.
            second = _django_handler(mount, libpq, "rdsiam_pool", pool={"min_size": 0, "max_size": 3})
            try:
                results.append(_django_user(second))
            except Exception as exc:  # pragma: no cover - reported by the assert
                results.append(exc)
            finally:
                second.close()

        t = threading.Thread(target=other_thread)
        t.start()
        t.join(30)
        assert results == [BOB]
        assert _django_user(first) == ALICE
    finally:
        first.close()
        first.close_pool()


def test_retry_after_a_rejected_login_when_the_mount_is_newer(
    mount: Mount, libpq: dict[str, str], rds: IamPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect that races kubelet: the server rejects the (stale) token, the mount meanwhile
    holds a newer one, and the library retries once with it."""
    import psycopg

    from rdsiam.integrations import psycopg as rp

    real_connect = psycopg.Connection.connect
    calls: list[str] = []

    def racing(conninfo: str = "", **kwargs: Any) -> Any:
        calls.append(kwargs["user"])
        if len(calls) == 1:
            mount.rotate(BOB)  # kubelet swaps while this login, with a bad token, is in flight
            kwargs["password"] = kwargs["password"][:-4] + "0000"
        return real_connect(conninfo, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "connect", racing)
    start = len(rds.login_log)
    conn = rp.connect(mount.path, **libpq)
    assert conn.execute("select current_user").fetchone() == (BOB,)
    conn.close()
    assert calls == [ALICE, BOB]
    assert [a.accepted for a in rds.login_log[start:]] == [False, True]
    del rds.login_log[start]  # the deliberate rejection is not a mixed generation


def test_concurrent_new_connections_during_rotations(mount: Mount, libpq: dict[str, str]) -> None:
    """Threads open connections through one pool while the mount rotates between users."""
    from psycopg_pool import ConnectionPool

    from rdsiam.integrations import psycopg as rp

    errors: list[BaseException] = []
    users: list[str] = []
    stop = threading.Event()
    with ConnectionPool(
        kwargs=rp.connect_kwargs(mount.path, **libpq), min_size=0, max_size=4, max_lifetime=3600, open=True
    ) as pool:

        def worker() -> None:
            try:
                while not stop.is_set():
                    with pool.connection() as conn:
                        row = conn.execute("select current_user").fetchone()
                        assert row is not None
                        users.append(row[0])
                        conn.close()  # a closed connection is discarded: the next one is new
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(30):
            mount.rotate(BOB if i % 2 else ALICE)
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[0]
    assert set(users) == {ALICE, BOB} and len(users) > 10, users
