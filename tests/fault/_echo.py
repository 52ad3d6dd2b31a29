"""A hostile PostgreSQL endpoint: TLS, asks for a cleartext password, and puts the password it got into
its error message (whole, percent-encoded, or cut short as a server that truncates long strings would).
Whatever reports that error (``spec.verify``'s ``Connected`` condition, ``rdsiam check --connect``) must
not pass the token on."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

MODES = ("whole", "percent-encoded", "cut short")


def _self_signed(directory: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "echo")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "echo.crt", directory / "echo.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _recv(sock: socket.socket | ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


class EchoServer:
    """``EchoServer(mode)``: listens on 127.0.0.1 (``.port``); ``.received`` counts passwords received."""

    def __init__(self, mode: str) -> None:
        assert mode in MODES
        self.mode = mode
        self.received = 0
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # The key and certificate are needed on disk only while they are loaded.
        with tempfile.TemporaryDirectory(prefix="rdsiam-echo-") as directory:
            self._tls.load_cert_chain(*_self_signed(Path(directory)))
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name=f"echo-{mode}", daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)

    def echo(self, password: str) -> str:
        if self.mode == "whole":
            return password
        if self.mode == "percent-encoded":
            return quote(password, safe="")
        return password[: len(password) * 2 // 3]  # through X-Amz-Security-Token, short of the signature

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            length, code = struct.unpack("!ii", _recv(conn, 8))
            if code != 80877103:  # not an SSLRequest: refuse
                return
            conn.sendall(b"S")
            tls = self._tls.wrap_socket(conn, server_side=True)
            (length,) = struct.unpack("!i", _recv(tls, 4))
            _recv(tls, length - 4)  # the startup message
            tls.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            kind = _recv(tls, 1)
            (length,) = struct.unpack("!i", _recv(tls, 4))
            body = _recv(tls, length - 4)
            if kind != b"p":
                return
            self.received += 1
            password = body.rstrip(b"\0").decode()
            message = f"password authentication failed: the password \"{self.echo(password)}\" is not accepted"
            fields = b"".join(k + v.encode() + b"\0" for k, v in
                              ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28P01"), (b"M", message)))
            tls.sendall(b"E" + struct.pack("!i", len(fields) + 5) + fields + b"\0")
            tls.close()
        except (OSError, ConnectionError, struct.error, ssl.SSLError):
            pass
        finally:
            conn.close()
