"""An RDS-for-MySQL/MariaDB-like front door that accepts only valid IAM tokens.

:class:`IamMySQL` listens on ``127.0.0.1`` (own thread and event loop) and speaks the MySQL
protocol up to authentication the way an RDS instance does for a user created
``IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'``; a login that passes is relayed byte for
byte to a real MariaDB (:class:`rdsiam.testing.mysql.MariaDBServer`) over its unix socket::

    rds_mysql = IamMySQL(mariadb, lookup=sts.lookup).start()
    rds_mysql.create_user("app_user", database="orders")
    token = sts.token_minter("app-role", rds_mysql.endpoint, rds_mysql.port)("app_user")
    pymysql.connect(host=rds_mysql.endpoint, port=rds_mysql.port, user="app_user", password=token,
                    ssl={"ca": rds_mysql.ca_file}, database="orders")   # endpoint -> hostaddr

TLS, ``endpoint``, ``hostaddr``, ``ca_file``, ``region``, the clock and ``login_log`` are those of
:class:`rdsiam.testing.rds.TlsFrontDoor`, shared with :class:`~rdsiam.testing.rds.IamPostgres`.

The exchange, as RDS runs it for an IAM user:

1. Handshake v10 offering ``CLIENT_SSL`` and ``mysql_native_password`` (the server default);
2. the client's SSLRequest and TLS, then its HandshakeResponse41 (user, database, attributes);
3. an AuthSwitchRequest to ``mysql_clear_password`` (skipped if the client already answered
   with that plugin), and the token in cleartext inside TLS (AWS docs, "Connecting to your DB
   instance using IAM authentication from the command line": ``--enable-cleartext-plugin`` and
   ``--ssl-ca``; proxysql #1168, mysqljs #1715, MySqlConnector #268 show the switch);
4. the token checked by :func:`rdsiam.testing.sigv4.verify_token` (user, endpoint, port, region,
   expiry, keys issued by STS). A refusal, for any reason, reads as from RDS:
   ``ERROR 1045 (28000): Access denied for user 'U'@'CLIENT_IP' (using password: YES)``
   (TablePlus #1607, aws-mysql-jdbc #348; ``NO`` for an empty token, as MySQL words it);
5. on success the front door logs in to MariaDB as that user with a password only it knows
   (``mysql_native_password``), with the capability flags, charset, database and connection
   attributes the client sent, and passes MariaDB's OK, or its error (``1049 Unknown database``,
   ``1044``), to the client with the client's sequence id. After the OK every command packet
   restarts at sequence id 0 on both sessions, so the rest is spliced byte for byte.

Without TLS the exchange still runs (the MySQL server performs the account's plugin exchange
before its access checks) and ends in the same 1045 whatever the token, which is not checked:
RDS answers IAM logins over plain TCP with "Access denied" (mysqljs #2465), and libmysqlclient
refuses to send the token at all unless ``LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN`` is set. Unknown
users get the same 1045 after the token exchange (the client cannot tell them apart).

The handshake carries MariaDB's version string and capabilities (so clients pick the right
dialect, as against RDS for MariaDB), minus compression. Known gaps: the connection id in the
handshake is the front door's, not MariaDB's (``KILL <id>`` from the handshake misses);
only IAM users exist (no password logins); IAM policy (``rds-db:connect``) is not evaluated.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from rdsiam.testing import sigv4
from rdsiam.testing.mysql import MariaDBServer
from rdsiam.testing.rds import LoginAttempt, LoginReason, TlsFrontDoor, _ClientGone, _Protocol

__all__ = ["IamMySQL"]

CLIENT_LONG_PASSWORD = 1
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_COMPRESS = 1 << 5
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_SSL = 1 << 11
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_ZSTD_COMPRESSION = 1 << 26

ER_ACCESS_DENIED_ERROR = 1045
MAX_AUTH_PACKET = 65535
NATIVE, CLEARTEXT = b"mysql_native_password", b"mysql_clear_password"


@dataclass(frozen=True)
class _ServerInfo:
    version: bytes
    capabilities: int
    charset: int


@dataclass(frozen=True)
class _Response:
    """HandshakeResponse41, as the client sent it."""

    capabilities: int
    max_packet: int
    charset: int
    user: str
    auth: bytes
    database: str | None
    plugin: bytes
    attrs: bytes | None  # the raw length-encoded block, passed on as sent


def _packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def _err(code: int, state: str, message: str) -> bytes:
    return b"\xff" + struct.pack("<H", code) + b"#" + state.encode() + message.encode()


def _lenenc_int(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise _Protocol("bad length-encoded integer")
    return int.from_bytes(data[pos + 1 : pos + 1 + size], "little"), pos + 1 + size


def _cstring(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        return data[pos:], len(data)
    return data[pos:end], end + 1


def _parse_response(data: bytes) -> _Response:
    if len(data) < 32:
        raise _Protocol("handshake response too short")
    caps, max_packet, charset = struct.unpack("<IIB", data[:9])
    if not caps & CLIENT_PROTOCOL_41:
        raise _Protocol("pre-4.1 client")
    user, pos = _cstring(data, 32)
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        size, pos = _lenenc_int(data, pos)
        auth, pos = data[pos : pos + size], pos + size
    elif caps & CLIENT_SECURE_CONNECTION:
        size = data[pos]
        auth, pos = data[pos + 1 : pos + 1 + size], pos + 1 + size
    else:
        auth, pos = _cstring(data, pos)
    database = None
    if caps & CLIENT_CONNECT_WITH_DB:
        raw, pos = _cstring(data, pos)
        database = raw.decode("utf-8", "replace")
    plugin = b""
    if caps & CLIENT_PLUGIN_AUTH:
        plugin, pos = _cstring(data, pos)
    attrs = None
    if caps & CLIENT_CONNECT_ATTRS and pos < len(data):
        size, end = _lenenc_int(data, pos)
        attrs = data[pos : end + size]
    return _Response(caps, max_packet, charset, user.decode("utf-8", "replace"), auth, database, plugin, attrs)


def _parse_handshake(data: bytes) -> tuple[_ServerInfo, bytes]:
    """A server's Handshake v10 -> (version, capabilities, charset) and its 20-byte scramble."""
    if not data or data[0] != 10:
        raise _Protocol("not a v10 handshake")
    version, pos = _cstring(data, 1)
    scramble1 = data[pos + 4 : pos + 12]
    pos += 13
    caps_low, charset, _status, caps_high, _auth_len = struct.unpack("<HBHHB", data[pos : pos + 8])
    pos += 8 + 10
    scramble2, _ = _cstring(data, pos)
    return _ServerInfo(version, caps_low | caps_high << 16, charset), scramble1 + scramble2[:12]


