"""A minimal PostgreSQL login probe over the wire protocol (standard library only).

Used by the operator's ``spec.verify`` and by ``rdsiam check --connect``: TLS like libpq's
``sslmode``, cleartext password (what RDS IAM asks for), then ``SELECT 1``. It reports the
server's own error fields; it never includes the password in anything it returns or raises.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import struct
import time

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    ok: bool
    stage: str  # dns | connect | tls | auth | query | done
    kind: str  # "" on success; dns | timeout | refused | network | tls | no-tls | server
    code: str = ""  # SQLSTATE of a server error
    message: str = ""  # the server's (or the socket's) message, never the password
    tls: bool = False
    elapsed_ms: float = 0.0


async def probe(
    host: str, port: int, user: str, password: str, database: str, *, sslmode: str = "require",
    sslrootcert: str | None = None, hostaddr: str | None = None, timeout: float = 5.0,
) -> ProbeResult:
    start = time.perf_counter()
    tls_used = False

    def result(ok: bool, stage: str, kind: str, code: str = "", message: str = "") -> ProbeResult:
        return ProbeResult(ok, stage, kind, code, message.replace(password, "<token>") if password else message,
                           tls_used, (time.perf_counter() - start) * 1000)

    dial = hostaddr or host
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(dial, port), timeout)
    except socket.gaierror as exc:
        return result(False, "dns", "dns", message=f"cannot resolve {dial!r}: {exc.strerror}")
    except TimeoutError:
        return result(False, "connect", "timeout", message=f"no answer from {dial}:{port} within {timeout:g} s")
    except ConnectionRefusedError:
        return result(False, "connect", "refused", message=f"{dial}:{port} refused the connection")
    except OSError as exc:
        return result(False, "connect", "network", message=f"{dial}:{port}: {exc.strerror or exc}")
    try:
        if sslmode != "disable":
            writer.write(SSL_REQUEST)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readexactly(1), timeout)
            if answer == b"S":
                ctx = ssl.create_default_context(cafile=sslrootcert) if sslrootcert else ssl.create_default_context()
                ctx.check_hostname = sslmode == "verify-full"  # as libpq: only verify-full checks the name
                if sslmode not in ("verify-full", "verify-ca"):
                    ctx.verify_mode = ssl.CERT_NONE  # require/prefer: encrypted, not authenticated
                try:
                    await asyncio.wait_for(writer.start_tls(ctx, server_hostname=host), timeout)
                except ssl.SSLError as exc:
                    return result(False, "tls", "tls", message=f"TLS handshake failed: {exc.reason or exc}")
                tls_used = True
            elif sslmode in ("require", "verify-ca", "verify-full"):
                return result(False, "tls", "no-tls", message="server does not support TLS")
        params = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in (
            ("user", user), ("database", database), ("application_name", "rdsiam-verify")))
        body = struct.pack("!i", 196608) + params + b"\0"
        writer.write(struct.pack("!i", len(body) + 4) + body)
        await writer.drain()
        stage = "auth"
        while True:
            kind, payload = await asyncio.wait_for(_read(reader), timeout)
            if kind == b"E":
                fields = _fields(payload)
                return result(False, stage, "server", fields.get("C", ""), fields.get("M", ""))
            if kind == b"R":
                (code,) = struct.unpack("!i", payload[:4])
                if code == 3:  # cleartext password: what RDS IAM auth asks for
                    pw = password.encode() + b"\0"
                    writer.write(b"p" + struct.pack("!i", len(pw) + 4) + pw)
                    await writer.drain()
                elif code == 0:
                    continue
                else:
                    return result(False, "auth", "server", "", f"server asked for authentication method {code}, "
                                  "not the cleartext password IAM authentication uses")
            elif kind == b"Z":
                if stage == "query":
                    writer.write(b"X" + struct.pack("!i", 4))
                    await writer.drain()
                    return result(True, "done", "")
                stage = "query"
                q = b"SELECT 1\0"
                writer.write(b"Q" + struct.pack("!i", len(q) + 4) + q)
                await writer.drain()
    except TimeoutError:
        return result(False, "auth", "timeout", message=f"no answer within {timeout:g} s")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        return result(False, "auth", "network", message=f"connection closed: {type(exc).__name__}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], await reader.readexactly(length - 4)


def _fields(payload: bytes) -> dict[str, str]:
    out = {}
    for part in payload.split(b"\0"):
        if part:
            out[part[:1].decode()] = part[1:].decode(errors="replace")
    return out
