"""Helpers of test_realapi_login.py: kubeconfigs in the forms users have, an exec credential plugin, an
HTTP CONNECT proxy, and a front door that throttles Secret writes in front of kube-apiserver.

The two servers run on a private asyncio loop in a thread; ``stop()`` (or leaving the ``with`` block)
closes every connection and joins the thread. Nothing here prints or records a token.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def write_kubeconfig(path: Path, cluster: Mapping[str, Any], user: Mapping[str, Any]) -> str:
    """A one-context kubeconfig (YAML, mode 0600) with ``cluster`` and ``user``; returns its path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "realapi", "cluster": dict(cluster)}],
        "users": [{"name": "tester", "user": dict(user)}],
        "contexts": [{"name": "realapi", "context": {"cluster": "realapi", "user": "tester"}}],
        "current-context": "realapi",
        "preferences": {},
    }
    write_private(path, yaml.safe_dump(config, sort_keys=False))
    return str(path)


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def b64_file(path: str | Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


_EXEC_PLUGIN = '''
"""An exec credential plugin in the manner of `aws eks get-token`: prints an ExecCredential."""
import datetime, json, os, sys

api_version, token_file, runs = sys.argv[1:4]
with open(runs, "a") as log:
    log.write(f"{os.getppid()}\\n")
with open(token_file) as f:
    token = f.read().strip()
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=14)
json.dump({"apiVersion": api_version, "kind": "ExecCredential",
           "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}}, sys.stdout)
'''


def write_exec_plugin(directory: Path, token: str, api_version: str) -> tuple[dict[str, Any], Path]:
    """An executable plugin printing an ExecCredential with ``token`` and appending its parent's pid to a
    file at each run; returns the kubeconfig ``user`` entry and the path of that file."""
    token_file, runs, script = directory / "exec-token", directory / "exec-runs", directory / "get-token"
    write_private(token_file, token)
    runs.write_text("")
    script.write_text(f"#!{sys.executable}\n{_EXEC_PLUGIN}")
    script.chmod(0o755)
    user = {"exec": {"apiVersion": api_version, "command": str(script),
                     "args": [api_version, str(token_file), str(runs)],
                     "interactiveMode": "Never", "provideClusterInfo": False}}
    return user, runs


async def _relay(
    a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter, counts: list[int] | None = None,
) -> None:
    """Copy bytes a->b and b->a until either side ends, then close both. ``counts``: [a->b, b->a] bytes."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if counts is not None:
                counts[index] += len(data)

    tasks = [asyncio.create_task(pipe(a_reader, b_writer, 0)), asyncio.create_task(pipe(b_reader, a_writer, 1))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        a_writer.close()
        b_writer.close()


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(method, target, version, headers) of an HTTP request head."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    method, target, version = request_line.split(" ", 2)
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines if line)]
    return method, target, version, headers


class _LoopServer:
    """A TCP server on 127.0.0.1 (``port``) handling each connection in ``_handle`` on its own loop thread."""

    def __init__(self, server_ssl: ssl.SSLContext | None = None) -> None:
        self.port = 0
        self._server_ssl = server_ssl
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=type(self).__name__, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> _LoopServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._server_ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the peer went away or spoke no HTTP: nothing left to relay
        except asyncio.CancelledError:
            pass  # stop(): asyncio's server would log a cancelled connection task as an error
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0.05)  # let the closed transports' callbacks run before the loop closes
        await self._loop.shutdown_default_executor()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclasses.dataclass
class Tunnel:
    """One CONNECT through :class:`ConnectProxy`."""

    target: str  # host:port as the client asked for it
    user_agent: str  # the CONNECT request's User-Agent ("" when none)
    opened: float  # time.monotonic()
    closed: float | None = None
    counts: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # bytes client->server, server->client


class ConnectProxy(_LoopServer):
    """An HTTP proxy that serves CONNECT only (what clients use for https:// URLs) and relays the tunnel's
    bytes both ways. ``hosts`` maps names to addresses that only the proxy resolves (an internal name
    behind a corporate proxy); other names are resolved as usual. Every CONNECT is kept in ``tunnels``."""

    def __init__(self, hosts: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.hosts = dict(hosts or {})
        self.tunnels: list[Tunnel] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, _, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            return
        host, _, port = target.rpartition(":")
        agent = next((v for k, v in headers if k.lower() == "user-agent"), "")
        tunnel = Tunnel(target, agent, time.monotonic())
        self.tunnels.append(tunnel)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.hosts.get(host, host.strip("[]")), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _relay(reader, writer, up_reader, up_writer, tunnel.counts)
        finally:
            up_writer.close()
            tunnel.closed = time.monotonic()


@dataclasses.dataclass
class Exchange:
    """One request that reached :class:`ThrottlingFrontDoor`."""

    at: float  # time.monotonic() when its head arrived
    method: str
    path: str  # without the query
    status: int = 0  # the door's 429, or the API server's status (0: no answer yet)


_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
               "content-length", "expect"}
SECRET_WRITE = re.compile(r"/api/v1/namespaces/[^/]+/secrets(/[^/]+)?")


class ThrottlingFrontDoor(_LoopServer):
    """A TLS-terminating HTTP proxy in front of kube-apiserver, as a load balancer is: it presents
    ``certificate`` (the API server's own: clients trust the same CA and send their token) and forwards each
    request over a new TLS connection, watches (long-lived chunked answers) included. The first ``limit``
    writes of a Secret (POST, PUT or PATCH) are answered ``429 Too Many Requests`` with ``Retry-After`` and a
    Status body, as API Priority and Fairness does. Every request is kept in ``exchanges`` (method, path,
    status, time; no header or body).

    One request per connection: the forwarded request says ``Connection: close``, so the API server's
    answer ends with the connection and is relayed as it comes. Upgrades (exec, port-forward) are not
    supported.
    """

    def __init__(
        self, upstream: str, ssl_context: ssl.SSLContext, certificate: tuple[Path, Path], *, limit: int = 3,
        retry_after: int = 2,
    ) -> None:
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(*certificate)
        super().__init__(server_ssl)
        host, _, port = upstream.removeprefix("https://").rpartition(":")
        self._upstream = (host, int(port))
        self._ssl = ssl_context
        self.limit = limit
        self.retry_after = retry_after
        self.exchanges: list[Exchange] = []
        self._throttled = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _too_many_requests(self) -> bytes:
        body = json.dumps({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
            "details": {"retryAfterSeconds": self.retry_after}, "code": 429,
        }).encode()
        return (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                b"Retry-After: %d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (self.retry_after, len(body), body))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method, target, version, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        exchange = Exchange(time.monotonic(), method, target.partition("?")[0])
        self.exchanges.append(exchange)
        lower = {k.lower(): v for k, v in headers}
        if lower.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await _read_body(reader, lower)
        if method in ("POST", "PUT", "PATCH") and SECRET_WRITE.fullmatch(exchange.path) \
                and self._throttled < self.limit:
            self._throttled += 1
            exchange.status = 429
            writer.write(self._too_many_requests())
            await writer.drain()
            return
        head = [f"{method} {target} {version}"]
        head += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        head.append("Connection: close")
        host, port = self._upstream
        up_reader, up_writer = await asyncio.open_connection(host, port, ssl=self._ssl)
        try:
            up_writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await up_writer.drain()
            status_line = await up_reader.readuntil(b"\r\n")
            exchange.status = int(status_line.split(b" ", 2)[1])
            writer.write(status_line)
            await _relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    """A request's body, by Content-Length or chunked."""
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return await reader.readexactly(int(headers.get("content-length", "0")))
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return b"".join(chunks)
