"""An RDS-for-PostgreSQL-like front door that accepts only valid IAM tokens.

:class:`IamPostgres` listens on ``127.0.0.1`` (own thread and event loop) and speaks the
PostgreSQL wire protocol up to authentication, the way an RDS instance with IAM database
authentication does; a login that passes is relayed byte for byte to a real PostgreSQL
(:class:`rdsiam.testing.postgres.PostgresServer`) over its unix socket, so the client then talks
to a real server (queries, COPY, notifications, cancel)::

    rds = IamPostgres(postgres, lookup=sts.lookup).start()
    postgres.create_user("app_user", database="orders")          # CREATE USER; GRANT rds_iam
    token = boto3.client("rds").generate_db_auth_token(rds.endpoint, rds.port, "app_user", rds.region)
    psycopg.connect(rds.dsn("app_user", "orders", token))        # verify-full against rds.ca_file

TLS uses a CA generated at start (``ca_file``); the server certificate names the advertised
``endpoint`` (default ``rdsiam-local.cluster-abc123def456.<region>.rds.amazonaws.com``),
``localhost`` and ``127.0.0.1``. ``dsn()`` sets ``hostaddr=127.0.0.1`` so libpq dials loopback while
verifying the certificate against the endpoint name, as a client in the VPC would.

Authentication follows this model of the instance's ``pg_hba.conf`` (first matching line wins)::

    hostnossl all +rds_iam all reject     # IAM needs TLS
    hostssl   all +rds_iam all pam        # the IAM token is the password (cleartext over TLS)
    host      all all      all md5        # everyone else: password (hostssl when force_ssl is on)

So the client sees, exactly as from RDS (PostgreSQL 15 wording; older servers say ``SSL off``):

- IAM member, bad token (any reason): ``FATAL 28000 PAM authentication failed for user "U"``.
- not an ``rds_iam`` member, or no such role: password authentication (SCRAM-SHA-256, or MD5 for
  an MD5-stored password); with a token, or no password set, ``FATAL 28P01 password authentication
  failed for user "U"``. Users without ``rds_iam`` and unknown users are indistinguishable to the
  client (PostgreSQL mocks the SCRAM exchange for unknown roles), as on RDS, where users outside
  ``rds_iam`` can only log in with a password.
- no TLS: ``pg_hba.conf rejects connection for host "H", user "U", database "D", no encryption``
  for IAM members; ``no pg_hba.conf entry for host ...`` for other users when ``force_ssl``.

``login_log`` tells every case apart (``LoginAttempt.reason``) without ever recording the token.

Known gaps: no direct TLS (libpq ``sslnegotiation=direct``); SCRAM without channel binding
(``SCRAM-SHA-256-PLUS`` is not offered, so ``channel_binding=require`` fails); IAM policy
(``rds-db:connect``) is not evaluated; the exact pg_hba lines of RDS are inferred from public
error reports and AWS's documented "users outside rds_iam use password authentication".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import os
import shutil
import ssl
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from rdsiam.testing import _pki, sigv4
from rdsiam.testing.postgres import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    SSL_REQUEST,
    SUPERUSER,
    PostgresError,
    PostgresServer,
    encode_error,
    encode_message,
    encode_query,
    encode_startup,
    parse_data_row,
    parse_error_fields,
    quote_literal,
)

__all__ = ["IamPostgres", "LoginAttempt", "LoginReason", "TlsFrontDoor", "make_server_tls", "write_server_pki"]

MAX_STARTUP_LENGTH = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_AUTH_LENGTH = 65535  # PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH
_AUTH_OK, _AUTH_CLEARTEXT, _AUTH_MD5, _AUTH_SASL, _AUTH_SASL_CONTINUE, _AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


class LoginReason(StrEnum):
    """Outcomes of a login that are not about the token itself (those are ``sigv4.Reason``)."""

    IAM_OK = "ok"  # valid token, IAM member (same value as sigv4.Reason.OK)
    PASSWORD_OK = "password_ok"  # not an IAM member, correct database password
    NO_TLS = "no_tls"  # startup without TLS, refused by the pg_hba model
    UNKNOWN_USER = "unknown_user"  # no such role; password exchange mocked and failed
    NOT_IAM_USER = "not_iam_user"  # role exists but is not in rds_iam; password auth failed
    NO_USER = "no_user"  # startup message without a user name
    CLIENT_CLOSED = "client_closed"  # client hung up when asked for a password (psql prompting)
    PROTOCOL_ERROR = "protocol_error"  # unexpected message during authentication
    BACKEND_UNAVAILABLE = "backend_unavailable"  # could not reach the real PostgreSQL


@dataclass(frozen=True)
class LoginAttempt:
    """One login as the front door saw it. Never contains the token or a password."""

    user: str
    database: str
    accepted: bool
    reason: str  # a LoginReason or sigv4.Reason value
    tls: bool
    method: str | None  # "iam", "password" or None (refused before authentication)
    access_key_id: str | None = None
    principal_arn: str | None = None
    detail: str = ""  # internal explanation (from the verifier for IAM)
    at: datetime | None = None  # server clock (with clock/clock_offset applied)
    client: str = ""  # the client's address (a pod's IP on a real node)
    signed_at: datetime | None = None  # the token's X-Amz-Date: tells token generations apart


@dataclass(frozen=True)
class _RoleInfo:
    exists: bool
    iam: bool
    password: str | None  # pg_authid.rolpassword (SCRAM or MD5 verifier)


class _ClientGone(Exception):
    pass


class _Protocol(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _fatal(code: str, message: str, routine: str, line: str | None = None) -> bytes:
    fields = {"S": "FATAL", "V": "FATAL", "C": code, "M": message, "F": "auth.c"}
    if line is not None:
        fields["L"] = line
    fields["R"] = routine
    return encode_error(fields)


def _auth(code: int, data: bytes = b"") -> bytes:
    return encode_message(b"R", struct.pack("!I", code) + data)


def make_server_tls(directory: Path, endpoint: str) -> tuple[ssl.SSLContext, str]:
    """:func:`write_server_pki` for ``endpoint``; returns the server context and the CA file."""
    ca_path, cert_path, key_path = write_server_pki(directory, endpoint)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context, ca_path


def write_server_pki(
    directory: Path, endpoint: str, ca_name: str = "rdsiam local test RDS CA"
) -> tuple[str, str, str]:
    """A new CA and a server certificate naming ``endpoint``, ``localhost`` and ``127.0.0.1``,
    written to ``directory`` as ``ca.pem``, ``server.crt`` and ``server.key``; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    not_before, not_after = now - timedelta(days=1), now + timedelta(days=30)
    ca_key, ca_cert = _pki.make_ca(ca_name, not_before, not_after, path_length=0)
    sans = [*(x509.DNSName(name) for name in dict.fromkeys([endpoint, "localhost"])),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    key, cert = _pki.make_leaf(ca_key, ca_cert, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, endpoint)]),
                               ExtendedKeyUsageOID.SERVER_AUTH, sans, not_before, not_after)
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pki.pem_key(key))
    os.chmod(key_path, 0o600)
    return str(ca_path), str(cert_path), str(key_path)


