"""A minimal PostgreSQL login probe over the wire protocol (standard library only).

Used by the operator's ``spec.verify`` and by ``rdsiam check --connect``: resolve and dial like
libpq (``hostaddr`` skips DNS), negotiate TLS like libpq's ``sslmode``, send the token only when the
server asks for a cleartext password over TLS (what RDS IAM authentication asks for), then run
``SELECT 1``. It reports where it stopped (``stage``), what kind of failure it was (``kind``) and the
server's own error fields; :func:`rdsiam._diagnose.explain` turns that into likely causes.

It never includes the password in anything it returns or raises, never sends it in cleartext over
an unencrypted connection, and never feeds it to another authentication method (MD5, SCRAM): a
server that asks for one of those has told us what we need to know (the user is not an IAM user).

libpq behaviours kept: ``sslmode=require`` with an ``sslrootcert`` verifies the CA (as libpq does
when a root certificate file exists); only ``verify-full`` checks the host name, against ``host``
(never ``hostaddr``); every address of a name is tried in turn. Differences: ``allow`` behaves
like ``prefer``; ``verify-ca``/``verify-full`` without ``sslrootcert`` use the system trust store
(libpq would read ``~/.postgresql/root.crt``); one deadline covers the whole probe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from urllib.parse import quote

SSL_REQUEST = struct.pack("!ii", 8, 80877103)
PROTOCOL_3_0 = 196608
_T = TypeVar("_T")

# Authentication request codes (AuthenticationXXX messages).
_AUTH_OK, _AUTH_CLEARTEXT, _AUTH_MD5, _AUTH_SASL = 0, 3, 5, 10
_SIGV4 = re.compile(r"(X-Amz-(?:Signature|Security-Token|Credential)(?:=|%3D))[^&\s'\"]+", re.IGNORECASE)
_AUTH_NAMES = {2: "Kerberos V5", 5: "MD5 password", 6: "SCM credentials", 7: "GSSAPI", 9: "SSPI",
               10: "SASL"}


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    ok: bool
    stage: str  # dns | connect | tls | startup | auth | query | done
    kind: str  # "" on success; dns | timeout | refused | network | tls | no-tls | password | server | protocol
    code: str = ""  # SQLSTATE of a server error
    message: str = ""  # the server's (or the socket's) message, never the password
    tls: bool = False
    elapsed_ms: float = 0.0
    server_version: str = ""  # from ParameterStatus, once logged in
    auth: str = ""  # the authentication method the server asked for: cleartext, MD5 password, SASL (...)
    address: str = ""  # the address dialled (ip:port)


class _Stop(Exception):
    """Ends the probe with a result (internal)."""

    def __init__(self, stage: str, kind: str, message: str, code: str = "") -> None:  # stage "": unchanged
        super().__init__(message)
        self.stage, self.kind, self.message, self.code = stage, kind, message, code


def verifies_server(sslmode: str, sslrootcert: str | None) -> bool:
    """Whether libpq checks the server's certificate: verify-ca and verify-full, and require with a root
    certificate (libpq then behaves as verify-ca)."""
    return sslmode in ("verify-ca", "verify-full") or (sslmode == "require" and bool(sslrootcert))


def tls_context(sslmode: str, sslrootcert: str | None) -> ssl.SSLContext:
    """The client TLS context libpq would use for ``sslmode``/``sslrootcert`` (see the module notes)."""
    if not verifies_server(sslmode, sslrootcert):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # require/prefer without a root certificate: encrypted, not authenticated
        return ctx
    cafile = sslrootcert if sslrootcert and sslrootcert != "system" else None
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = sslmode == "verify-full"  # as libpq: only verify-full checks the name
    return ctx


class Session:
    """What a login probe does whatever the protocol (the MySQL probe uses it too): one deadline for
    everything, dialling like libpq, TLS per ``sslmode``, and a result with the password redacted."""

    def __init__(self, host: str, port: int, password: str, *, hostaddr: str | None, timeout: float) -> None:
        self.host, self.port, self.hostaddr, self.timeout = host, port, hostaddr, timeout
        self._password = password
        self.loop = asyncio.get_running_loop()
        self.started = time.perf_counter()
        self.deadline = self.loop.time() + timeout
        self.stage, self.tls, self.server_version, self.auth, self.address = "dns", False, "", "", ""
        self.writer: asyncio.StreamWriter | None = None

    async def within(self, awaitable: Awaitable[_T]) -> _T:
        return await asyncio.wait_for(awaitable, max(0.0, self.deadline - self.loop.time()))

    def result(self, ok: bool, kind: str = "", message: str = "", code: str = "") -> ProbeResult:
        return ProbeResult(ok, self.stage, kind, code, redact(message, self._password), self.tls,
                           (time.perf_counter() - self.started) * 1000, self.server_version, self.auth,
                           self.address)

    async def dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve (unless ``hostaddr``) and connect to the first address that answers, as libpq does."""
        target, port, timeout = self.hostaddr or self.host, self.port, self.timeout
        self.stage = "dns"
        try:
            infos = await self.within(self.loop.getaddrinfo(
                target, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST if self.hostaddr else 0))
        except socket.gaierror as exc:
            what = "hostaddr is not a numeric IP address" if self.hostaddr else "cannot resolve"
            raise _Stop("dns", "dns", f"{what} {target!r}: {exc.strerror}") from None
        except TimeoutError:
            raise _Stop("dns", "dns", f"looking up {target!r} timed out after {timeout:g} s") from None
        self.stage = "connect"
        failures: list[tuple[str, str]] = []
        for family, type_, proto, _, sockaddr in infos:
            ip, port_ = str(sockaddr[0]), int(sockaddr[1])
            address = f"[{ip}]:{port_}" if family == socket.AF_INET6 else f"{ip}:{port_}"
            self.address = address
            sock = socket.socket(family, type_, proto)
            sock.setblocking(False)
            try:
                await self.within(self.loop.sock_connect(sock, sockaddr))
                reader, self.writer = await asyncio.open_connection(sock=sock)
                return reader, self.writer
            except TimeoutError:
                sock.close()
                raise _Stop("connect", "timeout", f"connecting to {address} timed out after {timeout:g} s") from None
            except ConnectionRefusedError:
                sock.close()
                failures.append(("refused", f"{address} refused the connection"))
            except OSError as exc:
                sock.close()
                failures.append(("network", f"{address}: {exc.strerror or exc}"))
        if not failures:
            raise _Stop("dns", "dns", f"{target!r} resolved to no address")
        kinds = {k for k, _ in failures}
        kind = "refused" if kinds == {"refused"} else "network"
        raise _Stop("connect", kind, "; ".join(m for _, m in failures))

    async def start_tls(self, sslmode: str, sslrootcert: str | None, *, option: str = "sslrootcert",
                        context: ssl.SSLContext | None = None) -> None:
        """Upgrade the dialled connection once the server agreed to TLS (``option``: the CA's name in errors;
        ``context``: one made earlier by :func:`tls_context` for the same settings, reused)."""
        assert self.writer is not None
        try:
            ctx = context or tls_context(sslmode, sslrootcert)
        except OSError as exc:
            raise _Stop("tls", "tls", f"cannot read {option} {sslrootcert!r}: {exc.strerror or exc}") from None
        try:
            await self.within(self.writer.start_tls(ctx, server_hostname=self.host))
        except ssl.SSLCertVerificationError as exc:
            raise _Stop("tls", "tls", f"certificate verify failed: {exc.verify_message or exc.reason}") from None
        except ssl.SSLError as exc:
            raise _Stop("tls", "tls", f"TLS handshake failed: {exc.reason or exc}") from None
        self.tls = True

    async def run(self, body: Callable[[Session], Awaitable[ProbeResult]]) -> ProbeResult:
        """``body``'s result; a :class:`_Stop`, a timeout or a broken connection become a failed result."""
        try:
            return await body(self)
        except _Stop as stop:
            self.stage = stop.stage or self.stage
            return self.result(False, stop.kind, stop.message, stop.code)
        except TimeoutError:
            where = self.address or f"{self.hostaddr or self.host}:{self.port}"
            if self.stage == "tls":
                what = f"connected to {where}, but no answer to the TLS request within {self.timeout:g} s"
            else:
                what = (f"connected to {where}, but the server did not answer within {self.timeout:g} s "
                        f"({self.stage})")
            return self.result(False, "timeout", what)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError) as exc:
            return self.result(False, "network", f"the server closed the connection during {self.stage} "
                               f"({type(exc).__name__})")
        finally:
            if self.writer is not None:
                self.writer.close()
                try:
                    await asyncio.wait_for(self.writer.wait_closed(), 1.0)
                except (OSError, ssl.SSLError, TimeoutError):
                    pass


