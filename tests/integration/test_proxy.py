"""``rdsiam proxy`` in front of the IAM-checking PostgreSQL and MySQL front doors, with the mount written as the
kubelet writes it: clients log in with no password through rotations, an open session outlives them, a
CancelRequest reaches its own session, refusals reach the client with the diagnosis and no token, readiness
follows the mount, SIGTERM drains, and neither the log nor the metrics hold a token."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pymysql
import pytest

from rdsiam._proxy import Config, Proxy, serve
from rdsiam.testing._fixtures_operator import find_leaks
from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres, write_server_pki
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.sts import StsServer

USER, DB = "rdsiam_proxy_app", "rdsiam_proxy_db"
MY_USER, MY_DB = "rdsiam_proxy_my", "rdsiam_proxy_mydb"
RDSIAM = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "rdsiam")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mount:
    """A Secret volume: ``rotate()`` writes a new token the way the operator and the kubelet do."""

    def __init__(self, directory: Path, mint: Callable[[str], str], door: IamPostgres | IamMySQL, user: str,
                 db: str) -> None:
        self.directory, self.mint, self.door, self.user, self.db = directory, mint, door, user, db
        self.writer = AtomicWriter(directory)
        self.tokens: list[str] = []

    def rotate(self, *, signed_for: str | None = None, expires_in: float = 900) -> str:
        token = self.mint(signed_for or self.user)
        self.tokens.append(token)
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)).strftime("%Y-%m-%dT%H:%M:%SZ")
        door = self.door
        if isinstance(door, IamPostgres):
            dsn = door.dsn(self.user, self.db, token)
        else:
            query = f"ssl-mode=VERIFY_IDENTITY&ssl-ca={door.ca_file}&hostaddr={door.hostaddr}"
            dsn = f"mysql://{self.user}:{quote(token, safe='')}@{door.endpoint}:{door.port}/{self.db}?{query}"
        self.writer.write(secret_payload(username=self.user, password=token, host=door.endpoint, port=door.port,
                                         dbname=self.db, dsn=dsn, expires_at=expires))
        return token


class ProxyThread:
    """The proxy in process, on its own event loop thread (what ``rdsiam proxy`` runs, minus argument parsing)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proxy: Proxy | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rdsiam-proxy-test", daemon=True)

    def _run(self) -> None:
        def ready(proxy: Proxy) -> None:
            self.proxy = proxy
            self._ready.set()

        self._loop.run_until_complete(serve(self.config, ready=ready))

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proxy is not None
        self._loop.call_soon_threadsafe(self.proxy.request_stop)
        self._thread.join(15)
        self._loop.close()

    def address(self, i: int = 0) -> tuple[str, int]:
        assert self.proxy is not None
        host, _, port = self.proxy.addresses()[i].rpartition(":")
        return host, int(port)


