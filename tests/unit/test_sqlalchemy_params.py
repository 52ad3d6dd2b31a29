"""What the SQLAlchemy integration hands the DBAPI's ``connect()`` at each new connection.

The ``do_connect`` listeners are called the way SQLAlchemy 2.0 calls them, with the same
``cargs`` list and ``cparams`` dict at every connect (2.1 passes fresh copies), so these tests
hold whichever SQLAlchemy is installed. The DBAPI's ``connect`` is replaced by a recorder.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest

from rdsiam.testing.kubelet import AtomicWriter, secret_payload

sqlalchemy = pytest.importorskip("sqlalchemy")
rsa = pytest.importorskip("rdsiam.integrations.sqlalchemy")

NOW = dt.datetime.now(dt.UTC)


def payload(n: int, *, port: int = 5432) -> dict[str, bytes]:
    return secret_payload(
        username=f"user{n}",
        password=f"host{n}.example:{port}/?Action=connect&X-Amz-Signature=sig{n}",
        host=f"host{n}.example",
        port=port,
        dbname=f"db{n}",
        expires_at=(NOW + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


class Recorder:
    """Stands in for ``dialect.connect``: records the keyword arguments of each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *cargs: Any, **cparams: Any) -> object:
        self.calls.append(cparams)
        return object()


class SharedParamsConnect:
    """Runs the engine's ``do_connect`` listeners over one ``cargs``/``cparams`` pair shared by
    every connect, as SQLAlchemy 2.0's ``create_engine`` does."""

    def __init__(self, engine: Any, connect_args: dict[str, Any] | None = None) -> None:
        self.dialect = engine.dialect
        cargs, url_params = self.dialect.create_connect_args(engine.url)
        self.cargs = list(cargs)
        self.cparams: dict[str, Any] = {**url_params, **(connect_args or {})}

    def __call__(self) -> Any:
        for fn in self.dialect.dispatch.do_connect:
            conn = fn(self.dialect, None, self.cargs, self.cparams)
            if conn is not None:
                return conn
        return self.dialect.connect(*self.cargs, **self.cparams)


@pytest.mark.parametrize("retry", [True, False])
def test_each_connect_uses_the_current_generation_and_leaves_the_shared_params_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry: bool
) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    engine = rsa.create_engine(tmp_path, "postgresql+psycopg", retry=retry)
    recorder = Recorder()
    monkeypatch.setattr(engine.dialect, "connect", recorder)
    connect = SharedParamsConnect(engine)
    shared_before = dict(connect.cparams)

    for n in (2, 3, 4):
        writer.write(payload(n))
        connect()

    seen = [
        (c["user"], c["host"], c["dbname"], c["password"].endswith(f"sig{n}"))
        for n, c in zip((2, 3, 4), recorder.calls, strict=True)
    ]
    assert seen == [(f"user{n}", f"host{n}.example", f"db{n}", True) for n in (2, 3, 4)]
    assert connect.cparams == shared_before  # SQLAlchemy's dict is never written to


def test_connect_args_win_over_the_mount_across_rotations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    engine = rsa.create_engine(tmp_path, "postgresql+psycopg", connect_args={"host": "pgbouncer.local"})
    recorder = Recorder()
    monkeypatch.setattr(engine.dialect, "connect", recorder)
    connect = SharedParamsConnect(engine, {"host": "pgbouncer.local"})
    for n in (2, 3):
        writer.write(payload(n))
        connect()
    assert [(c["user"], c["host"]) for c in recorder.calls] == [
        ("user2", "pgbouncer.local"),
        ("user3", "pgbouncer.local"),
    ]


def test_a_rejected_login_is_retried_with_the_newer_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    engine = rsa.create_engine(tmp_path, "postgresql+psycopg")

    class Rejected(Exception):
        sqlstate = "28P01"

    users: list[str] = []

    def dbapi_connect(*cargs: Any, **cparams: Any) -> object:
        users.append(cparams["user"])
        if len(users) == 1:
            writer.write(payload(2))  # kubelet swapped the Secret while the server refused gen 1
            raise Rejected("password authentication failed")
        return object()

    monkeypatch.setattr(engine.dialect, "connect", dbapi_connect)
    connect = SharedParamsConnect(engine)
    shared_before = dict(connect.cparams)
    connect()
    assert users == ["user1", "user2"]
    assert connect.cparams == shared_before


@pytest.mark.parametrize("drivername", ["mysql+pymysql", "mariadb+pymysql"])
def test_pymysql_engines_always_use_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drivername: str) -> None:
    pytest.importorskip("pymysql")
    AtomicWriter(tmp_path).write(payload(1, port=3306))
    engine = rsa.create_engine(tmp_path, drivername)
    recorder = Recorder()
    monkeypatch.setattr(engine.dialect, "connect", recorder)
    SharedParamsConnect(engine)()
    ctx = recorder.calls[0]["ssl"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_NONE
    assert recorder.calls[0]["user"] == "user1"


@pytest.mark.parametrize(
    ("connect_args", "query"),
    [
        ({"ssl": {"ca": "/etc/rds-ca.pem"}}, None),
        ({"ssl_disabled": True}, None),
        ({}, {"ssl_ca": "/etc/rds-ca.pem"}),
    ],
)
def test_pymysql_tls_settings_of_the_user_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connect_args: dict[str, Any], query: dict[str, str] | None
) -> None:
    pytest.importorskip("pymysql")
    AtomicWriter(tmp_path).write(payload(1, port=3306))
    engine = rsa.create_engine(tmp_path, "mysql+pymysql", query=query, connect_args=connect_args)
    recorder = Recorder()
    monkeypatch.setattr(engine.dialect, "connect", recorder)
    SharedParamsConnect(engine, connect_args)()
    sent = recorder.calls[0]
    assert not isinstance(sent.get("ssl"), ssl.SSLContext)
    expected = {**connect_args, **({"ssl": {"ca": "/etc/rds-ca.pem"}} if query else {})}
    assert {k: sent[k] for k in expected} == expected


def test_postgresql_engines_get_no_mysql_tls_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    AtomicWriter(tmp_path).write(payload(1))
    engine = rsa.create_engine(tmp_path, "postgresql+psycopg")
    recorder = Recorder()
    monkeypatch.setattr(engine.dialect, "connect", recorder)
    SharedParamsConnect(engine)()
    assert "ssl" not in recorder.calls[0]