class TlsFrontDoor:
    """Shared shell of the RDS-like front doors (:class:`IamPostgres`, ``rds_mysql.IamMySQL``).

    A TCP listener on ``hostaddr`` in its own thread and event loop, a CA and server certificate
    for ``endpoint`` made at start (``ca_file``), the server clock and ``login_log``. Subclasses
    implement ``_authenticate`` (return the backend streams to splice, or None) and may override
    ``_prepare`` (before listening) and ``_before_shutdown``.
    """

    thread_name = "rdsiam-frontdoor"

    def __init__(
        self,
        *,
        region: str,
        endpoint: str | None,
        port: int,
        clock: Callable[[], datetime] | None,
        auth_timeout: float,
    ) -> None:
        self.region = region
        self.endpoint = endpoint or f"rdsiam-local.cluster-abc123def456.{region}.rds.amazonaws.com"
        self.hostaddr = "127.0.0.1"
        self.port = port
        self.clock = clock  # returns an aware datetime; None: the real clock
        self.clock_offset = 0.0  # seconds added to the clock (e.g. 901 to outlive a fresh token)
        self.auth_timeout = auth_timeout  # authentication_timeout
        self.login_log: list[LoginAttempt] = []
        self.ca_file: str = ""
        self._dir: Path | None = None
        self._ssl: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Called by ``start()`` before the listener opens."""

    async def _before_shutdown(self) -> None:
        """Called in the loop thread by ``stop()`` before the listener closes."""

    def start(self) -> Self:
        self._prepare()
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.thread_name}-"))
        self._ssl, self.ca_file = make_server_tls(self._dir, self.endpoint)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._start_error is not None or self._server is None:
            self.stop()
            raise RuntimeError(f"{type(self).__name__} failed to start: {self._start_error!r}")
        return self

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._accept, self.hostaddr, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported by start()
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        await self._before_shutdown()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            if self._server is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        if loop is not None and not loop.is_running():
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
        self._loop = self._thread = self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start() if self._loop is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def now(self) -> datetime:
        """The server clock: ``clock()`` (or real UTC time) plus ``clock_offset`` seconds."""
        base = self.clock() if self.clock is not None else datetime.now(UTC)
        return base + timedelta(seconds=self.clock_offset)

    @property
    def last_login(self) -> LoginAttempt | None:
        return self.login_log[-1] if self.login_log else None

    # -- connection handling ---------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        backend_writer: asyncio.StreamWriter | None = None
        try:
            relay = None
            try:
                async with asyncio.timeout(self.auth_timeout):
                    relay = await self._authenticate(reader, writer)
            except (_ClientGone, _Protocol, TimeoutError, ConnectionError, ssl.SSLError, OSError):
                relay = None
            if relay is not None:
                backend_reader, backend_writer = relay
                await self._relay(reader, writer, backend_reader, backend_writer)
        except asyncio.CancelledError:
            pass
        finally:
            for w in (backend_writer, writer):
                if w is not None:
                    await _close(w)
            self._tasks.discard(task)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        raise NotImplementedError

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        backend_reader: asyncio.StreamReader,
        backend_writer: asyncio.StreamWriter,
    ) -> None:
        """Splice the two sessions byte for byte until either side hangs up."""
        pumps = [
            asyncio.ensure_future(_pump(client_reader, backend_writer)),
            asyncio.ensure_future(_pump(backend_reader, client_writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


class IamPostgres(TlsFrontDoor):
    """IAM-checking PostgreSQL endpoint in front of ``backend``. See the module docstring."""

    thread_name = "rdsiam-rds"

    def __init__(
        self,
        backend: PostgresServer,
        lookup: sigv4.Lookup,
        *,
        region: str = "us-east-1",
        endpoint: str | None = None,
        port: int = 0,
        force_ssl: bool = True,
        clock: Callable[[], datetime] | None = None,
        auth_timeout: float = 60.0,
    ) -> None:
        super().__init__(region=region, endpoint=endpoint, port=port, clock=clock, auth_timeout=auth_timeout)
        self.backend = backend
        self.lookup = lookup
        self.force_ssl = force_ssl  # rds.force_ssl: refuse non-TLS logins of non-IAM users too
        self._admin: _AdminConnection | None = None  # superuser session for role lookups (loop thread)

    def _prepare(self) -> None:
        self.backend.ensure_iam_role()

    async def _before_shutdown(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    # -- helpers for tests -----------------------------------------------------------------------

    def dsn(self, user: str, database: str, token: str | None = None, *, sslmode: str = "verify-full") -> str:
        """A libpq URL reaching this endpoint like a client in the VPC (token percent-encoded)."""
        auth = quote(user, safe="")
        if token is not None:
            auth += ":" + quote(token, safe="")
        return (
            f"postgresql://{auth}@{self.endpoint}:{self.port}/{quote(database, safe='')}"
            f"?sslmode={sslmode}&sslrootcert={quote(self.ca_file, safe='/')}&hostaddr={self.hostaddr}"
        )

    def conninfo(self, user: str, database: str, *, sslmode: str = "verify-full") -> dict[str, str]:
        """libpq keywords (no password) for psql/``psycopg.connect(**...)``; pass the token apart."""
        return {
            "host": self.endpoint,
            "hostaddr": self.hostaddr,
            "port": str(self.port),
            "user": user,
            "dbname": database,
            "sslmode": sslmode,
            "sslrootcert": self.ca_file,
        }

    # -- connection handling ---------------------------------------------------------------------

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        tls = False
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "127.0.0.1"
        while True:
            header = await _read_exact(reader, 4)
            (length,) = struct.unpack("!I", header)
            if not 8 <= length <= MAX_STARTUP_LENGTH:
                raise _Protocol("invalid length of startup packet")
            packet = header + await _read_exact(reader, length - 4)
            (code,) = struct.unpack("!I", packet[4:8])
            if code == SSL_REQUEST and not tls:
                assert self._ssl is not None
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self._ssl)
                tls = True  # the same StreamReader now yields decrypted bytes
                continue
            if code == GSSENC_REQUEST:
                writer.write(b"N")
                await writer.drain()
                continue
            if code == CANCEL_REQUEST:
                await self._forward_cancel(packet)
                return None
            if code >> 16 != 3:
                writer.write(
                    _fatal(
                        "0A000",
                        f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: "
                        "server supports 3.0 to 3.0",
                        "ProcessStartupPacket",
                    )
                )
                await writer.drain()
                return None
            break
        startup = packet
        parts = packet[8:].split(b"\0")
        params: dict[str, str] = {}
        for i in range(0, len(parts) - 1, 2):
            if not parts[i]:
                break
            params[parts[i].decode("utf-8", "replace")] = parts[i + 1].decode("utf-8", "replace")
        user = params.get("user", "")
        database = params.get("database") or user

        def log(accepted: bool, reason: str, method: str | None, **extra: object) -> None:
            self.login_log.append(
                LoginAttempt(
                    user=user, database=database, accepted=accepted, reason=str(reason), tls=tls,
                    method=method, at=self.now(), client=host, **extra,  # type: ignore[arg-type]
                )
            )  # fmt: skip

        if not user:
            log(False, LoginReason.NO_USER, None)
            writer.write(
                _fatal("28000", "no PostgreSQL user name specified in startup packet", "ProcessStartupPacket")
            )
            await writer.drain()
            return None
        try:
            role = await self._role_info(user)
        except Exception as exc:  # backend down: RDS would not answer either
            log(False, LoginReason.BACKEND_UNAVAILABLE, None, detail=type(exc).__name__)
            writer.write(
                _fatal("57P03", "the database system is not accepting connections", "ProcessStartupPacket")
            )
            await writer.drain()
            return None

        encryption = "no encryption" if self.backend.major_version >= 15 else "SSL off"
        if not tls and (role.iam or self.force_ssl):
            who = f'host "{host}", user "{user}", database "{database}", {encryption}'
            if role.iam:
                message, detail = (
                    f"pg_hba.conf rejects connection for {who}",
                    "IAM requires TLS (hostnossl reject)",
                )
            else:
                message, detail = f"no pg_hba.conf entry for {who}", "rds.force_ssl is on"
            log(False, LoginReason.NO_TLS, None, detail=detail)
            writer.write(_fatal("28000", message, "ClientAuthentication"))
            await writer.drain()
            return None

        if role.iam:
            writer.write(_auth(_AUTH_CLEARTEXT))
            await writer.drain()
            try:
                payload = await _read_password(reader)
            except _ClientGone:
                log(False, LoginReason.CLIENT_CLOSED, "iam")
                raise
            token = payload.rstrip(b"\0").decode("utf-8", "replace")
            verdict = sigv4.verify_token(
                token, user=user, host=self.endpoint, port=self.port, region=self.region,
                lookup=self.lookup, now=self.now(),
            )  # fmt: skip
            del token, payload
            log(
                verdict.ok, verdict.reason.value, "iam", access_key_id=verdict.access_key_id,
                principal_arn=verdict.principal_arn, detail=verdict.detail, signed_at=verdict.signed_at,
            )  # fmt: skip
            if not verdict.ok:
                writer.write(
                    _fatal("28000", f'PAM authentication failed for user "{user}"', "auth_failed", "326")
                )
                await writer.drain()
                return None
        else:
            try:
                ok, detail = await self._password_auth(reader, writer, user, role)
            except _ClientGone:
                log(False, LoginReason.CLIENT_CLOSED, "password")
                raise
            if not ok:
                reason = LoginReason.NOT_IAM_USER if role.exists else LoginReason.UNKNOWN_USER
                log(False, reason, "password", detail=detail)
                writer.write(
                    _fatal("28P01", f'password authentication failed for user "{user}"', "auth_failed", "326")
                )
                await writer.drain()
                return None
            log(True, LoginReason.PASSWORD_OK, "password", detail=detail)

        try:
            backend_reader, backend_writer = await asyncio.open_unix_connection(self.backend.socket_path)
        except OSError:
            writer.write(
                _fatal("57P03", "the database system is not accepting connections", "ProcessStartupPacket")
            )
            await writer.drain()
            return None
        backend_writer.write(startup)
        await backend_writer.drain()
        return backend_reader, backend_writer

    async def _role_info(self, user: str) -> _RoleInfo:
        sql = (
            "WITH RECURSIVE m(roleid) AS ("
            " SELECT roleid FROM pg_auth_members WHERE member = a.oid"
            " UNION SELECT am.roleid FROM pg_auth_members am JOIN m ON am.member = m.roleid) "
            "SELECT 1 FROM m JOIN pg_roles r ON r.oid = m.roleid WHERE r.rolname = 'rds_iam'"
        )
        query = (
            f"SELECT a.rolname = 'rds_iam' OR EXISTS ({sql}), a.rolpassword "
            f"FROM pg_authid a WHERE a.rolname = {quote_literal(user)}"
        )
        if self._admin is None:
            self._admin = _AdminConnection(self.backend.socket_path)
        rows = await self._admin.query(query)
        if not rows:
            return _RoleInfo(exists=False, iam=False, password=None)
        return _RoleInfo(exists=True, iam=rows[0][0] == "t", password=rows[0][1])

    async def _password_auth(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str, role: _RoleInfo
    ) -> tuple[bool, str]:
        stored = role.password
        if not role.exists:
            why = "no such role"
        elif stored is None:
            why = "user is not in rds_iam and has no password"
        else:
            why = "user is not in rds_iam and the password does not match"
        if stored is not None and stored.startswith("md5") and len(stored) == 35:
            salt = os.urandom(4)
            writer.write(_auth(_AUTH_MD5, salt))
            await writer.drain()
            answer = (await _read_password(reader)).rstrip(b"\0")
            expected = b"md5" + hashlib.md5(stored[3:].encode() + salt).hexdigest().encode()
            ok = hmac.compare_digest(answer, expected)
            return ok, "md5 password accepted" if ok else why
        verifier = _parse_scram(stored) if stored else None
        if stored is not None and verifier is None:
            why = "stored password is neither SCRAM-SHA-256 nor MD5"
        writer.write(_auth(_AUTH_SASL, b"SCRAM-SHA-256\0\0"))
        await writer.drain()
        first = await _read_password(reader)
        mechanism, _, rest = first.partition(b"\0")
        if mechanism != b"SCRAM-SHA-256" or len(rest) < 4:
            raise _Protocol("client selected an invalid SASL authentication mechanism")
        client_first = rest[4:].decode("utf-8", "replace")
        if client_first.startswith(("n,", "y,")):
            gs2_end = client_first.index(",", 2) + 1
        else:  # "p=..." asks for channel binding, which was not offered
            return False, "client asked for SCRAM channel binding, which is not offered"
        gs2_header, bare = client_first[:gs2_end], client_first[gs2_end:]
        attrs = dict(item.split("=", 1) for item in bare.split(",") if "=" in item)
        client_nonce = attrs.get("r", "")
        nonce = client_nonce + _b64(os.urandom(18))
        iterations, salt_b64, stored_key, server_key = verifier or (4096, _b64(os.urandom(16)), b"", b"")
        server_first = f"r={nonce},s={salt_b64},i={iterations}"
        writer.write(_auth(_AUTH_SASL_CONTINUE, server_first.encode()))
        await writer.drain()
        client_final = (await _read_password(reader)).decode("utf-8", "replace")
        without_proof, sep, proof_b64 = client_final.rpartition(",p=")
        final_attrs = dict(item.split("=", 1) for item in without_proof.split(",") if "=" in item)
        if not sep or final_attrs.get("r") != nonce or final_attrs.get("c") != _b64(gs2_header.encode()):
            return False, "malformed SCRAM exchange"
        if verifier is None:
            return False, why
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            return False, why
        client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=False))
        if len(proof) != 32 or not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            return False, why
        server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        writer.write(_auth(_AUTH_SASL_FINAL, f"v={_b64(server_signature)}".encode()))
        await writer.drain()
        return True, "SCRAM-SHA-256 password accepted"

    async def _forward_cancel(self, packet: bytes) -> None:
        """Pass a CancelRequest on: the key the client holds came from the real backend."""
        with contextlib.suppress(OSError):
            _, backend_writer = await asyncio.open_unix_connection(self.backend.socket_path)
            backend_writer.write(packet)
            await backend_writer.drain()
            await _close(backend_writer)


class _AdminConnection:
    """One superuser session to the backend, reused for every role lookup (queries serialised)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _read(self) -> tuple[bytes, bytes]:
        assert self._reader is not None
        header = await self._reader.readexactly(5)
        (length,) = struct.unpack("!I", header[1:])
        return header[:1], await self._reader.readexactly(length - 4)

    async def _until_ready(self) -> list[tuple[str | None, ...]]:
        rows: list[tuple[str | None, ...]] = []
        error: dict[str, str] | None = None
        while True:
            kind, payload = await self._read()
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(parse_data_row(payload))
            elif kind == b"E":
                error = error or parse_error_fields(payload)
            elif kind == b"Z":
                if error is not None:
                    raise PostgresError(error.get("C", "XX000"), error.get("M", "error"))
                return rows

    async def query(self, sql: str) -> list[tuple[str | None, ...]]:
        async with self._lock:
            for attempt in (1, 2):  # reconnect once if the session died (backend restart)
                try:
                    if self._writer is None:
                        self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
                        self._writer.write(encode_startup({"user": SUPERUSER, "database": "postgres"}))
                        await self._until_ready()
                    self._writer.write(encode_query(sql))
                    return await self._until_ready()
                except (OSError, asyncio.IncompleteReadError):
                    await self.close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.write(encode_message(b"X"))
            await _close(writer)


