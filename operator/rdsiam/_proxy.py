"""``rdsiam proxy``: a local sidecar that logs any client in with the mounted token (standard library only).

Apps connect to it over plain TCP on loopback (or a Unix socket) with any or no password, as to the Cloud
SQL Auth Proxy. For each connection the proxy reads the mount once (one generation, through kubelet's
``..data`` symlink, :class:`rdsiam.MountedCredential`), dials the database, negotiates TLS as the mounted
DSN says (``verify-full`` when it says nothing; a DSN allowing plain TCP still gets TLS: the token never
travels without it), logs in as the mount's user with that generation's token, hands the server's answers
to the client, and then relays bytes both ways until either side hangs up. The engines' handshakes live in
:mod:`rdsiam._proxy_pg` and :mod:`rdsiam._proxy_mysql`; dialling, TLS and the deadline are
:class:`rdsiam._pgwire.Session`'s, and a refused login reaches the client as the engine's own error carrying
the diagnosis ``rdsiam check --connect`` prints (:mod:`rdsiam._diagnose`).

The relay: after the login both connections' transports are handed to a pair of :class:`_Pipe` protocols
whose ``data_received`` writes straight into the other transport (no task, no stream buffer in between);
a transport whose write buffer is over its high-water mark pauses reading on the other side
(``pause_writing``/``resume_writing``), so a slow client holds back the server and memory stays bounded.

Health (``--health-port``): ``/startup``, ``/liveness``, ``/readiness`` (ready while listening, not draining
and the mount holds an unexpired token), ``/metrics`` (Prometheus text, ``rdsiam_proxy_*``) and, with
``--quitquitquit``, ``POST /quitquitquit``. SIGTERM (or quitquitquit) closes the listeners at once (new
connections are refused), lets open connections finish for up to ``--drain-timeout`` seconds, then closes
what is left. Tokens never reach a log line, an error sent to a client, or a metric.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import ipaddress
import logging
import os
import signal
import socket
import ssl
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, cast
from urllib.parse import parse_qs, urlsplit

from rdsiam import _check, _diagnose, _mysqlwire, _pgwire
from rdsiam._mounted import CredentialError, MountedCredential, Snapshot

log = logging.getLogger("rdsiam.proxy")

DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
PLAIN_MODES = ("disable", "allow", "prefer")  # libpq modes that would let a token go without TLS


# -- settings --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where and how one connection logs in, from one generation of the mount (and the command line)."""

    engine: str  # postgres | mysql
    sslmode: str  # libpq's name (MySQL's ssl-mode mapped by rdsiam._mysqlwire.LIBPQ_MODES)
    shown_mode: str  # as the user wrote it (ssl-mode for MySQL), for the diagnosis
    sslrootcert: str | None
    hostaddr: str | None


def dsn_options(dsn: str) -> dict[str, str]:
    """Query options of a DSN (sslmode, sslrootcert, hostaddr, ...), never its password."""
    try:
        query = urlsplit(dsn).query
    except ValueError:
        return {}
    return {k: v[0] for k, v in parse_qs(query).items() if k not in ("password", "passwd")}


def engine_of(snap: Snapshot) -> str:
    return "mysql" if _check._is_mysql(snap) else "postgres"


def upstream_settings(snap: Snapshot, *, engine: str, sslmode: str | None = None, sslrootcert: str | None = None,
                      hostaddr: str | None = None) -> Upstream:
    """TLS and address as the mounted DSN says, overridden by the command line; ``verify-full`` (MySQL:
    VERIFY_IDENTITY) when neither names a mode, and at least ``require`` whatever they say."""
    options = dsn_options(snap.dsn)
    if engine == "mysql":
        if sslmode:
            options["ssl-mode"] = sslmode
        elif not any(options.get(k) for k in ("ssl-mode", "ssl_mode", "sslmode", "ssl_verify_identity")):
            options["ssl-mode"] = "VERIFY_IDENTITY"
        if sslrootcert:
            options["ssl-ca"] = sslrootcert
        shown, ca = _mysqlwire.tls_settings(options)
        mode = _mysqlwire.libpq_mode(shown)
    else:
        shown = mode = sslmode or options.get("sslmode") or "verify-full"
        ca = sslrootcert or options.get("sslrootcert")
    if mode in PLAIN_MODES:
        mode = "require"
    return Upstream(engine, mode, shown, ca, hostaddr or options.get("hostaddr"))


