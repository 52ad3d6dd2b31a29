"""A real, throw-away PostgreSQL server for tests.

:class:`PostgresServer` runs ``initdb`` and ``postgres`` into a fresh temporary directory. It
listens only on a unix socket in that directory (``listen_addresses=''``), trusts every local
login and trades durability for speed (``fsync=off`` and friends). Clients reach it directly by
``socket_dir``/``port``, or through ``rdsiam.testing.rds.IamPostgres``, the RDS-like IAM front door.

Binaries are looked up on ``PATH``, then in ``$RDSIAM_PG_BINDIR``, then in
``/usr/lib/postgresql/<major>/bin`` (Debian keeps them off ``PATH``). PostgreSQL refuses to run as
root: when the tests run as root, the server runs as the ``postgres`` system user (or ``nobody``),
and its directory is created under the system temporary directory, not pytest's private one.

This module also holds the few PostgreSQL wire-protocol helpers the package needs (startup
message, simple query); it imports no driver, so ``rdsiam[testing]`` needs no psycopg.

Known gaps: no TCP listener (use ``IamPostgres`` for TCP/TLS); one server per object; settings are
tuned for tests and would lose data on a crash. Normal exits stop the server (``atexit``); on
Linux the postmaster also gets SIGINT when the *thread* that started it ends (``PR_SET_PDEATHSIG``),
so start it from a long-lived thread (pytest's main thread is), and a run killed by a signal
still leaves its temporary directory behind.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresError", "PostgresServer", "PostgresUnavailable", "quote_ident", "quote_literal"]

SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing or the server would not start."""


class PostgresError(Exception):
    """An ErrorResponse from the server: ``sqlstate`` and the server's message."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message


# -- wire protocol helpers (shared with rds.py) ---------------------------------------------------

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


def quote_ident(name: str) -> str:
    if "\0" in name:
        raise ValueError("identifier contains NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A standard-conforming SQL string literal (``standard_conforming_strings`` is on by default)."""
    if "\0" in value:
        raise ValueError("literal contains NUL")
    return "'" + value.replace("'", "''") + "'"


