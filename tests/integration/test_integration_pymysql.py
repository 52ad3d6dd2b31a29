"""PyMySQL (and SQLAlchemy/Django on it) against a real MariaDB over TLS, the password
rotated with ALTER USER between two generations of the mount.

The same integrations with IAM tokens, through the RDS-like front door, are in
``test_rds_iam_mysql.py``."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.err import OperationalError  # not pymysql.err.X: Django importing MySQLdb.err rebinds it

import rdsiam
from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.mysql import MariaDBServer

pytestmark = pytest.mark.slow  # a MariaDB server starts (about 4 s)

USER, DB = "rdsiam_app", "orders"


@pytest.fixture(scope="module")
def mariadb(mariadb: MariaDBServer) -> MariaDBServer:
    """The session's MariaDB (the plugin's ``mariadb``) with this module's password user."""
    mariadb.create_user(USER, "initial", database=DB)
    return mariadb


class Mount:
    _serial = itertools.count(1)

    def __init__(self, path: Path, db: MariaDBServer) -> None:
        self.path = path
        self.db = db
        self.writer = AtomicWriter(path)
        self.password = ""

    def rotate(self, *, server: bool = True, mount: bool = True) -> str:
        """A new password: changed on the server (what RDS does when a token is minted) and
        published in the mount (what kubelet does about a minute later)."""
        password = f"tok-{next(self._serial)}-{'x' * 40}"
        if server:
            self.db.set_password(USER, password)
        if mount:
            self.writer.write(
                secret_payload(username=USER, password=password, host=self.db.host, port=self.db.port, dbname=DB)
            )
            self.password = password
        return password


@pytest.fixture
def mount(tmp_path: Path, mariadb: MariaDBServer) -> Mount:
    m = Mount(tmp_path / "orders-db", mariadb)
    m.rotate()
    return m


def _cipher(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        row = cur.fetchone()
    return str(row[1])


def _user(conn: Any) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        return str(cur.fetchone()[0])


def test_new_connections_use_the_rotated_password(mount: Mount, mariadb: MariaDBServer) -> None:
    from rdsiam.integrations import pymysql as rpm

    cred = rdsiam.MountedCredential(mount.path)
    first = rpm.connect(cred, ssl_ca=mariadb.ca_file)  # TLS, server certificate verified
    assert _cipher(first) and _user(first).startswith(USER)
    old = mount.password
    mount.rotate()
    second = rpm.connect(cred, ssl_ca=mariadb.ca_file)
    assert _user(second).startswith(USER)
    assert _user(first).startswith(USER)  # the session opened with the old password lives on
    with pytest.raises(OperationalError) as info:
        pymysql.connect(host=mariadb.host, port=mariadb.port, user=USER, password=old, ssl_ca=mariadb.ca_file)
    assert info.value.args[0] == 1045
    first.close()
    second.close()


def test_tls_is_on_by_default(mount: Mount) -> None:
    from rdsiam.integrations import pymysql as rpm

    conn = rpm.connect(mount.path)  # the user REQUIREs SSL: this login only works over TLS
    assert _cipher(conn)
    conn.close()


def test_retry_when_the_server_is_ahead_of_the_mount(mount: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server already expects the new password; kubelet publishes it while the first
    (rejected) login is in flight; the retry uses it."""
    from rdsiam.integrations import pymysql as rpm

    real = pymysql.connect
    attempts: list[str] = []

    def racing(**kwargs: Any) -> Any:
        attempts.append(kwargs["password"])
        if len(attempts) == 1:
            fresh = mount.rotate(mount=False)
            try:
                return real(**kwargs)
            finally:
                mount.writer.write(
                    secret_payload(username=USER, password=fresh, host=mount.db.host, port=mount.db.port, dbname=DB)
                )
        return real(**kwargs)

    monkeypatch.setattr(pymysql, "connect", racing)
    conn = rpm.connect(mount.path)
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    conn.close()


def test_sqlalchemy_pymysql_engine(mount: Mount, mariadb: MariaDBServer) -> None:
    import sqlalchemy

    from rdsiam.integrations import sqlalchemy as rsa

    engine = rsa.create_engine(mount.path, "mysql+pymysql", connect_args={"ssl": {"ca": mariadb.ca_file}})
    try:
        with engine.connect() as first:
            mount.rotate()
            with engine.connect() as second:
                assert str(second.scalar(sqlalchemy.text("SELECT CURRENT_USER()"))).startswith(USER)
            assert first.scalar(sqlalchemy.text("SELECT 1")) == 1
    finally:
        engine.dispose()


def test_django_mysql_backend_on_pymysql(mount: Mount, mariadb: MariaDBServer) -> None:
    pymysql.install_as_MySQLdb()  # Django's MySQL backend on PyMySQL instead of mysqlclient
    from django.conf import settings

    if not settings.configured:
        settings.configure(USE_TZ=True, TIME_ZONE="UTC", INSTALLED_APPS=[], DATABASES={})
        import django

        django.setup()
    from django.db.utils import ConnectionHandler

    def wrapper() -> Any:
        db = {"ENGINE": "rdsiam.integrations.django.mysql", "OPTIONS": {"rdsiam_path": str(mount.path)}}
        return ConnectionHandler({"default": {"ENGINE": "django.db.backends.dummy"}, "mysql": db})["mysql"]

    first = wrapper()
    try:
        with first.cursor() as cur:
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert cur.fetchone()[1]  # TLS turned on by the backend
        mount.rotate()
        second = wrapper()
        with second.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].startswith(USER)
        second.close()
    finally:
        first.close()


def test_pymysql_example(mount: Mount, mariadb: MariaDBServer) -> None:
    import os
    import subprocess
    import sys

    app = Path(__file__).resolve().parents[2] / "examples" / "apps" / "pymysql_app.py"
    env = {**os.environ, "RDSIAM_MOUNT": str(mount.path), "RDS_CA_BUNDLE": mariadb.ca_file}
    proc = subprocess.run([sys.executable, str(app)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(USER)
