"""The PostgreSQL side of ``rdsiam proxy`` (see :mod:`rdsiam._proxy`).

Toward the client: ``SSLRequest`` and ``GSSENCRequest`` are answered ``N`` (the client talks plain TCP on
loopback or a Unix socket; with ``--client-tls-cert``/``--client-tls-key`` an ``SSLRequest`` gets TLS), the
``StartupMessage`` is read and no password is asked for. The mount decides
who logs in where: the client's ``user`` and ``database`` are ignored (a Secret is one user on one database;
``psql`` and pgbench send the OS user's name when given none), every other startup parameter
(``application_name``, ``options``, ``client_encoding``, ...) is passed on, with the client's protocol version.

Toward the server: the login of :func:`rdsiam._pgwire.probe` (the same :class:`~rdsiam._pgwire.Session`:
dialling, TLS, deadline, redaction), the token sent only when the server asks for a cleartext password over
TLS. What the server says from ``AuthenticationOk`` to the first ``ReadyForQuery`` (ParameterStatus,
BackendKeyData, notices) goes to the client as it came, then the bytes are relayed. A refusal reaches the
client as a FATAL ErrorResponse whose message is the diagnosis ``rdsiam check --connect`` gives (detail: the
likely causes), with the server's SQLSTATE (08001 when no server answered).

Cancel: the client holds the server's own BackendKeyData, so its ``CancelRequest`` (sent to the proxy, a new
plain connection as libpq and pgjdbc do) is forwarded as is over a new connection to the one upstream, with
TLS as for a login; a key that belongs to no session open through this proxy is dropped, as PostgreSQL drops
unknown keys.
"""

from __future__ import annotations

import asyncio
import struct
import time

from rdsiam import _pgwire
from rdsiam._mounted import CredentialError
from rdsiam._pgwire import SSL_REQUEST, ProbeResult, Session
from rdsiam._proxy import Proxy, Refusal, Upstream, relay

SSL_CODE, GSSENC_CODE, CANCEL_CODE = 80877103, 80877104, 80877102
MAX_STARTUP = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
IGNORED = ("user", "database")


class _ClientGone(Exception):
    """The client hung up or sent something that is not PostgreSQL (not the server's doing)."""


def parse_startup(body: bytes) -> dict[str, str]:
    """The parameters of a StartupMessage's body (after length and version)."""
    parts = body.split(b"\0")
    params: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        if not parts[i]:
            break
        params[parts[i].decode("utf-8", "replace")] = parts[i + 1].decode("utf-8", "replace")
    return params


def startup_message(version: int, user: str, database: str, client: dict[str, str]) -> bytes:
    """The StartupMessage sent upstream: the mount's user and database, the client's other parameters."""
    pairs = [("user", user), ("database", database), *((k, v) for k, v in client.items() if k not in IGNORED)]
    return _pgwire.startup_message(pairs, version)


def error_response(code: str, message: str, detail: str = "", hint: str = "") -> bytes:
    fields = [(b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message)]
    if detail:
        fields.append((b"D", detail))
    if hint:
        fields.append((b"H", hint))
    body = b"".join(k + v.encode() + b"\0" for k, v in fields) + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def refusal_message(refusal: Refusal) -> bytes:
    causes = refusal.causes
    if len(causes) == 1:
        detail = f"Check: {causes[0]}."
    else:
        detail = "Likely causes, most likely first: " + " ".join(f"({i}) {c}." for i, c in enumerate(causes, 1))
    code = refusal.code if len(refusal.code) == 5 else "08001"
    return error_response(code, f"rdsiam proxy: {refusal.summary}", detail if causes else "",
                          "rdsiam check DIR --connect shows the same in the pod")