def _parse_scram(stored: str | None) -> tuple[int, str, bytes, bytes] | None:
    """``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` -> (iterations, salt b64, keys)."""
    if not stored or not stored.startswith("SCRAM-SHA-256$"):
        return None
    try:
        _, iter_salt, keys = stored.split("$")
        iterations, salt = iter_salt.split(":")
        stored_key, server_key = keys.split(":")
        return int(iterations), salt, base64.b64decode(stored_key), base64.b64decode(server_key)
    except ValueError:
        return None


async def _read_exact(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise _ClientGone() from exc


async def _read_password(reader: asyncio.StreamReader) -> bytes:
    """Read a PasswordMessage / SASL response ('p') and return its payload."""
    header = await _read_exact(reader, 5)
    kind, (length,) = header[:1], struct.unpack("!I", header[1:])
    if kind != b"p":
        raise _Protocol(f"expected password response, got message type {header[0]}")
    if not 4 <= length <= MAX_AUTH_LENGTH:
        raise _Protocol("invalid password packet size")
    return await _read_exact(reader, length - 4)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while True:
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    # Also swallows CancelledError: a handler cancelled by stop() while closing must still end
    # normally, or asyncio's stream callback logs the cancellation as an error.
    with contextlib.suppress(Exception, asyncio.CancelledError):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2)