def _native_scramble(password: str, scramble: bytes) -> bytes:
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode()).digest()
    stage2 = hashlib.sha1(scramble + hashlib.sha1(stage1).digest()).digest()
    return bytes(a ^ b for a, b in zip(stage1, stage2, strict=True))


async def _read_packet(reader: asyncio.StreamReader, limit: int = MAX_AUTH_PACKET) -> tuple[int, bytes]:
    try:
        header = await reader.readexactly(4)
        size = int.from_bytes(header[:3], "little")
        if size > limit:
            raise _Protocol("packet too large during authentication")
        return header[3], await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise _ClientGone() from exc


async def _recv_packet(fd: int) -> tuple[int, bytes]:
    """One packet read with exact ``recv`` calls on (a duplicate of) the connection's socket."""
    loop = asyncio.get_running_loop()
    with socket.socket(fileno=os.dup(fd)) as sock:

        async def exactly(size: int) -> bytes:
            data = b""
            while len(data) < size:
                chunk = await loop.sock_recv(sock, size - len(data))
                if not chunk:
                    raise _ClientGone()
                data += chunk
            return data

        header = await exactly(4)
        size = int.from_bytes(header[:3], "little")
        if size > MAX_AUTH_PACKET:
            raise _Protocol("packet too large during authentication")
        return header[3], await exactly(size)