def redact(message: str, password: str) -> str:
    """``message`` without the password: a server (or proxy) may quote it whole, percent-encoded or cut short."""
    if password:
        for form in (password, quote(password, safe="")):
            message = message.replace(form, "<token>")
        message = _SIGV4.sub(r"\1<redacted>", message)
    return message


async def negotiate_tls(s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sslmode: str,
                        sslrootcert: str | None, *, context: ssl.SSLContext | None = None) -> None:
    """Ask for TLS (unless ``sslmode=disable``) and start it; a server without TLS is refused by the modes
    that require it."""
    s.stage = "tls"
    if sslmode == "disable":
        return
    writer.write(SSL_REQUEST)
    await writer.drain()
    answer = await s.within(reader.readexactly(1))
    if answer == b"S":
        await s.start_tls(sslmode, sslrootcert, context=context)
    elif answer == b"N":
        if sslmode in ("require", "verify-ca", "verify-full"):
            raise _Stop("tls", "no-tls", f"the server does not support TLS (sslmode={sslmode}); the token was not "
                        "sent")
    else:
        raise _Stop("tls", "protocol", "unexpected answer to the TLS request: not a PostgreSQL server?")


def startup_message(params: Iterable[tuple[str, str]], version: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!i", version) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def authenticate(s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str,
                       keep: Callable[[bytes, bytes], None] | None = None) -> ProbeResult | None:
    """Answer the server after a StartupMessage: the token only for a cleartext request over TLS. None once the
    first ReadyForQuery came (every message but the password request handed to ``keep``), or the refusal."""
    while True:
        kind, payload = await s.within(_read(reader))
        if kind == b"E":
            return _refused(s, payload)
        if kind == b"R":
            (code,) = struct.unpack("!i", payload[:4])
            s.stage = "auth"  # after AuthenticationOk the server may still refuse (database missing, ...)
            if code == _AUTH_CLEARTEXT:
                s.auth = "cleartext"
                if not s.tls:
                    raise _Stop("auth", "no-tls", "the server asked for the password in cleartext over an "
                                "unencrypted connection; the token was not sent")
                pw = password.encode() + b"\0"
                writer.write(b"p" + struct.pack("!i", len(pw) + 4) + pw)
                await writer.drain()
                continue
            if code != _AUTH_OK:
                method = _AUTH_NAMES.get(code, f"method {code}")
                if code == _AUTH_SASL:
                    mechanisms = [m.decode(errors="replace") for m in payload[4:].split(b"\0") if m]
                    method = f"SASL ({', '.join(mechanisms)})" if mechanisms else method
                s.auth = method
                raise _Stop("auth", "password", f"it asked for {method} authentication, not for an IAM token "
                            "(the token was not sent; a driver sending it as a password gets \"password "
                            "authentication failed\")")
        elif kind == b"S":
            name, _, value = payload.partition(b"\0")
            if name == b"server_version":
                s.server_version = value.rstrip(b"\0").decode(errors="replace")
        if keep is not None:
            keep(kind, payload)
        if kind == b"Z":
            return None