class TlsContexts:
    """One client context per (mode, CA file, CA file's mtime): loading a CA bundle costs milliseconds, and a
    rotated bundle is picked up without a restart."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str | None, int], ssl.SSLContext] = {}

    def get(self, sslmode: str, sslrootcert: str | None) -> ssl.SSLContext | None:
        """The context, or None when the CA file cannot be read (the login then reports it, as the probe does)."""
        try:
            mtime = os.stat(sslrootcert).st_mtime_ns if sslrootcert and sslrootcert != "system" else 0
        except OSError:
            return None
        key = (sslmode, sslrootcert, mtime)
        ctx = self._cache.get(key)
        if ctx is None:
            try:
                ctx = _pgwire.tls_context(sslmode, sslrootcert)
            except (OSError, ssl.SSLError):
                return None
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = ctx
        return ctx


# -- metrics ---------------------------------------------------------------------------------------


class Metrics:
    """Counters of the proxy, rendered in Prometheus' text format (no client library: standard library only).
    Labels take a few fixed values (a result is ``ok`` or a diagnosis reason), never anything from a client."""

    def __init__(self) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.logins: dict[str, int] = {}
        self.login_seconds_sum = 0.0
        self.login_seconds_count = 0
        self.bytes = {"client_to_server": 0, "server_to_client": 0}
        self.cancels: dict[str, int] = {}
        self.expiry: Callable[[], float | None] = lambda: None

    def login(self, result: str, seconds: float) -> None:
        self.logins[result] = self.logins.get(result, 0) + 1
        self.login_seconds_sum += seconds
        self.login_seconds_count += 1

    def render(self) -> str:
        lines = [
            "# HELP rdsiam_proxy_connections_open Client connections open now.",
            "# TYPE rdsiam_proxy_connections_open gauge",
            f"rdsiam_proxy_connections_open {self.connections_open}",
            "# HELP rdsiam_proxy_connections_total Client connections accepted.",
            "# TYPE rdsiam_proxy_connections_total counter",
            f"rdsiam_proxy_connections_total {self.connections_total}",
            "# HELP rdsiam_proxy_logins_total Upstream logins by result (ok, or the reason rdsiam check gives).",
            "# TYPE rdsiam_proxy_logins_total counter",
            *(f'rdsiam_proxy_logins_total{{result="{r}"}} {n}' for r, n in sorted(self.logins.items())),
            "# HELP rdsiam_proxy_login_seconds Time from a client's startup message to the server's answer.",
            "# TYPE rdsiam_proxy_login_seconds summary",
            f"rdsiam_proxy_login_seconds_sum {self.login_seconds_sum:.6f}",
            f"rdsiam_proxy_login_seconds_count {self.login_seconds_count}",
            "# HELP rdsiam_proxy_bytes_total Bytes relayed after the login, by direction.",
            "# TYPE rdsiam_proxy_bytes_total counter",
            *(f'rdsiam_proxy_bytes_total{{direction="{d}"}} {n}' for d, n in self.bytes.items()),
            "# HELP rdsiam_proxy_cancel_requests_total PostgreSQL CancelRequests (forwarded, or unknown key).",
            "# TYPE rdsiam_proxy_cancel_requests_total counter",
            *(f'rdsiam_proxy_cancel_requests_total{{result="{r}"}} {n}' for r, n in sorted(self.cancels.items())),
        ]
        left = self.expiry()
        if left is not None:
            lines += ["# HELP rdsiam_proxy_token_expiry_seconds Seconds until the mounted token expires.",
                      "# TYPE rdsiam_proxy_token_expiry_seconds gauge",
                      f"rdsiam_proxy_token_expiry_seconds {left:.0f}"]
        return "\n".join(lines) + "\n"


# -- the relay -------------------------------------------------------------------------------------


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what its transport receives goes straight to ``peer``'s."""

    def __init__(self, peer_pipe: _Pipe | None, counter: str, metrics: Metrics, done: asyncio.Future[None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = peer_pipe
        self.counter, self.metrics, self.done = counter, metrics, done

    def data_received(self, data: bytes) -> None:
        self.metrics.bytes[self.counter] += len(data)
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def eof_received(self) -> bool | None:
        return False  # close: neither protocol continues after its peer's end

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()  # after flushing what is buffered
        if not self.done.done():
            self.done.set_result(None)

    # This transport's write buffer is over its high-water mark: stop reading the other side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def _take_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe) -> bytes:
    """Move a stream's transport to ``pipe``; returns what the stream had read but not handed out yet.

    asyncio has no public way to take a StreamReader's buffer: the attribute is read here, in one place."""
    transport = cast(asyncio.Transport, writer.transport)  # uvloop's transports are not asyncio.Transport subclasses
    transport.set_protocol(pipe)
    pipe.transport = transport
    buffer: bytearray = getattr(reader, "_buffer", bytearray())
    pending = bytes(buffer)
    buffer.clear()
    transport.resume_reading()  # the stream may have paused it (its buffer limit)
    return pending


async def relay(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                server: tuple[asyncio.StreamReader, asyncio.StreamWriter], metrics: Metrics) -> None:
    """Relay bytes both ways until either side closes (see the module notes)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    up = _Pipe(None, "client_to_server", metrics, done)
    down = _Pipe(up, "server_to_client", metrics, done)
    up.peer = down
    from_client = _take_over(*client, up)
    from_server = _take_over(*server, down)
    if from_client:
        up.data_received(from_client)
    if from_server:
        down.data_received(from_server)
    for pipe in (up, down):
        assert pipe.transport is not None
        if pipe.transport.is_closing():
            pipe.connection_lost(None)
    try:
        await done
    finally:
        for pipe in (up, down):
            if pipe.transport is not None:
                pipe.transport.close()


# -- the proxy -------------------------------------------------------------------------------------


class Engine(Protocol):
    """An engine's client side: read the client's start, log in upstream, answer the client; or refuse."""

    async def serve(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None: ...


@dataclasses.dataclass
class Config:
    credential: str
    engine: str
    listen: list[tuple[str, int]]
    unix_socket: str | None = None
    sslmode: str | None = None
    sslrootcert: str | None = None
    hostaddr: str | None = None
    connect_timeout: float = 10.0
    drain_timeout: float = 25.0
    health_address: str = "0.0.0.0"
    health_port: int | None = None
    quitquitquit: bool = False
    client_cert: str | None = None  # TLS toward the app (PostgreSQL): offered only when both are set
    client_key: str | None = None


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A login that did not happen, as the client is told: the engine's error code and one message."""

    reason: str  # a rdsiam._diagnose reason, or CredentialError
    code: str  # SQLSTATE (PostgreSQL) or error number (MySQL)
    summary: str
    causes: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return _diagnose.Diagnosis(self.reason, self.summary, self.causes).message


class Proxy:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.cred = MountedCredential(config.credential, clock=clock)
        self._any = MountedCredential(config.credential, allow_expired=True, clock=clock)  # for the expiry gauge
        self.metrics = Metrics()
        self.metrics.expiry = self._seconds_left
        self.tls = TlsContexts()
        self.cancel_keys: set[bytes] = set()  # PostgreSQL BackendKeyData of open sessions
        self.client_tls: ssl.SSLContext | None = None
        if config.client_cert and config.client_key:
            self.client_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.client_tls.minimum_version = ssl.TLSVersion.TLSv1_2
            self.client_tls.load_cert_chain(config.client_cert, config.client_key)
        self.servers: list[asyncio.Server] = []
        self.started = False
        self.draining = False
        self.stopped: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stop_requested: asyncio.Event | None = None
        engine: Engine
        if config.engine == "mysql":
            from rdsiam._proxy_mysql import MySQLEngine

            engine = MySQLEngine()
        else:
            from rdsiam._proxy_pg import PostgresEngine

            engine = PostgresEngine()
        self.engine = engine

    # -- the mount ---------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self.cred.snapshot()

    def _seconds_left(self) -> float | None:
        try:
            return self._any.snapshot().seconds_left()
        except CredentialError:
            return None

    def readiness(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        if self.draining:
            return False, "draining: not accepting new connections"
        try:
            snap = self.cred.snapshot()
        except CredentialError as exc:
            return False, str(exc)
        left = snap.seconds_left()
        return True, "ready" + (f": the mounted token expires in {left:.0f} s" if left is not None else "")

    def upstream(self, snap: Snapshot) -> Upstream:
        c = self.config
        return upstream_settings(snap, engine=c.engine, sslmode=c.sslmode, sslrootcert=c.sslrootcert,
                                 hostaddr=c.hostaddr)

    def refusal(self, result: _pgwire.ProbeResult, snap: Snapshot, up: Upstream) -> Refusal:
        """What ``rdsiam check --connect`` says about the same failed login (token evidence, then the diagnosis)."""
        token = _check.parse_token(snap.password)
        ctx = _diagnose.Context(
            user=snap.username, host=snap.host, port=snap.port, database=snap.dbname,
            region=token.region if token else "", signing_host=token.host if token else "", sslmode=up.shown_mode,
            hostaddr=up.hostaddr or "", auth=result.auth, engine=up.engine, tls=result.tls)
        d = _diagnose.diagnose(result.kind, result.code, result.message, ctx, stage=result.stage)
        causes = _check._token_evidence(snap) if result.auth == "cleartext" else []
        causes += [c for c in d.causes if c not in causes]
        redacted = tuple(_check.redact(c, snap.password) for c in causes)
        return Refusal(d.reason, result.code, _check.redact(f"{d.reason}: {d.summary}", snap.password), redacted)

    def record_login(self, result: str, started: float, snap: Snapshot | None, refusal: Refusal | None = None) -> None:
        seconds = time.perf_counter() - started
        self.metrics.login(result, seconds)
        if result == "ok" and snap is not None:
            log.debug("logged in as %s with the token of generation %s in %.1f ms", snap.username, snap.generation,
                      seconds * 1000)
        if refusal is not None:
            text = refusal.text if snap is None else _check.redact(refusal.text, snap.password)
            log.warning("login refused: %s", text)

    # -- serving -----------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self.engine.serve(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError, TimeoutError) as exc:
            log.debug("connection ended: %s", type(exc).__name__)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug must not take the listener down, nor log a traceback near a token
            log.error("connection failed unexpectedly (a bug in rdsiam proxy): %s", type(exc).__name__)
        finally:
            self.metrics.connections_open -= 1
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def start(self) -> None:
        c = self.config
        self.stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        for host, port in c.listen:
            self.servers.append(await asyncio.start_server(self._accept, host, port, reuse_address=True))
        if c.unix_socket:
            path = unix_socket_path(c.unix_socket, c.engine, c.listen[0][1] if c.listen else DEFAULT_PORTS[c.engine])
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)  # left by a killed proxy
            self.servers.append(await asyncio.start_unix_server(self._accept, path))
            os.chmod(path, 0o777)  # any local client, like PostgreSQL's default unix_socket_permissions
        if c.health_port is not None:
            self.servers.append(await asyncio.start_server(self._http, c.health_address, c.health_port,
                                                           reuse_address=True))
        self.started = True
        for where in self.addresses():
            log.info("listening on %s", where)

    def addresses(self) -> list[str]:
        out = []
        for server in self.servers:
            for s in server.sockets:
                name = s.getsockname()
                out.append(name if isinstance(name, str) else f"{name[0]}:{name[1]}")
        return out

    def request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run_until_stopped(self) -> None:
        assert self._stop_requested is not None and self.stopped is not None
        await self._stop_requested.wait()
        await self.drain()

    async def drain(self) -> None:
        """Stop accepting, let open connections finish for up to ``drain_timeout`` seconds, then close them."""
        self.draining = True
        health = self.servers[-1] if self.config.health_port is not None else None
        for server in self.servers:
            if server is not health:
                server.close()
        open_now = set(self._connections)
        log.info("stopping: %d connection(s) open, waiting up to %g s for them to finish",
                 len(open_now), self.config.drain_timeout)
        if open_now:
            _, pending = await asyncio.wait(open_now, timeout=self.config.drain_timeout)
            if pending:
                log.warning("closing %d connection(s) still open after %g s", len(pending), self.config.drain_timeout)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)
        if health is not None:
            health.close()
        if self.config.unix_socket:
            with contextlib.suppress(OSError):
                os.unlink(unix_socket_path(self.config.unix_socket, self.config.engine,
                                           self.config.listen[0][1] if self.config.listen
                                           else DEFAULT_PORTS[self.config.engine]))
        assert self.stopped is not None
        self.stopped.set()

    # -- health and metrics ------------------------------------------------------------------------

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            status, body = self.http_answer(method, path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            kind = "text/plain; version=0.0.4" if path == "/metrics" else "text/plain"
            data = body.encode()
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}; charset=utf-8\r\n"
                         f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    def http_answer(self, method: str, path: str) -> tuple[int, str]:
        if path == "/startup":
            return (200, "started\n") if self.started else (503, "starting\n")
        if path == "/liveness":
            return 200, "alive\n"
        if path == "/readiness":
            ok, why = self.readiness()
            return (200 if ok else 503), why + "\n"
        if path == "/metrics":
            return 200, self.metrics.render()
        if path == "/quitquitquit" and self.config.quitquitquit:
            if method != "POST":
                return 405, "use POST\n"
            log.info("stop requested on /quitquitquit")
            self.request_stop()
            return 200, "stopping\n"
        return 404, "not found: /startup, /liveness, /readiness, /metrics" + (
            ", /quitquitquit (POST)" if self.config.quitquitquit else "") + "\n"


def unix_socket_path(directory: str, engine: str, port: int) -> str:
    """Where clients find the socket: libpq's ``DIR/.s.PGSQL.PORT`` (``psql -h DIR -p PORT``); for MySQL
    ``DIR/mysqld.sock`` (``mysql --socket``, PyMySQL ``unix_socket=``)."""
    return os.path.join(directory, f".s.PGSQL.{port}" if engine == "postgres" else "mysqld.sock")


# -- the command -----------------------------------------------------------------------------------


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[V6]:PORT``."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.isdigit():
        host, port_text = "127.0.0.1", text
    else:
        host, port_text = text, ""
    if port_text and not port_text.isdigit():
        raise ValueError(f"--listen {text!r}: the port is not a number")
    return host or "127.0.0.1", int(port_text) if port_text else default_port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_from_args(args: argparse.Namespace) -> Config:
    """The proxy's settings from ``rdsiam proxy``'s arguments; ValueError says what is wrong (exit 2)."""
    path = os.path.abspath(args.credential)
    engine = args.engine
    if engine == "auto":
        try:
            engine = engine_of(MountedCredential(path, allow_expired=True).snapshot())
        except CredentialError as exc:
            raise ValueError(f"{exc} (pass --engine to start anyway)") from None
    if args.listen:
        listen = [parse_listen(text, DEFAULT_PORTS[engine]) for text in args.listen]
    elif args.unix_socket:
        listen = []
    else:
        listen = [("127.0.0.1", DEFAULT_PORTS[engine])]
    exposed = [f"{h}:{p}" for h, p in listen if not is_loopback(h)]
    if exposed and not args.allow_non_loopback:
        raise ValueError(
            f"--listen {', '.join(exposed)} is not a loopback address: whoever reaches it is logged in to the "
            "database as the mounted user without a password. Keep the default (127.0.0.1) for a sidecar, or "
            "pass --allow-non-loopback if a NetworkPolicy limits who can connect")
    if args.unix_socket and not os.path.isdir(args.unix_socket):
        raise ValueError(f"--unix-socket {args.unix_socket!r} is not a directory")
    if bool(args.client_tls_cert) != bool(args.client_tls_key):
        raise ValueError("--client-tls-cert and --client-tls-key go together")
    if args.client_tls_cert and engine == "mysql":
        raise ValueError("TLS toward the app is for PostgreSQL clients only (MySQL clients talk plain TCP on loopback)")
    for option, path_ in (("--client-tls-cert", args.client_tls_cert), ("--client-tls-key", args.client_tls_key)):
        if path_ and not os.access(path_, os.R_OK):
            raise ValueError(f"{option} {path_!r} cannot be read")
    return Config(credential=path, engine=engine, listen=listen, unix_socket=args.unix_socket,
                  sslmode=args.sslmode, sslrootcert=args.sslrootcert, hostaddr=args.hostaddr,
                  connect_timeout=args.connect_timeout, drain_timeout=args.drain_timeout,
                  health_address=args.health_address, health_port=args.health_port,
                  quitquitquit=args.quitquitquit, client_cert=args.client_tls_cert, client_key=args.client_tls_key)


async def serve(config: Config, *, ready: Callable[[Proxy], Awaitable[None] | None] | None = None) -> int:
    proxy = Proxy(config)
    loop = asyncio.get_running_loop()
    stops = 0

    def on_signal() -> None:
        nonlocal stops
        stops += 1
        if stops == 1:
            log.info("SIGTERM: draining")
            proxy.request_stop()
        else:  # a second signal: do not wait
            log.warning("second signal: closing every connection now")
            proxy.config.drain_timeout = 0
            for task in list(proxy._connections):
                task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
        loop.add_signal_handler(signal.SIGTERM, on_signal)
        loop.add_signal_handler(signal.SIGINT, on_signal)
    await proxy.start()
    if ready is not None:
        maybe = ready(proxy)
        if maybe is not None:
            await maybe
    await proxy.run_until_stopped()
    log.info("stopped")
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"rdsiam proxy: {exc}", file=sys.stderr)
        return 2
    exposed = [f"{h}:{p}" for h, p in config.listen if not is_loopback(h)]
    if exposed:
        log.warning("listening on %s, not only loopback (--allow-non-loopback): whoever reaches it logs in as "
                    "the mounted user without a password", ", ".join(exposed))
    try:
        snap = MountedCredential(config.credential, allow_expired=True).snapshot()
        up = upstream_settings(snap, engine=config.engine, sslmode=config.sslmode, sslrootcert=config.sslrootcert,
                               hostaddr=config.hostaddr)
        log.info("%s upstream %s@%s:%s/%s, sslmode %s%s", config.engine, snap.username, snap.host, snap.port,
                 snap.dbname, up.shown_mode, f", CA {up.sslrootcert}" if up.sslrootcert else ", system CAs")
        if up.shown_mode.lower().replace("_", "-") in PLAIN_MODES + ("preferred", "disabled"):
            log.warning("the mounted DSN allows a connection without TLS (%s): the proxy uses TLS anyway, since "
                        "the token is never sent without it", up.shown_mode)
    except CredentialError as exc:
        log.warning("%s", exc)
    loop_factory = None
    if args.event_loop == "uvloop":  # optional (measured: less CPU per relayed message); not in the image
        try:
            loop_factory = importlib.import_module("uvloop").new_event_loop
        except ImportError:
            print("rdsiam proxy: --event-loop uvloop needs the uvloop package (pip install uvloop)", file=sys.stderr)
            return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve(config))
    except OSError as exc:  # a listener could not bind
        print(f"rdsiam proxy: {exc.strerror or exc}", file=sys.stderr)
        return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--credential", required=True, metavar="DIR",
                        help="where the Secret is mounted, e.g. /var/run/secrets/rdsiam/orders-db")
    parser.add_argument("--listen", action="append", metavar="HOST:PORT",
                        help="accept clients here; repeat for several (default: 127.0.0.1 and the engine's port, "
                        "5432 or 3306; none with only --unix-socket)")
    parser.add_argument("--unix-socket", metavar="DIR",
                        help="also (or, without --listen, only) accept clients on a Unix socket in DIR: "
                        "DIR/.s.PGSQL.PORT for PostgreSQL (psql -h DIR), DIR/mysqld.sock for MySQL")
    parser.add_argument("--allow-non-loopback", action="store_true",
                        help="allow --listen on an address other than loopback (anyone reaching it logs in)")
    parser.add_argument("--client-tls-cert", metavar="FILE",
                        help="PostgreSQL: offer TLS to clients with this certificate (default: plain TCP, as "
                        "on loopback)")
    parser.add_argument("--client-tls-key", metavar="FILE", help="the private key of --client-tls-cert")
    parser.add_argument("--engine", default="auto", choices=["auto", "postgres", "mysql"],
                        help="the database engine (default: auto, from the mounted DSN and port)")
    parser.add_argument("--sslmode", help="libpq sslmode, or MySQL ssl-mode, toward the database (default: the "
                        "DSN's, else verify-full; modes allowing plain TCP are raised to require)")
    parser.add_argument("--sslrootcert", metavar="FILE",
                        help="CA bundle to verify the database with (default: the DSN's sslrootcert or ssl-ca)")
    parser.add_argument("--hostaddr", help="dial this address instead of resolving the host (default: the DSN's)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="time allowed for each upstream login (default: 10.0)")
    parser.add_argument("--drain-timeout", type=float, default=25.0, metavar="SECONDS",
                        help="on SIGTERM, how long open connections may finish (default: 25.0)")
    parser.add_argument("--health-port", type=int, metavar="PORT",
                        help="serve /startup, /liveness, /readiness and /metrics on this port (default: off)")
    parser.add_argument("--health-address", default="0.0.0.0", metavar="ADDRESS",
                        help="address of the health port, reachable by the kubelet's probes (default: 0.0.0.0)")
    parser.add_argument("--quitquitquit", action="store_true",
                        help="let POST /quitquitquit on the health port stop the proxy (for Jobs)")
    parser.add_argument("--event-loop", default="asyncio", choices=["asyncio", "uvloop"],
                        help="the event loop: the standard library's, or uvloop when installed (default: asyncio)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="how much to log (default: info)")