def _http(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def pg_mint(sts: StsServer, rds: IamPostgres, postgres: PostgresServer) -> Callable[[str], str]:
    postgres.create_user(USER, database=DB)
    return sts.token_minter("rdsiam-proxy-tests", rds.endpoint, rds.port, rds.region)


@pytest.fixture
def pg_mount(tmp_path: Path, pg_mint: Callable[[str], str], rds: IamPostgres) -> Mount:
    mount = Mount(tmp_path / "orders-db", pg_mint, rds, USER, DB)
    mount.rotate()
    return mount


@pytest.fixture
def pg_proxy(pg_mount: Mount, caplog: pytest.LogCaptureFixture) -> Iterator[ProxyThread]:
    caplog.set_level(logging.DEBUG, logger="rdsiam.proxy")
    config = Config(credential=str(pg_mount.directory), engine="postgres", listen=[("127.0.0.1", 0)],
                    health_address="127.0.0.1", health_port=0, drain_timeout=2)
    with ProxyThread(config) as running:
        yield running
    assert not find_leaks({"log": caplog.text}, pg_mount.tokens)


def _pg(proxy: ProxyThread, **kwargs: Any) -> psycopg.Connection[Any]:
    host, port = proxy.address()
    # Any user, any database, no password: the mount decides.
    return psycopg.connect(host=host, port=port, user="whoever", dbname="whatever", sslmode="disable",
                           connect_timeout=10, **kwargs)


def _who(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def test_postgres_logins_through_rotations_and_an_open_session_survives(
    pg_proxy: ProxyThread, pg_mount: Mount, rds: IamPostgres
) -> None:
    kept = _pg(pg_proxy)
    before = len(rds.login_log)
    for _ in range(3):
        pg_mount.rotate()
        with _pg(pg_proxy) as conn:
            assert _who(conn) == (USER, DB)
        login = rds.last_login
        assert login is not None and login.accepted and login.tls and login.method == "iam"
    assert len(rds.login_log) == before + 3
    assert _who(kept) == (USER, DB)  # opened before the three rotations
    kept.close()
    metrics = pg_proxy.proxy.metrics if pg_proxy.proxy else None
    assert metrics is not None and metrics.logins == {"ok": 4} and metrics.connections_total == 4


def test_cancel_reaches_the_right_session(pg_proxy: ProxyThread) -> None:
    with _pg(pg_proxy) as victim, _pg(pg_proxy) as bystander:
        outcome: dict[str, BaseException | float] = {}

        def sleep(name: str, conn: psycopg.Connection[Any], seconds: float) -> None:
            start = time.monotonic()
            try:
                conn.execute(f"SELECT pg_sleep({seconds})")
                outcome[name] = time.monotonic() - start
            except psycopg.Error as exc:
                outcome[name] = exc

        threads = [threading.Thread(target=sleep, args=("victim", victim, 4)),
                   threading.Thread(target=sleep, args=("bystander", bystander, 1.5))]
        for t in threads:
            t.start()
        time.sleep(0.3)
        # libpq's CancelRequest, sent to the proxy's address. Not cancel(): psycopg calls the blocking PQcancel
        # holding the GIL, which would stop the proxy's thread in this process.
        victim.cancel_safe(timeout=5)
        for t in threads:
            t.join(10)
    assert isinstance(outcome["victim"], psycopg.errors.QueryCanceled), outcome
    assert isinstance(outcome["bystander"], float) and outcome["bystander"] >= 1.4, outcome
    assert pg_proxy.proxy is not None and pg_proxy.proxy.metrics.cancels == {"forwarded": 1}


def test_refusals_reach_the_client_with_the_diagnosis(
    pg_proxy: ProxyThread, pg_mount: Mount, rds: IamPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_mount.rotate(signed_for="someone_else")
    with pytest.raises(psycopg.OperationalError) as refused:
        _pg(pg_proxy)
    text = str(refused.value)
    assert 'LoginRejected: ' in text and 'PAM authentication failed for user "rdsiam_proxy_app"' in text
    assert "the token is signed for user 'someone_else', not 'rdsiam_proxy_app'" in text

    pg_mount.rotate()
    monkeypatch.setattr(rds, "clock_offset", 901)  # the server's clock is past the token's 15 minutes
    with pytest.raises(psycopg.OperationalError) as expired:
        _pg(pg_proxy)
    assert "PAM authentication failed" in str(expired.value)
    assert "the token or the credentials that signed it expired" in str(expired.value)
    assert not find_leaks({"refused": text, "expired": str(expired.value)}, pg_mount.tokens)


def test_a_server_certificate_from_another_ca_is_refused_before_the_token_is_sent(
    pg_mount: Mount, rds: IamPostgres, rds_mysql: IamMySQL
) -> None:
    config = Config(credential=str(pg_mount.directory), engine="postgres", listen=[("127.0.0.1", 0)],
                    sslrootcert=rds_mysql.ca_file, drain_timeout=2)  # a CA that did not sign the server's certificate
    before = len(rds.login_log)
    with ProxyThread(config) as running, pytest.raises(psycopg.OperationalError) as refused:
        _pg(running)
    assert "TLSError: TLS to " in str(refused.value) and "certificate verify failed" in str(refused.value)
    assert "sslrootcert must be the RDS CA bundle" in str(refused.value)
    assert len(rds.login_log) == before  # the front door never saw a startup message


def test_tls_toward_the_app_when_configured(pg_mount: Mount, tmp_path: Path) -> None:
    ca, cert, key = write_server_pki(tmp_path, "localhost", "app-side CA")
    config = Config(credential=str(pg_mount.directory), engine="postgres", listen=[("127.0.0.1", 0)],
                    client_cert=cert, client_key=key, drain_timeout=2)
    with ProxyThread(config) as running:
        host, port = running.address()
        with psycopg.connect(host="localhost", hostaddr=host, port=port, user="x", dbname="x", sslmode="verify-full",
                             sslrootcert=ca) as conn:
            assert conn.pgconn.ssl_in_use and _who(conn) == (USER, DB)
        with _pg(running) as plain:  # still offered, not required
            assert not plain.pgconn.ssl_in_use


def test_readiness_follows_the_mount_and_metrics_hold_no_token(pg_proxy: ProxyThread, pg_mount: Mount) -> None:
    health = f"http://127.0.0.1:{pg_proxy.address(1)[1]}"
    with _pg(pg_proxy) as conn:
        conn.execute("SELECT repeat('x', 100000)").fetchone()
    assert _http(f"{health}/startup")[0] == 200 and _http(f"{health}/liveness")[0] == 200
    status, body = _http(f"{health}/readiness")
    assert status == 200 and "expires in" in body
    pg_mount.rotate(expires_in=-5)  # the operator stopped refreshing: the mounted token is past expires-at
    status, body = _http(f"{health}/readiness")
    assert status == 503 and "expired" in body
    status, metrics = _http(f"{health}/metrics")
    assert status == 200
    assert 'rdsiam_proxy_logins_total{result="ok"} 1' in metrics
    assert "rdsiam_proxy_connections_open 0" in metrics and "rdsiam_proxy_connections_total 1" in metrics
    down = next(int(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith('rdsiam_proxy_bytes_total{direction="server_to_client"}'))
    assert down > 100000
    assert _http(f"{health}/quitquitquit", "POST")[0] == 404  # only with --quitquitquit
    assert not find_leaks({"metrics": metrics, "readiness": body}, pg_mount.tokens)


# -- MySQL -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def my_mint(sts: StsServer, rds_mysql: IamMySQL) -> Callable[[str], str]:
    rds_mysql.create_user(MY_USER, database=MY_DB)
    return sts.token_minter("rdsiam-proxy-tests", rds_mysql.endpoint, rds_mysql.port, rds_mysql.region)


def test_mysql_logins_through_rotations_and_refusals(
    tmp_path: Path, my_mint: Callable[[str], str], rds_mysql: IamMySQL, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rdsiam.proxy")
    mount = Mount(tmp_path / "orders-my", my_mint, rds_mysql, MY_USER, MY_DB)
    mount.rotate()
    config = Config(credential=str(mount.directory), engine="mysql", listen=[("127.0.0.1", 0)], drain_timeout=2)
    with ProxyThread(config) as running:
        host, port = running.address()

        def connect() -> Any:
            return pymysql.connect(host=host, port=port, user="whoever", password="", connect_timeout=10)

        kept = connect()
        before = len(rds_mysql.login_log)
        for _ in range(3):
            mount.rotate()
            conn = connect()
            with conn.cursor() as cur:
                cur.execute("SELECT current_user(), database()")
                assert cur.fetchone() == (f"{MY_USER}@localhost", MY_DB)
            conn.close()
            login = rds_mysql.last_login
            assert login is not None and login.accepted and login.tls
        assert len(rds_mysql.login_log) == before + 3
        with kept.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        kept.close()
        mount.rotate(signed_for="someone_else")
        with pytest.raises(pymysql.OperationalError) as refused:  # not pymysql.err.X: Django's MySQLdb rebinds it
            connect()
        assert refused.value.args[0] == 1045
        text = str(refused.value.args[1])
        assert "LoginRejected: " in text and f"Access denied for user '{MY_USER}'" in text
        assert f"the token is signed for user 'someone_else', not {MY_USER!r}" in text
        assert running.proxy is not None and running.proxy.metrics.logins == {"ok": 4, "LoginRejected": 1}
    assert not find_leaks({"log": caplog.text, "refused": text}, mount.tokens)


# -- the real command ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_the_command_drains_on_sigterm(pg_mount: Mount, tmp_path: Path, event_loop: str) -> None:
    port, health = _free_port(), _free_port()
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [RDSIAM, "proxy", "--credential", str(pg_mount.directory), "--listen", f"127.0.0.1:{port}",
             "--unix-socket", str(sockets), "--health-port", str(health), "--health-address", "127.0.0.1",
             "--drain-timeout", "10", "--log-level", "debug", "--event-loop", event_loop],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while _http_or_none(f"http://127.0.0.1:{health}/startup") != 200:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.05)
        # psql over the Unix socket, as `psql -h DIR` finds it
        psql = subprocess.run(["psql", "-h", str(sockets), "-p", str(port), "-U", "anyone", "-d", "any", "-At",
                               "-c", "SELECT current_user"], capture_output=True, text=True, timeout=20)
        assert psql.returncode == 0 and psql.stdout.strip() == USER, psql.stderr
        dump = subprocess.run(["pg_dump", "-h", "127.0.0.1", "-p", str(port), "-U", "anyone", "--schema-only", "any"],
                              capture_output=True, text=True, timeout=30)
        assert dump.returncode == 0 and "PostgreSQL database dump complete" in dump.stdout, dump.stderr
        conn = psycopg.connect(host="127.0.0.1", port=port, user="x", dbname="x", sslmode="disable")
        conn.execute("CREATE TEMP TABLE t (n int)")  # a transaction open across SIGTERM
        conn.execute("INSERT INTO t VALUES (1)")
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _http_or_none(f"http://127.0.0.1:{health}/readiness") != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(psycopg.OperationalError):  # new connections are refused
            psycopg.connect(host="127.0.0.1", port=port, user="x", dbname="x", sslmode="disable", connect_timeout=3)
        row = conn.execute("SELECT count(*) FROM t").fetchone()  # the open session still works
        conn.commit()
        assert row == (1,)
        assert proc.poll() is None
        conn.close()
        assert proc.wait(10) == 0  # exits once the last connection is gone, well before the 10 s delay
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "stopping: 1 connection(s) open" in text and "stopped" in text
    assert not find_leaks({"log": text}, pg_mount.tokens)


def _http_or_none(url: str) -> int | None:
    with contextlib.suppress(OSError):
        return _http(url)[0]
    return None


def test_a_non_loopback_listen_needs_the_explicit_flag(pg_mount: Mount) -> None:
    done = subprocess.run([RDSIAM, "proxy", "--credential", str(pg_mount.directory), "--listen", "0.0.0.0:6432"],
                          capture_output=True, text=True, timeout=20, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2
    assert "--listen 0.0.0.0:6432 is not a loopback address" in done.stderr
    assert "--allow-non-loopback" in done.stderr


def test_quitquitquit_stops_the_command_for_jobs(pg_mount: Mount) -> None:
    health = _free_port()
    proc = subprocess.Popen([RDSIAM, "proxy", "--credential", str(pg_mount.directory), "--listen", "127.0.0.1:0",
                             "--health-port", str(health), "--health-address", "127.0.0.1", "--quitquitquit"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while _http_or_none(f"http://127.0.0.1:{health}/startup") != 200:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert _http(f"http://127.0.0.1:{health}/quitquitquit")[0] == 405  # POST only
        assert _http(f"http://127.0.0.1:{health}/quitquitquit", "POST") == (200, "stopping\n")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