class IamMySQL(TlsFrontDoor):
    """IAM-checking MySQL endpoint in front of ``backend``. See the module docstring."""

    thread_name = "rdsiam-rds-mysql"

    def __init__(
        self,
        backend: MariaDBServer,
        lookup: sigv4.Lookup,
        *,
        region: str = "us-east-1",
        endpoint: str | None = None,
        port: int = 0,
        clock: Callable[[], datetime] | None = None,
        auth_timeout: float = 10.0,  # MySQL's connect_timeout
    ) -> None:
        super().__init__(region=region, endpoint=endpoint, port=port, clock=clock, auth_timeout=auth_timeout)
        self.backend = backend
        self.lookup = lookup
        self._passwords: dict[str, str] = {}  # IAM user -> its MariaDB password (never shown to clients)
        self._server_info: _ServerInfo | None = None
        self._connection_ids = itertools.count(1)

    # -- users -----------------------------------------------------------------------------------

    def create_user(self, name: str, *, database: str | None = None) -> str:
        """The front door's ``CREATE USER name IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'``
        (+ ``GRANT ALL`` on ``database``, created if missing): only an IAM token logs it in here;
        in MariaDB it is ``name@localhost`` with a random password that only the front door holds."""
        password = secrets.token_urlsafe(24)
        self.backend.execute("CREATE OR REPLACE USER %s@'localhost' IDENTIFIED BY %s", name, password)
        if database is not None:
            self.backend.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            self.backend.execute(f"GRANT ALL ON `{database}`.* TO %s@'localhost'", name)
        self._passwords[name] = password
        return name

    def drop_user(self, name: str) -> None:
        """``DROP USER``: the name is unknown to the front door and MariaDB again."""
        self._passwords.pop(name, None)
        self.backend.execute("DROP USER IF EXISTS %s@'localhost'", name)

    # -- lifecycle -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Learn MariaDB's version and capabilities once: the handshake offers the same."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(self.backend.socket)
            header = sock.recv(4, socket.MSG_WAITALL)
            payload = sock.recv(int.from_bytes(header[:3], "little"), socket.MSG_WAITALL)
        self._server_info, _ = _parse_handshake(payload)

    def _handshake(self, scramble: bytes) -> bytes:
        info = self._server_info
        assert info is not None
        caps = (info.capabilities | CLIENT_LONG_PASSWORD | CLIENT_SSL | CLIENT_PLUGIN_AUTH) & ~(
            CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION
        )
        return (
            b"\x0a" + info.version + b"\0"
            + struct.pack("<I", next(self._connection_ids) & 0xFFFFFFFF)
            + scramble[:8] + b"\0"
            + struct.pack("<HBHHB", caps & 0xFFFF, info.charset, 0x0002, caps >> 16, len(scramble) + 1)
            + b"\0" * 10
            + scramble[8:] + b"\0"
            + NATIVE + b"\0"
        )  # fmt: skip

    # -- connection handling ---------------------------------------------------------------------

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "127.0.0.1"
        scramble = bytes(b % 0x7F or 1 for b in os.urandom(20))  # printable-ish, no NUL
        # MySQL clients send the TLS ClientHello right behind the SSLRequest, without waiting:
        # read that first packet straight off the socket, so the stream buffers no TLS bytes.
        transport = cast(asyncio.Transport, writer.transport)
        transport.pause_reading()
        writer.write(_packet(0, self._handshake(scramble)))
        await writer.drain()
        seq, data = await _recv_packet(writer.get_extra_info("socket").fileno())
        tls = False
        if len(data) == 32 and struct.unpack("<I", data[:4])[0] & CLIENT_SSL:
            assert self._ssl is not None
            await writer.start_tls(self._ssl)
            tls = True
            seq, data = await _read_packet(reader)
        else:
            transport.resume_reading()
        response = _parse_response(data)
        user, database = response.user, response.database

        def log(accepted: bool, reason: str, **extra: object) -> None:
            self.login_log.append(
                LoginAttempt(
                    user=user, database=database or "", accepted=accepted, reason=str(reason), tls=tls,
                    method="iam", at=self.now(), client=host, **extra,  # type: ignore[arg-type]
                )
            )  # fmt: skip

        async def refuse() -> None:
            using = "YES" if sent_token else "NO"  # MySQL's wording for an empty password
            message = f"Access denied for user '{user}'@'{host}' (using password: {using})"
            writer.write(_packet(seq + 1, _err(ER_ACCESS_DENIED_ERROR, "28000", message)))
            await writer.drain()

        # The token: from the handshake response if the client chose cleartext, else ask for it.
        if response.plugin == CLEARTEXT:
            payload = response.auth
        else:
            seq += 1
            writer.write(_packet(seq, b"\xfe" + CLEARTEXT + b"\0" + scramble + b"\0"))
            await writer.drain()
            try:
                seq, payload = await _read_packet(reader)
            except _ClientGone:
                log(False, LoginReason.CLIENT_CLOSED)
                raise
        token = payload.rstrip(b"\0").decode("utf-8", "replace")
        sent_token = bool(token)
        del payload

        if not tls:
            del token
            log(False, LoginReason.NO_TLS, detail="IAM authentication needs TLS; the token was not checked")
            await refuse()
            return None
        password = self._passwords.get(user)
        if password is None:
            del token
            log(False, LoginReason.UNKNOWN_USER, detail="no IAM user of that name")
            await refuse()
            return None
        verdict = sigv4.verify_token(
            token, user=user, host=self.endpoint, port=self.port, region=self.region,
            lookup=self.lookup, now=self.now(),
        )  # fmt: skip
        del token
        known = {
            "access_key_id": verdict.access_key_id,
            "principal_arn": verdict.principal_arn,
            "signed_at": verdict.signed_at,
        }
        if not verdict.ok:
            log(False, verdict.reason.value, detail=verdict.detail, **known)
            await refuse()
            return None

        try:
            backend_reader, backend_writer = await asyncio.open_unix_connection(self.backend.socket)
            status, answer = await self._backend_login(backend_reader, backend_writer, response, password)
        except (OSError, _ClientGone, _Protocol) as exc:
            log(False, LoginReason.BACKEND_UNAVAILABLE, detail=type(exc).__name__, **known)
            writer.write(_packet(seq + 1, _err(2013, "HY000", "Lost connection to server during query")))
            await writer.drain()
            return None
        if status != 0x00:
            detail = answer[9:].decode("utf-8", "replace") if status == 0xFF else "unexpected answer"
            log(True, verdict.reason.value, detail=f"token accepted; MariaDB refused: {detail}", **known)
        else:
            log(True, verdict.reason.value, detail=verdict.detail, **known)
        writer.write(_packet(seq + 1, answer))  # MariaDB's OK or error, in the client's sequence
        await writer.drain()
        if status != 0x00:
            backend_writer.close()
            return None
        return backend_reader, backend_writer

    async def _backend_login(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: _Response,
        password: str,
    ) -> tuple[int, bytes]:
        """Log in to MariaDB as the client's user, with the client's flags; returns its answer."""
        _, greeting = await _read_packet(reader)
        info, scramble = _parse_handshake(greeting)
        caps = client.capabilities & info.capabilities & ~(CLIENT_SSL | CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION)
        caps |= CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
        caps &= ~CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        if client.database:
            caps |= CLIENT_CONNECT_WITH_DB
        else:
            caps &= ~CLIENT_CONNECT_WITH_DB
        if client.attrs is None:
            caps &= ~CLIENT_CONNECT_ATTRS
        auth = _native_scramble(password, scramble)
        out = struct.pack("<IIB", caps, client.max_packet, client.charset) + b"\0" * 23
        out += client.user.encode() + b"\0" + bytes([len(auth)]) + auth
        if client.database:
            out += client.database.encode() + b"\0"
        out += NATIVE + b"\0"
        if client.attrs is not None:
            out += client.attrs
        writer.write(_packet(1, out))
        await writer.drain()
        seq, answer = await _read_packet(reader)
        if answer[:1] == b"\xfe":  # AuthSwitchRequest (the account uses another plugin)
            plugin, pos = _cstring(answer, 1)
            if plugin != NATIVE:
                raise _Protocol(f"backend asked for {plugin!r}")
            writer.write(_packet(seq + 1, _native_scramble(password, answer[pos : pos + 20])))
            await writer.drain()
            seq, answer = await _read_packet(reader)
        return answer[0] if answer else -1, answer

