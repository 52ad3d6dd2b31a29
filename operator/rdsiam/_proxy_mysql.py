"""The MySQL side of ``rdsiam proxy`` (see :mod:`rdsiam._proxy`).

The proxy dials the server first and reads its Handshake v10, so that the handshake it sends the client
carries the server's version string (``5.5.5-...-MariaDB`` included: clients pick their dialect from it),
connection id (``KILL QUERY <id>`` from another connection reaches the right session), character set and
capabilities, minus TLS and compression (the client talks plain TCP on loopback or a Unix socket). Any
authentication answer from the client is accepted. Then, toward the server, the login of
:func:`rdsiam._mysqlwire.probe`: ``SSLRequest`` and TLS (the :class:`~rdsiam._pgwire.Session`'s rules), a
HandshakeResponse41 as the mount's user on the mount's database with the client's capabilities (those both
sides offered), maximum packet size, character set and connection attributes, and the token only once the
server switches to ``mysql_clear_password`` over TLS. The server's OK goes to the client in the client's
sequence; from then on every command restarts at sequence id 0 on both sides and the bytes are relayed.
A refusal reaches the client as an ERR packet with the server's error number (2003 when no server answered)
and the diagnosis ``rdsiam check --connect`` gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import time

from rdsiam import _mysqlwire as wire
from rdsiam._mounted import CredentialError
from rdsiam._pgwire import ProbeResult, Session, _Stop
from rdsiam._proxy import Proxy, Refusal, relay

CLIENT_COMPRESS = 0x20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 0x200000
CLIENT_ZSTD_COMPRESSION = 1 << 26
NOT_OFFERED = wire.CLIENT_SSL | CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION
NATIVE = "mysql_native_password"
CR_CONN_HOST_ERROR = 2003


class _ClientGone(Exception):
    """The client hung up or sent no valid handshake response (not the server's doing)."""


@dataclasses.dataclass(frozen=True)
class ClientResponse:
    """What of a client's HandshakeResponse41 the proxy passes on."""

    capabilities: int
    max_packet: int
    charset: int
    attrs: bytes | None  # the raw length-encoded block


def _lenenc(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise wire.ProtocolError("bad length-encoded integer")
    return int.from_bytes(data[pos + 1:pos + 1 + size], "little"), pos + 1 + size


def parse_response(data: bytes) -> ClientResponse:
    """A HandshakeResponse41 (user, auth answer and database are read past: the mount decides them)."""
    if len(data) < 32:
        raise wire.ProtocolError("handshake response too short")
    caps, max_packet, charset = struct.unpack_from("<IIB", data)
    if not caps & wire.CLIENT_PROTOCOL_41:
        raise wire.ProtocolError("pre-4.1 client")
    _, pos = wire._cstring(data + b"\0", 32)  # user
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        size, pos = _lenenc(data, pos)
        pos += size
    elif caps & wire.CLIENT_SECURE_CONNECTION:
        pos += 1 + data[pos]
    else:
        _, pos = wire._cstring(data + b"\0", pos)
    if caps & wire.CLIENT_CONNECT_WITH_DB:
        _, pos = wire._cstring(data + b"\0", pos)
    if caps & wire.CLIENT_PLUGIN_AUTH and pos < len(data):
        _, pos = wire._cstring(data + b"\0", pos)
    attrs = None
    if caps & wire.CLIENT_CONNECT_ATTRS and pos < len(data):
        size, end = _lenenc(data, pos)
        attrs = data[pos:end + size]
    return ClientResponse(caps, max_packet, charset, attrs)


def raw_greeting_fields(payload: bytes) -> tuple[bytes, int]:
    """The server's version string as sent (``parse_handshake`` drops MariaDB's ``5.5.5-``) and its charset."""
    end = payload.index(b"\0", 1)
    return payload[1:end], payload[end + 1 + 4 + 8 + 1 + 2]


def greeting(version: bytes, connection_id: int, capabilities: int, charset: int, scramble: bytes) -> bytes:
    """A Handshake v10 offering ``capabilities`` and mysql_native_password (whatever the client answers)."""
    return (b"\x0a" + version + b"\0" + struct.pack("<I", connection_id) + scramble[:8] + b"\0"
            + struct.pack("<HBHHB", capabilities & 0xFFFF, charset, 0x0002, capabilities >> 16, len(scramble) + 1)
            + b"\0" * 10 + scramble[8:] + b"\0" + NATIVE.encode() + b"\0")


def upstream_flags(client: int, offered: int, *, database: str) -> int:
    """The capabilities the server is asked for: those the client chose among the ones offered, with TLS."""
    flags = (client & offered) | wire.NEEDED | wire.CLIENT_SSL
    flags &= ~(CLIENT_COMPRESS | CLIENT_ZSTD_COMPRESSION)
    if database:
        flags |= wire.CLIENT_CONNECT_WITH_DB
    else:
        flags &= ~wire.CLIENT_CONNECT_WITH_DB
    return flags


def err_packet(seq: int, code: int, sqlstate: str, message: str) -> bytes:
    return wire.packet(seq, b"\xff" + struct.pack("<H", code) + b"#" + sqlstate.encode() + message.encode())


def refusal_packet(seq: int, refusal: Refusal) -> bytes:
    code = int(refusal.code) if refusal.code.isdigit() else CR_CONN_HOST_ERROR
    state = "28000" if code == 1045 else "HY000"
    text = f"rdsiam proxy: {refusal.text} (rdsiam check DIR --connect shows the same in the pod)"
    return err_packet(seq, code, state, text)


class MySQLEngine:
    async def serve(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.perf_counter()
        try:
            snap = proxy.snapshot()
        except CredentialError as exc:
            refusal = Refusal("CredentialError", "", f"cannot read the mounted credential: {exc}")
            proxy.record_login(refusal.reason, started, None, refusal)
            writer.write(refusal_packet(0, refusal))
            await writer.drain()
            return
        up = proxy.upstream(snap)
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        client_seq = -1  # the sequence id of the client's last packet; -1 before its handshake response

        async def from_client() -> tuple[int, bytes]:
            try:
                return await asyncio.wait_for(wire.read_packet(reader), proxy.config.connect_timeout)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, wire.ProtocolError) as exc:
                raise _ClientGone() from exc

        async def login(s: Session) -> ProbeResult:
            nonlocal client_seq
            upstream_reader, upstream_writer = await s.dial()
            greeted = await wire.read_greeting(s, upstream_reader)
            if isinstance(greeted, ProbeResult):
                return greeted
            seq, payload, hello = greeted
            try:
                version, charset = raw_greeting_fields(payload)
            except (ValueError, IndexError):
                raise _Stop("startup", "protocol", "unexpected greeting: not a MySQL server?") from None
            if not hello.capabilities & wire.CLIENT_SSL:
                raise _Stop("tls", "no-tls", f"the server does not support TLS (ssl-mode={up.shown_mode}); the "
                            "token was not sent")
            offered = hello.capabilities & ~NOT_OFFERED
            scramble = bytes(b % 0x7F or 1 for b in os.urandom(20))
            writer.write(wire.packet(0, greeting(version, hello.connection_id, offered, charset, scramble)))
            client_seq, answer = await from_client()
            if len(answer) == 32:  # an SSLRequest: TLS was not offered
                raise _ClientGone()
            try:
                client = parse_response(answer)
            except (wire.ProtocolError, IndexError) as exc:
                raise _ClientGone() from exc
            flags = upstream_flags(client.capabilities, offered, database=snap.dbname)
            s.stage = "tls"
            seq += 1
            upstream_writer.write(wire.packet(seq, wire.ssl_request(flags, max_packet=client.max_packet,
                                                                    charset=client.charset)))
            await upstream_writer.drain()
            await s.start_tls(up.sslmode, up.sslrootcert, option="ssl-ca",
                              context=proxy.tls.get(up.sslmode, up.sslrootcert))
            s.stage = "auth"
            s.auth = hello.auth_plugin or NATIVE
            seq += 1
            upstream_writer.write(wire.packet(seq, wire.handshake_response(
                flags, snap.username, snap.dbname, s.auth, max_packet=client.max_packet, charset=client.charset,
                attrs=client.attrs)))
            await upstream_writer.drain()
            done = await wire.authenticate(s, upstream_reader, upstream_writer, seq, snap.password)
            if isinstance(done, ProbeResult):
                return done
            _, payload = done
            writer.write(wire.packet(client_seq + 1, payload))  # the server's OK, in the client's sequence
            streams.append((upstream_reader, upstream_writer))
            s.writer = None  # keep the connection: Session.run would close it
            s.stage = "done"
            return s.result(True)

        try:
            result = await Session(snap.host, snap.port, snap.password, hostaddr=up.hostaddr,
                                   timeout=proxy.config.connect_timeout).run(login)
        except _ClientGone:
            return
        if not result.ok:
            refusal = proxy.refusal(result, snap, up)
            proxy.record_login(refusal.reason, started, snap, refusal)
            writer.write(refusal_packet(client_seq + 1, refusal))
            await writer.drain()
            return
        proxy.record_login("ok", started, snap)
        await relay((reader, writer), streams[0], proxy.metrics)