def encode_startup(params: dict[str, str]) -> bytes:
    body = struct.pack("!I", PROTOCOL_3_0)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def encode_message(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def encode_query(sql: str) -> bytes:
    return encode_message(b"Q", sql.encode() + b"\0")


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse payload keyed by their one-letter code."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def encode_error(fields: dict[str, str]) -> bytes:
    payload = b"".join(code.encode() + value.encode() + b"\0" for code, value in fields.items()) + b"\0"
    return encode_message(b"E", payload)


def parse_data_row(payload: bytes) -> tuple[str | None, ...]:
    (count,) = struct.unpack_from("!H", payload, 0)
    offset, values = 2, list[str | None]()
    for _ in range(count):
        (length,) = struct.unpack_from("!i", payload, offset)
        offset += 4
        if length < 0:
            values.append(None)
        else:
            values.append(payload[offset : offset + length].decode("utf-8"))
            offset += length
    return tuple(values)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise ConnectionError("server closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _recv_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = _recv_exact(sock, 5)
    (length,) = struct.unpack("!I", header[1:])
    return header[:1], _recv_exact(sock, length - 4)


def simple_query(
    socket_path: str, sql: str, *, user: str = SUPERUSER, database: str = "postgres", timeout: float = 30.0
) -> list[tuple[str | None, ...]]:
    """Run ``sql`` (simple query protocol, trust auth) and return the rows of the last result set."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(encode_startup({"user": user, "database": database, "client_encoding": "UTF8"}))
        while True:
            kind, payload = _recv_message(sock)
            if kind == b"E":
                fields = parse_error_fields(payload)
                raise PostgresError(fields.get("C", "XX000"), fields.get("M", "error"))
            if kind == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
                raise PostgresError("28000", "server asked for a password (is trust auth configured?)")
            if kind == b"Z":
                break
        sock.sendall(encode_query(sql))
        rows: list[tuple[str | None, ...]] = []
        error: PostgresError | None = None
        while True:
            kind, payload = _recv_message(sock)
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(parse_data_row(payload))
            elif kind == b"E":
                fields = parse_error_fields(payload)
                error = error or PostgresError(fields.get("C", "XX000"), fields.get("M", "error"))
            elif kind == b"Z":
                break
        sock.sendall(encode_message(b"X"))
        if error is not None:
            raise error
        return rows


# -- binaries ---------------------------------------------------------------------------------------


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``; raises :class:`PostgresUnavailable`."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    if os.environ.get("RDSIAM_PG_BINDIR"):
        candidates.append(Path(os.environ["RDSIAM_PG_BINDIR"]))

    def major(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        candidates.append(Path(found))
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH, in $RDSIAM_PG_BINDIR or in "
        "/usr/lib/postgresql/*/bin; run scripts/setup.sh (it installs postgresql via apt)"
    )


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send the postmaster SIGINT (fast shutdown) when the thread
    that started it dies, so a test run killed by a signal leaves no server running. It runs after
    the child's setuid (which would clear the setting). ``None`` where prctl is unavailable."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent, not the child
    except (OSError, AttributeError):  # not Linux: atexit still covers normal exits
        return None
    sigint = int(signal.SIGINT)

    def preexec() -> None:
        prctl(1, sigint, 0, 0, 0)  # PR_SET_PDEATHSIG

    return preexec


def _run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise PostgresUnavailable(
        "running as root, and there is no 'postgres' or 'nobody' user to run PostgreSQL as"
    )


class PostgresServer:
    """A PostgreSQL server in a temporary directory, reachable on a unix socket with trust auth.

    ``start()``/``stop()`` or use as a context manager. ``stop()`` removes the directory.
    """

    def __init__(self, *, port: int = 5432, settings: dict[str, str] | None = None) -> None:
        self.port = port  # with listen_addresses='' it only names the socket file .s.PGSQL.<port>
        self.settings = {
            "listen_addresses": "",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "autovacuum": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "unix_socket_permissions": "0777",
            "log_min_messages": "warning",
            "dynamic_shared_memory_type": "mmap",
            "TimeZone": "UTC",
        }
        self.settings.update(settings or {})
        self.directory: Path | None = None
        self.bindir: Path | None = None
        self.version_num: int | None = None  # server_version_num, e.g. 150018
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._iam_role_ready = False
        self.start_seconds: float | None = None

    @property
    def socket_dir(self) -> str:
        if self.directory is None:
            raise RuntimeError("PostgresServer is not started")
        return str(self.directory / "sock")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.socket_dir, f".s.PGSQL.{self.port}")

    @property
    def major_version(self) -> int:
        if self.version_num is None:
            raise RuntimeError("PostgresServer is not started")
        return self.version_num // 10000

    def start(self) -> PostgresServer:
        began = time.perf_counter()
        self.bindir = find_bindir()
        run_as = _run_as()
        self.directory = Path(tempfile.mkdtemp(prefix="rdsiam-pg-"))
        try:
            self._start(run_as)
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # no orphaned postmaster if the test run ends without teardown
        self.start_seconds = time.perf_counter() - began
        return self

    def _start(self, run_as: tuple[int, int] | None) -> None:
        assert self.directory is not None and self.bindir is not None
        data = self.directory / "data"
        sock = self.directory / "sock"
        sock.mkdir()
        self._log = self.directory / "postgres.log"
        self._log.touch()
        if run_as is not None:
            for path in (self.directory, sock, self._log):
                os.chown(path, *run_as)
            os.chmod(self.directory, 0o755)
        user_kwargs: dict[str, object] = {}
        if run_as is not None:
            user_kwargs = {"user": run_as[0], "group": run_as[1], "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        initdb = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
             "--locale=C", "-N"],
            capture_output=True, env=env, cwd=self.directory, **user_kwargs,  # type: ignore[call-overload]
        )  # fmt: skip
        if initdb.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {initdb.stderr.decode(errors='replace')[-2000:]}")
        args = [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sock)]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(  # type: ignore[call-overload]
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.directory,
                start_new_session=True, preexec_fn=_parent_death_signal(), **user_kwargs,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                raise PostgresUnavailable(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            try:
                rows = simple_query(self.socket_path, "SHOW server_version_num", timeout=5)
                self.version_num = int(rows[0][0] or 0)
                return
            except (OSError, ConnectionError, PostgresError) as exc:  # not up yet ("starting up": 57P03)
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"postgres did not accept connections: {exc}; {self.log_tail()}"
                    ) from exc
                time.sleep(0.02)

    def log_tail(self, size: int = 2000) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_bytes()[-size:].decode(errors="replace")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        directory, self.directory = self.directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        self._iam_role_ready = False

    def __enter__(self) -> PostgresServer:
        return self.start() if self._proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- SQL ---------------------------------------------------------------------------------------

    def execute(
        self, sql: str, *, database: str = "postgres", user: str = SUPERUSER
    ) -> list[tuple[str | None, ...]]:
        """Run SQL as ``user`` (default: the superuser); returns the rows of the last result set.

        Several statements separated by ``;`` run in one implicit transaction (simple query
        protocol), so statements like ``CREATE DATABASE`` must be sent alone.
        """
        return simple_query(self.socket_path, sql, user=user, database=database)

    def dsn(self, user: str = SUPERUSER, database: str = "postgres") -> str:
        """A libpq key/value string reaching this server directly over its unix socket."""
        return f"host={self.socket_dir} port={self.port} user={user} dbname={database}"

    def ensure_iam_role(self) -> None:
        """Create the ``rds_iam`` role RDS has on every instance (once)."""
        if self._iam_role_ready:
            return
        self.execute("DO $$ BEGIN CREATE ROLE rds_iam; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        self._iam_role_ready = True

    def create_user(
        self, name: str, *, rds_iam: bool = True, database: str | None = None, password: str | None = None
    ) -> str:
        """Create (or update) a login role as on RDS: ``CREATE USER x; GRANT rds_iam TO x``.

        ``rds_iam=False`` leaves it a password user (revoking ``rds_iam`` if it had it);
        ``password`` sets a password (stored as SCRAM). ``database`` creates that database owned
        by the user when it does not exist, else grants the user all privileges on it.
        Returns ``name``.
        """
        self.ensure_iam_role()
        ident = quote_ident(name)
        self.execute(
            f"DO $$ BEGIN CREATE ROLE {ident} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        statements = [f"ALTER ROLE {ident} LOGIN"]
        statements.append(f"GRANT rds_iam TO {ident}" if rds_iam else f"REVOKE rds_iam FROM {ident}")
        if password is not None:
            statements.append(f"ALTER ROLE {ident} PASSWORD {quote_literal(password)}")
        self.execute("; ".join(statements))
        if database is not None:
            exists = self.execute(f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(database)}")
            if exists:
                self.execute(f"GRANT ALL ON DATABASE {quote_ident(database)} TO {ident}")
            else:
                self.execute(f"CREATE DATABASE {quote_ident(database)} OWNER {ident}")
        return name

    def drop_user(self, name: str) -> None:
        """Drop a role created by :meth:`create_user` (objects it owns must be gone first)."""
        self.execute(f"DROP ROLE IF EXISTS {quote_ident(name)}")
