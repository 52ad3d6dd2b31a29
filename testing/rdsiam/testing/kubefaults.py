"""A fault-injecting HTTP proxy in front of a real kube-apiserver (:class:`~rdsiam.testing.realapi.RealCluster`).

Point a client's kubeconfig at :attr:`KubeFaultProxy.url` (:meth:`KubeFaultProxy.write_kubeconfig`);
every request is forwarded to the API server with the client's own credentials (its ``Authorization``
header), and answers stream back chunk by chunk, so watches work as they do without the proxy::

    with KubeFaultProxy(cluster.url, cluster.ssl_context()) as proxy:
        kubeconfig = proxy.write_kubeconfig(tmp_path / "kubeconfig", cluster.token)
        fault = proxy.inject(r"/namespaces/ns/secrets/", method="PUT", status=409, times=2)
        slow = proxy.inject(r"/namespaces/ns/", latency=0.5, times=None, watch=False)
        proxy.drop_watches(r"/secrets$")   # abort open watch connections, as a network cut does
        proxy.end_watches(r"/secrets$")    # end them cleanly, as the server's timeoutSeconds does
        fault.hits, slow.remove(), proxy.counts["PUT /api/v1/namespaces/ns/secrets/db"]

An injected status is answered with a Kubernetes ``Status`` body; on a watch, 410 is sent the way
kube-apiserver sends it: HTTP 200 and one ``ERROR`` event holding a ``Status`` (reason ``Expired``).
Latency holds a request before it is forwarded; a request whose client gave up meanwhile is still
forwarded (the server got it), so a write can land after its client timed out, as it can for real.
When the API server cannot be reached (a restart) the answer is 503 with a ``Status`` body.

It serves plain HTTP on loopback: the token crosses only 127.0.0.1, and clients need no CA. The thread,
loop and lifecycle are :class:`~rdsiam.testing.faults.ReverseProxy`'s, shared with the STS fault proxy.
Nothing here logs a request's headers or body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import ssl
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from rdsiam.testing.faults import _HOP_BY_HOP, ReverseProxy

__all__ = ["KubeFault", "KubeFaultProxy", "status_body"]

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
_DROP, _END = "drop", "end"


def status_body(code: int, reason: str | None = None, message: str | None = None,
                retry_after: int | None = None) -> dict[str, Any]:
    """A ``Status`` object as kube-apiserver returns it for a failed request."""
    reason = reason or _REASONS.get(code, "InternalError")
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message or f"{reason} (injected by the rdsiam KubeFaultProxy)",
                            "reason": reason, "code": code}
    if retry_after is not None:
        body["details"] = {"retryAfterSeconds": retry_after}
    return body


@dataclasses.dataclass
class KubeFault:
    """One injected fault; ``hits`` counts the requests it took (its ``times`` bound them)."""

    path: re.Pattern[str]
    method: str | None = None
    status: int | None = None
    latency: float = 0.0
    times: int | None = 1
    watch: bool | None = None
    reason: str | None = None
    message: str | None = None
    retry_after: int | None = None
    hits: int = 0
    _owner: KubeFaultProxy | None = dataclasses.field(default=None, repr=False)

    def matches(self, method: str, path: str, query: str, is_watch: bool) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.watch is not None and self.watch != is_watch:
            return False
        return bool(self.path.search(path) or (query and self.path.search(f"{path}?{query}")))

    def remove(self) -> None:
        if self._owner is not None:
            self._owner.remove(self)


@dataclasses.dataclass(eq=False)
class _Watch:
    path: str
    signal: asyncio.Future[str]


class KubeFaultProxy(ReverseProxy):
    """Reverse proxy to ``target_url`` (kube-apiserver), trusting ``ssl_context``; see the module doc."""

    def __init__(self, target_url: str, ssl_context: ssl.SSLContext | None = None, *, host: str = "127.0.0.1") -> None:
        super().__init__(target_url, host=host)
        self.ssl_context = ssl_context
        self.kubeconfig = ""  # the last one write_kubeconfig wrote
        self._kube_faults: list[KubeFault] = []
        self._watches: set[_Watch] = set()  # the open watches; added and removed on the loop
        self._watch_lock = threading.Lock()

    # -- arranging faults -------------------------------------------------------------------------

    def inject(self, path: str = ".*", *, method: str | None = None, status: int | None = None,
               latency: float = 0.0, times: int | None = 1, watch: bool | None = None, reason: str | None = None,
               message: str | None = None, retry_after: int | None = None) -> KubeFault:
        """Answer matching requests with ``status`` (a ``Status`` body), hold them ``latency`` seconds
        first, or both. ``path``: a regex searched in the path (or ``path?query``); ``times=None``: until
        :meth:`KubeFault.remove`; ``watch``: only watch (True) or only other (False) requests."""
        if status is None and not latency:
            raise ValueError("a fault needs a status, a latency, or both")
        fault = KubeFault(re.compile(path), method.upper() if method else None, status, latency, times, watch,
                          reason, message, retry_after, _owner=self)
        with self._lock:
            self._kube_faults.append(fault)
        return fault

    def remove(self, fault: KubeFault) -> None:
        with self._lock:
            if fault in self._kube_faults:
                self._kube_faults.remove(fault)

    def clear(self) -> None:
        """Remove every fault and reset the counters."""
        with self._lock:
            self._kube_faults.clear()
        super().clear()

    @property
    def counts(self) -> Counter[str]:
        """Requests seen per ``"METHOD /path"`` (faulted ones included); a copy."""
        return super().counts

    def drop_watches(self, path: str | None = None) -> int:
        """Abort open watch connections whose path matches (a network cut); returns how many."""
        return self._signal(path, _DROP)

    def end_watches(self, path: str | None = None) -> int:
        """End open watch streams whose path matches the normal way (the client resumes from its last
        resourceVersion); returns how many."""
        return self._signal(path, _END)

    def open_watches(self, path: str | None = None) -> int:
        """How many watch connections whose path matches are open."""
        pattern = re.compile(path) if path is not None else None
        with self._watch_lock:
            return sum(1 for w in self._watches if pattern is None or pattern.search(w.path))

    def _signal(self, path: str | None, what: str) -> int:
        pattern = re.compile(path) if path is not None else None

        async def signal() -> int:
            with self._watch_lock:
                chosen = [w for w in self._watches if (pattern is None or pattern.search(w.path))
                          and not w.signal.done()]
            for watch in chosen:
                watch.signal.set_result(what)
            return len(chosen)

        assert self._loop is not None, "KubeFaultProxy is not started"
        return asyncio.run_coroutine_threadsafe(signal(), self._loop).result(10)

    def write_kubeconfig(self, path: Path | str, token: str) -> str:
        """A kubeconfig (mode 0600) that reaches the API server through this proxy with ``token``; its path
        is also kept in :attr:`kubeconfig`."""
        config = {"apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": "faults",
                  "clusters": [{"name": "faults", "cluster": {"server": self.url}}],
                  "users": [{"name": "faults", "user": {"token": token}}],
                  "contexts": [{"name": "faults", "context": {"cluster": "faults", "user": "faults"}}]}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle)
        self.kubeconfig = str(path)
        return self.kubeconfig

    # -- the proxy --------------------------------------------------------------------------------

    def _take(self, method: str, path: str, query: str, is_watch: bool) -> KubeFault | None:
        with self._lock:
            self._counts[f"{method} {path}"] += 1
            for fault in self._kube_faults:
                if fault.matches(method, path, query, is_watch):
                    fault.hits += 1
                    if fault.times is not None and fault.hits >= fault.times:
                        self._kube_faults.remove(fault)
                    self._injected["status" if fault.status else "latency"] += 1
                    return fault
        return None

    async def _handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        method, path, query = request.method, request.path, request.query_string
        is_watch = request.query.get("watch", "").lower() in ("1", "true")
        fault = self._take(method, path, query, is_watch)
        assert self._closing is not None and self._session is not None
        if fault is not None and fault.latency:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), fault.latency)
        if fault is not None and fault.status is not None:
            body = status_body(fault.status, fault.reason, fault.message, fault.retry_after)
            if is_watch and fault.status == 410:  # as kube-apiserver: 200, then an ERROR event
                return web.json_response({"type": "ERROR", "object": body})
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            return web.json_response(body, status=fault.status, headers=headers)
        payload = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            upstream = await self._session.request(
                method, self.target_url + request.path_qs, headers=headers, data=payload or None, ssl=self.ssl_context,
                allow_redirects=False, timeout=aiohttp.ClientTimeout(total=None, connect=5),
                skip_auto_headers=("Content-Type",))  # none sent: the API server reads JSON, not octet-stream
        except (aiohttp.ClientError, OSError) as exc:
            return web.json_response(status_body(503, "ServiceUnavailable", (
                f"the API server could not be reached ({type(exc).__name__})")), status=503)
        async with upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP})
            watch = _Watch(path, asyncio.get_running_loop().create_future()) if is_watch else None
            if watch is not None:
                with self._watch_lock:
                    self._watches.add(watch)
            try:
                try:
                    await response.prepare(request)
                except ConnectionError:
                    return response  # the client went away before the answer came
                ending = await self._relay(request, upstream, response, watch)
            finally:
                if watch is not None:
                    with self._watch_lock:
                        self._watches.discard(watch)
            if ending == _DROP:
                if request.transport is not None:
                    request.transport.abort()
                return response
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response

    async def _relay(self, request: Any, upstream: Any, response: Any, watch: _Watch | None) -> str:
        """Copy the answer as it comes; returns _END when it ended well, _DROP to cut the connection."""
        import aiohttp

        assert self._closing is not None
        closing = asyncio.ensure_future(self._closing.wait())
        read: asyncio.Future[bytes] | None = None
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(upstream.content.readany())
                waits: set[asyncio.Future[Any]] = {read, closing}
                if watch is not None:
                    waits.add(watch.signal)
                done, _ = await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    if watch is not None and watch.signal.done():
                        return watch.signal.result()
                    if closing.done() or request.transport is None or request.transport.is_closing():
                        return _DROP  # stopping, or the client went away: let go of the API server too
                    continue
                try:
                    chunk = read.result()
                except (aiohttp.ClientError, OSError):
                    return _DROP  # the API server went away mid-answer (a restart): so does this answer
                read = None
                if not chunk:
                    return _END
                try:
                    await response.write(chunk)
                except ConnectionError:
                    return _DROP
        finally:
            closing.cancel()
            if read is not None and not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
                    await read
