"""A minimal MySQL login probe over the wire protocol (standard library only), the MySQL side of
:mod:`rdsiam._pgwire`: used by ``spec.verify`` and ``rdsiam check --connect``.

It logs in the way RDS MySQL IAM authentication asks: read the server's Handshake v10, upgrade to TLS
(``SSLRequest``) as the DSN's ``ssl-mode``/``ssl-ca`` say, send a HandshakeResponse41 naming the
server's default authentication plugin with an empty answer, and send the token only when the server
switches to ``mysql_clear_password`` (what ``AWSAuthenticationPlugin`` users get) over TLS. Then
``COM_QUERY SELECT 1`` and ``COM_QUIT``. Dialling, the deadline, TLS (the same CA and host name rules
as libpq's ``sslmode``) and redaction are :class:`rdsiam._pgwire.Session`'s.

The token never goes to another plugin (a hash of it would tell the server nothing it accepts) nor over
an unencrypted connection. ``ssl-mode`` values map to libpq's: DISABLED = disable, PREFERRED = prefer,
REQUIRED = require (verifies the CA when ``ssl-ca`` is set, as PyMySQL does with ``ssl_ca``),
VERIFY_CA = verify-ca, VERIFY_IDENTITY = verify-full. Server errors come back as ``kind="server"`` with
the MySQL error number as ``code`` and ``ERROR 1045 (28000): ...`` as ``message``, as the mysql client
prints them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import Mapping

from rdsiam._pgwire import ProbeResult, Session, _Stop

# Capability flags (the protocol's CLIENT_* constants).
CLIENT_LONG_PASSWORD = 0x1
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_TRANSACTIONS = 0x2000
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_CONNECT_ATTRS = 0x100000
NEEDED = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
MAX_PACKET = 1 << 24
READ_LIMIT = 1 << 20
UTF8MB4 = 45
COM_QUIT, COM_QUERY = 0x01, 0x03
CLEAR_PASSWORD = "mysql_clear_password"

# ssl-mode -> libpq sslmode, whose TLS rules _pgwire implements.
LIBPQ_MODES = {"DISABLED": "disable", "PREFERRED": "prefer", "REQUIRED": "require", "VERIFY_CA": "verify-ca",
               "VERIFY_IDENTITY": "verify-full"}
_MODE_KEYS = ("ssl-mode", "ssl_mode", "sslmode")
_CA_KEYS = ("ssl-ca", "ssl_ca", "sslrootcert")


class ProtocolError(ValueError):
    """A packet that does not parse: not a MySQL server, or a broken one."""


@dataclasses.dataclass(frozen=True)
class Handshake:
    protocol: int
    server_version: str
    connection_id: int
    capabilities: int
    auth_plugin: str
    scramble: bytes


@dataclasses.dataclass(frozen=True)
class ServerError:
    code: int
    sqlstate: str
    message: str

    def __str__(self) -> str:  # as the mysql client prints it
        state = f" ({self.sqlstate})" if self.sqlstate else ""
        return f"ERROR {self.code}{state}: {self.message}"


def tls_settings(options: Mapping[str, str]) -> tuple[str, str | None]:
    """(ssl-mode, CA file) from a DSN's query options: ``ssl-mode``/``ssl_mode``/``sslmode`` (MySQL or libpq
    names, any case) and ``ssl-ca``/``ssl_ca``/``sslrootcert``. Without a mode: VERIFY_IDENTITY with
    ``ssl_verify_identity=true``, REQUIRED with a CA (which verifies it), else PREFERRED (the mysql client's
    default). An unknown mode is returned as given, upper-cased, and treated as REQUIRED by :func:`libpq_mode`."""
    ca = next((options[k] for k in _CA_KEYS if options.get(k)), None)
    raw = next((options[k] for k in _MODE_KEYS if options.get(k)), "")
    if raw:
        mode = raw.strip().upper().replace("-", "_")
        libpq = {v.upper().replace("-", "_"): k for k, v in LIBPQ_MODES.items()}
        return libpq.get(mode, mode), ca
    if options.get("ssl_verify_identity", "").lower() in ("1", "true", "yes", "on"):
        return "VERIFY_IDENTITY", ca
    return ("REQUIRED" if ca else "PREFERRED"), ca


def libpq_mode(mode: str) -> str:
    return LIBPQ_MODES.get(mode, "require")


def packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def split_packet(header: bytes) -> tuple[int, int]:
    """(payload length, sequence id) of a 4-byte packet header."""
    return int.from_bytes(header[:3], "little"), header[3]


def _cstring(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        raise ProtocolError("unterminated string")
    return data[pos:end], end + 1


def parse_handshake(payload: bytes) -> Handshake:
    """Handshake v10 (the server's first packet)."""
    if not payload or payload[0] != 10:
        raise ProtocolError(f"protocol version {payload[:1].hex() or 'missing'}, not 10")
    version, pos = _cstring(payload, 1)
    if len(payload) < pos + 4 + 8 + 1 + 2:
        raise ProtocolError("short handshake")
    (connection_id,) = struct.unpack_from("<I", payload, pos)
    scramble = payload[pos + 4:pos + 12]
    pos += 13
    (caps,) = struct.unpack_from("<H", payload, pos)
    pos += 2
    plugin = ""
    if len(payload) >= pos + 16:
        (upper,) = struct.unpack_from("<H", payload, pos + 3)  # after charset (1) and status (2)
        caps |= upper << 16
        data_len = payload[pos + 5]
        pos += 16  # charset, status, upper caps, data length, 10 reserved
        if caps & CLIENT_SECURE_CONNECTION:
            part = max(13, data_len - 8)
            scramble += payload[pos:pos + part].rstrip(b"\0")
            pos += part
        if caps & CLIENT_PLUGIN_AUTH and pos < len(payload):
            end = payload.find(b"\0", pos)
            plugin = payload[pos:end if end >= 0 else len(payload)].decode(errors="replace")
    text = version.decode(errors="replace")
    return Handshake(10, text.removeprefix("5.5.5-"), connection_id, caps, plugin, scramble)


def parse_error(payload: bytes) -> ServerError:
    """An ERR packet: 0xff, the error number, ``#`` and the SQLSTATE (protocol 4.1), the message."""
    if len(payload) < 3 or payload[0] != 0xFF:
        raise ProtocolError("not an ERR packet")
    (code,) = struct.unpack_from("<H", payload, 1)
    rest = payload[3:]
    state = ""
    if rest[:1] == b"#" and len(rest) >= 6:
        state, rest = rest[1:6].decode(errors="replace"), rest[6:]
    return ServerError(code, state, rest.decode(errors="replace"))


def parse_auth_switch(payload: bytes) -> tuple[str, bytes]:
    """AuthSwitchRequest: 0xfe, the plugin's name, its data (a bare 0xfe: the old pre-4.1 password)."""
    if not payload or payload[0] != 0xFE:
        raise ProtocolError("not an AuthSwitchRequest")
    if len(payload) == 1:
        return "mysql_old_password", b""
    name, pos = _cstring(payload, 1)
    return name.decode(errors="replace"), payload[pos:].rstrip(b"\0")


def client_flags(server: int, *, database: str, tls: bool) -> int:
    flags = NEEDED | CLIENT_LONG_PASSWORD | CLIENT_TRANSACTIONS
    if database:
        flags |= CLIENT_CONNECT_WITH_DB
    if tls:
        flags |= CLIENT_SSL
    return flags & (server | NEEDED)


def ssl_request(flags: int, *, max_packet: int = MAX_PACKET, charset: int = UTF8MB4) -> bytes:
    """The SSLRequest payload: the HandshakeResponse41's fixed part alone."""
    return struct.pack("<IIB23x", flags | CLIENT_SSL, max_packet, charset)


def handshake_response(flags: int, user: str, database: str, plugin: str, auth: bytes = b"", *,
                       max_packet: int = MAX_PACKET, charset: int = UTF8MB4, attrs: bytes | None = None) -> bytes:
    """HandshakeResponse41; ``auth`` is the answer for ``plugin`` (the probe sends none: see the module);
    ``attrs``: a client's length-encoded connection attributes, passed on as sent (with CLIENT_CONNECT_ATTRS)."""
    out = struct.pack("<IIB23x", flags, max_packet, charset) + user.encode() + b"\0"
    out += bytes([len(auth)]) + auth
    if flags & CLIENT_CONNECT_WITH_DB:
        out += database.encode() + b"\0"
    if flags & CLIENT_PLUGIN_AUTH:
        out += plugin.encode() + b"\0"
    if attrs is not None and flags & CLIENT_CONNECT_ATTRS:
        out += attrs
    return out


def is_eof(payload: bytes) -> bool:
    return payload[:1] == b"\xfe" and len(payload) < 9


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(sequence id, payload); a login and ``SELECT 1`` need no packet near ``READ_LIMIT``."""
    length, seq = split_packet(await reader.readexactly(4))
    if length > READ_LIMIT:
        raise ProtocolError(f"a packet of {length} bytes")
    return seq, await reader.readexactly(length)


async def read_server(s: Session, reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One packet from the server within the session's deadline; not MySQL's framing: a protocol failure."""
    try:
        return await s.within(read_packet(reader))
    except ProtocolError as exc:
        raise _Stop("", "protocol", f"malformed packet from the server ({exc}): not a MySQL server?") from None


def refusal(s: Session, payload: bytes) -> ProbeResult:
    err = parse_error(payload)
    return s.result(False, "server", str(err), str(err.code))


async def read_greeting(s: Session, reader: asyncio.StreamReader) -> tuple[int, bytes, Handshake] | ProbeResult:
    """The server's Handshake v10 (sequence, payload, parsed), or its refusal before one."""
    s.stage = "startup"
    seq, payload = await read_server(s, reader)
    if payload[:1] == b"\xff":  # refused before the handshake: too many connections, host blocked, ...
        return refusal(s, payload)
    try:
        hello = parse_handshake(payload)
    except ProtocolError as exc:
        raise _Stop("startup", "protocol", f"unexpected greeting ({exc}): not a MySQL server?") from None
    s.server_version = hello.server_version
    if hello.capabilities & NEEDED != NEEDED:
        raise _Stop("startup", "protocol", f"the server ({hello.server_version}) lacks protocol 4.1 plugin "
                    "authentication, which IAM logins need")
    return seq, payload, hello


async def authenticate(s: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seq: int,
                       password: str) -> tuple[int, bytes] | ProbeResult:
    """After the HandshakeResponse (sequence ``seq``): the token only when the server switches to
    mysql_clear_password over TLS. The server's OK (sequence, payload), or its refusal."""
    while True:
        seq, payload = await read_server(s, reader)
        first = payload[:1]
        if first == b"\x00":
            return seq, payload
        if first == b"\xff":
            return refusal(s, payload)
        if first == b"\xfe":
            plugin, _ = parse_auth_switch(payload)
            if plugin != CLEAR_PASSWORD:
                s.auth = plugin
                raise _Stop("auth", "password", f"it asked for {plugin} authentication, not for the token "
                            f"in cleartext ({CLEAR_PASSWORD}); the token was not sent")
            s.auth = "cleartext"
            if not s.tls:
                raise _Stop("auth", "no-tls", f"the server asked for the password in cleartext "
                            f"({CLEAR_PASSWORD}) over an unencrypted connection; the token was not sent")
            seq += 1
            writer.write(packet(seq, password.encode() + b"\0"))
            await writer.drain()
            continue
        # 0x01 (AuthMoreData): the server's own method carries on (caching_sha2_password, ...).
        raise _Stop("auth", "password", f"it continued {s.auth} authentication instead of asking for the "
                    f"token in cleartext ({CLEAR_PASSWORD}); the token was not sent")


async def probe(
    host: str, port: int, user: str, password: str, database: str, *, ssl_mode: str = "PREFERRED",
    ssl_ca: str | None = None, hostaddr: str | None = None, timeout: float = 5.0,
) -> ProbeResult:
    """Log in once as RDS MySQL IAM authentication asks and run ``SELECT 1``; never raises for network or
    server trouble. ``ssl_mode`` is a MySQL name (see :func:`tls_settings`)."""
    sslmode = libpq_mode(ssl_mode)

    async def login(s: Session) -> ProbeResult:
        reader, writer = await s.dial()
        greeted = await read_greeting(s, reader)
        if isinstance(greeted, ProbeResult):
            return greeted
        seq, _, hello = greeted
        s.stage = "tls"
        use_tls = sslmode != "disable" and bool(hello.capabilities & CLIENT_SSL)
        if sslmode in ("require", "verify-ca", "verify-full") and not use_tls:
            raise _Stop("tls", "no-tls", f"the server does not support TLS (ssl-mode={ssl_mode})")
        flags = client_flags(hello.capabilities, database=database, tls=use_tls)
        if use_tls:
            seq += 1
            writer.write(packet(seq, ssl_request(flags)))
            await writer.drain()
            await s.start_tls(sslmode, ssl_ca, option="ssl-ca")
        s.stage = "auth"
        s.auth = hello.auth_plugin or "mysql_native_password"
        seq += 1
        writer.write(packet(seq, handshake_response(flags, user, database, s.auth)))
        await writer.drain()
        done = await authenticate(s, reader, writer, seq, password)
        if isinstance(done, ProbeResult):
            return done
        s.stage = "query"
        writer.write(packet(0, bytes([COM_QUERY]) + b"SELECT 1"))
        await writer.drain()
        _, payload = await read_server(s, reader)
        if payload[:1] == b"\xff":
            return refusal(s, payload)
        eofs = 0 if payload[:1] != b"\x00" else 2  # a column count starts a result set; OK has none
        while eofs < 2:  # columns, EOF, rows, EOF
            _, payload = await read_server(s, reader)
            if payload[:1] == b"\xff":
                return refusal(s, payload)
            eofs += is_eof(payload)
        writer.write(packet(0, bytes([COM_QUIT])))
        await writer.drain()
        s.stage = "done"
        return s.result(True)

    return await Session(host, port, password, hostaddr=hostaddr, timeout=timeout).run(login)