async def probe(
    host: str, port: int, user: str, password: str, database: str, *, sslmode: str = "require",
    sslrootcert: str | None = None, hostaddr: str | None = None, timeout: float = 5.0,
    application_name: str = "rdsiam-verify",
) -> ProbeResult:
    """Log in once and run ``SELECT 1``; never raises for network or server trouble."""

    async def login(s: Session) -> ProbeResult:
        reader, writer = await s.dial()
        await negotiate_tls(s, reader, writer, sslmode, sslrootcert)
        s.stage = "startup"
        writer.write(startup_message((("user", user), ("database", database), ("application_name", application_name))))
        await writer.drain()
        refused = await authenticate(s, reader, writer, password)
        if refused is not None:
            return refused
        s.stage = "query"
        q = b"SELECT 1\0"
        writer.write(b"Q" + struct.pack("!i", len(q) + 4) + q)
        await writer.drain()
        while True:
            kind, payload = await s.within(_read(reader))
            if kind == b"E":
                return _refused(s, payload)
            if kind == b"Z":
                writer.write(b"X" + struct.pack("!i", 4))
                await writer.drain()
                s.stage = "done"
                return s.result(True)
            # T/D/C (the query's rows), N (notice) need no action.

    return await Session(host, port, password, hostaddr=hostaddr, timeout=timeout).run(login)


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!i", header[1:])
    if not 4 <= length <= 1 << 20:
        raise _Stop("", "protocol", "malformed message from the server: not a PostgreSQL server?")
    return header[:1], await reader.readexactly(length - 4)


def _refused(s: Session, payload: bytes) -> ProbeResult:
    """An ErrorResponse as the probe's result: the server's message and SQLSTATE."""
    fields = _fields(payload)
    return s.result(False, "server", fields.get("M", ""), fields.get("C", ""))


def _fields(payload: bytes) -> dict[str, str]:
    out = {}
    for part in payload.split(b"\0"):
        if part:
            out[part[:1].decode()] = part[1:].decode(errors="replace")
    return out