async def _read_client(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise _ClientGone() from exc


class PostgresEngine:
    async def serve(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(proxy.config.connect_timeout):
                while True:
                    header = await _read_client(reader, 8)
                    length, code = struct.unpack("!ii", header)
                    if not 8 <= length <= MAX_STARTUP:
                        return
                    body = await _read_client(reader, length - 8)
                    if code == SSL_CODE and proxy.client_tls is not None and writer.get_extra_info("sslcontext") \
                            is None:
                        writer.write(b"S")
                        await writer.drain()
                        await writer.start_tls(proxy.client_tls)
                        continue
                    if code in (SSL_CODE, GSSENC_CODE):  # plain toward the app
                        writer.write(b"N")
                        continue
                    if code == CANCEL_CODE:
                        await self.cancel(proxy, header + body)
                        return
                    if code >> 16 != 3:
                        writer.write(error_response("0A000", f"unsupported frontend protocol {code >> 16}."
                                                    f"{code & 0xFFFF}: server supports 3.0"))
                        return
                    break
        except (_ClientGone, TimeoutError):
            return
        await self.login_and_relay(proxy, reader, writer, code, parse_startup(body))

    async def login_and_relay(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              version: int, params: dict[str, str]) -> None:
        started = time.perf_counter()
        try:
            snap = proxy.snapshot()
        except CredentialError as exc:
            refusal = Refusal("CredentialError", "08001", f"cannot read the mounted credential: {exc}")
            proxy.record_login(refusal.reason, started, None, refusal)
            writer.write(refusal_message(refusal))
            await writer.drain()
            return
        up = proxy.upstream(snap)
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        forward: list[bytes] = []
        key = b""

        def keep(kind: bytes, payload: bytes) -> None:
            nonlocal key
            if kind == b"K":
                key = payload
            forward.append(kind + struct.pack("!i", len(payload) + 4) + payload)

        async def login(s: Session) -> ProbeResult:
            upstream_reader, upstream_writer = await s.dial()
            # up.sslmode is never one that allows plain TCP (see upstream_settings): the token goes over TLS.
            await _pgwire.negotiate_tls(s, upstream_reader, upstream_writer, up.sslmode, up.sslrootcert,
                                        context=proxy.tls.get(up.sslmode, up.sslrootcert))
            s.stage = "startup"
            upstream_writer.write(startup_message(version, snap.username, snap.dbname, params))
            await upstream_writer.drain()
            refused = await _pgwire.authenticate(s, upstream_reader, upstream_writer, snap.password, keep)
            if refused is not None:
                return refused
            streams.append((upstream_reader, upstream_writer))
            s.writer = None  # keep the connection: Session.run would close it
            s.stage = "done"
            return s.result(True)

        result = await Session(snap.host, snap.port, snap.password, hostaddr=up.hostaddr,
                               timeout=proxy.config.connect_timeout).run(login)
        if not result.ok:
            refusal = proxy.refusal(result, snap, up)
            proxy.record_login(refusal.reason, started, snap, refusal)
            writer.write(refusal_message(refusal))
            await writer.drain()
            return
        proxy.record_login("ok", started, snap)
        writer.write(b"".join(forward))
        if key:
            proxy.cancel_keys.add(key)
        try:
            await relay((reader, writer), streams[0], proxy.metrics)
        finally:
            proxy.cancel_keys.discard(key)

    async def cancel(self, proxy: Proxy, packet: bytes) -> None:
        """Forward a CancelRequest whose key belongs to a session open through this proxy."""
        if packet[8:] not in proxy.cancel_keys:
            proxy.metrics.cancels["unknown"] = proxy.metrics.cancels.get("unknown", 0) + 1
            return
        snap = proxy._any.snapshot()  # no token is sent: an expired mount still cancels
        up: Upstream = proxy.upstream(snap)

        async def send(s: Session) -> ProbeResult:
            upstream_reader, upstream_writer = await s.dial()
            upstream_writer.write(SSL_REQUEST)
            await upstream_writer.drain()
            if await s.within(upstream_reader.readexactly(1)) == b"S":
                await s.start_tls(up.sslmode, up.sslrootcert, context=proxy.tls.get(up.sslmode, up.sslrootcert))
            upstream_writer.write(packet)
            await upstream_writer.drain()
            await s.within(upstream_reader.read(1))  # the server closes once it has read the request
            return s.result(True)

        result = await Session(snap.host, snap.port, "", hostaddr=up.hostaddr,
                               timeout=proxy.config.connect_timeout).run(send)
        outcome = "forwarded" if result.ok else "failed"
        proxy.metrics.cancels[outcome] = proxy.metrics.cancels.get(outcome, 0) + 1
