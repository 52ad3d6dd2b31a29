"""An HTTP reverse proxy that injects AWS-shaped faults in front of the local STS server.

Point ``AWS_ENDPOINT_URL_STS`` at :attr:`FaultProxy.url` instead of the STS server itself, then
arrange faults for the next requests::

    proxy = FaultProxy(sts.url).start()
    proxy.throttle(2)                       # next 2 requests: 400 Throttling "Rate exceeded"
    proxy.fail(1, status=503)               # then one 503 ServiceUnavailable
    proxy.delay(5.0, n=1)                   # then one request held 5 s before it is forwarded
    proxy.deny("arn:aws:iam::*:role/blocked-*")   # AssumeRole* on matching roles: AccessDenied
    proxy.counts["AssumeRoleWithWebIdentity"]     # requests seen, faulted ones included
    proxy.clear()

Faults are consumed in this order for each request: deny (persistent until ``clear``), throttle,
fail, delay; a request consumes at most one of throttle/fail, and may also be delayed. Error bodies
are the STS query-protocol ``ErrorResponse`` documents AWS returns, so botocore's retry logic
(``Throttling`` is a throttling code, 5xx are transient) reacts as it does against AWS.

Known gaps: errors are per request, not per role or caller (except ``deny``); the ``AccessDenied``
message for ``AssumeRole`` names the caller only when an ``identify`` callable (e.g.
``lambda akid: (sts.lookup(akid) or ...).arn``) is given; requests are buffered, not streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

__all__ = ["FaultProxy", "ReverseProxy"]

_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
_IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade", "host", "content-length"}
)  # fmt: skip
_5XX = {
    500: ("Receiver", "InternalFailure", "The request processing has failed because of an unknown error."),
    503: ("Receiver", "ServiceUnavailable", "Service is unavailable. Please try again later."),
}
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/\d{8}/[^/]+/([^/]+)/aws4_request")


def error_xml(code: str, message: str, *, kind: str = "Sender", namespace: str = _STS_NS) -> bytes:
    """An AWS query-protocol error document (what STS and IAM return)."""
    from xml.sax.saxutils import escape

    return (
        f'<ErrorResponse xmlns="{namespace}">\n'
        f"  <Error>\n    <Type>{kind}</Type>\n    <Code>{escape(code)}</Code>\n"
        f"    <Message>{escape(message)}</Message>\n  </Error>\n"
        f"  <RequestId>{uuid.uuid4()}</RequestId>\n</ErrorResponse>\n"
    ).encode()


@dataclass
class _Faults:
    throttle: int = 0
    fail: int = 0
    fail_status: int = 503
    delay: int = 0
    delay_seconds: float = 0.0


class ReverseProxy:
    """An HTTP reverse proxy to ``target_url`` in a thread and event loop of its own, bound to ``host``
    (127.0.0.1) on a free port, counting requests; subclasses answer them (``_handle``)."""

    def __init__(self, target_url: str, *, host: str = "127.0.0.1") -> None:
        self.target_url = target_url.rstrip("/")
        self.host = host
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._injected: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._session: Any = None
        self._closing: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"rdsiam-{type(self).__name__}", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self._url is None:
            self.stop()
            raise RuntimeError(f"{type(self).__name__} failed to start: {self._error!r}")
        return self

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        self._closing = asyncio.Event()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://{host}:{port}"

    async def _shutdown(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(15)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
        if loop is not None and not loop.is_running():
            loop.close()
        self._loop = self._thread = self._runner = self._session = None

    def __enter__(self) -> Self:
        return self.start() if self._loop is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._url

    def clear(self) -> None:
        """Reset the counters."""
        with self._lock:
            self._counts.clear()
            self._injected.clear()

    @property
    def counts(self) -> Counter[str]:
        """Requests seen (faulted ones included); a copy."""
        with self._lock:
            return Counter(self._counts)

    @property
    def injected(self) -> Counter[str]:
        """Faults injected so far, by kind; a copy."""
        with self._lock:
            return Counter(self._injected)

    async def _handle(self, request: Any) -> Any:
        raise NotImplementedError


class FaultProxy(ReverseProxy):
    """Reverse proxy with STS fault injection (see the module docstring)."""

    def __init__(
        self, target_url: str, *, identify: Callable[[str], str | None] | None = None, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(target_url, host=host)
        self.identify = identify  # access key id -> caller ARN, for AccessDenied messages
        self._faults = _Faults()
        self._deny: list[str | re.Pattern[str]] = []

    # -- arranging faults -------------------------------------------------------------------------

    def throttle(self, n: int) -> None:
        """The next ``n`` requests get HTTP 400 ``Throttling`` / ``Rate exceeded``."""
        with self._lock:
            self._faults.throttle = n

    def fail(self, n: int, status: int = 503) -> None:
        """The next ``n`` requests get ``status`` (500/503 with AWS error XML; others a plain body)."""
        with self._lock:
            self._faults.fail, self._faults.fail_status = n, status

    def delay(self, seconds: float, n: int = 1) -> None:
        """Hold the next ``n`` requests ``seconds`` before forwarding them (client timeouts)."""
        with self._lock:
            self._faults.delay, self._faults.delay_seconds = n, seconds

    def deny(self, role_arn_pattern: str | re.Pattern[str]) -> None:
        """``AssumeRole*`` calls whose ``RoleArn`` matches (glob, or compiled regex) get 403
        ``AccessDenied`` until :meth:`clear`."""
        with self._lock:
            self._deny.append(role_arn_pattern)

    def clear(self) -> None:
        """Drop every arranged fault and reset the counters (``counts``: per ``Action``; ``injected``: by
        ``throttle``, ``fail``, ``delay``, ``deny``)."""
        with self._lock:
            self._faults = _Faults()
            self._deny.clear()
        super().clear()

    # -- the proxy --------------------------------------------------------------------------------

    def _denied(self, role_arn: str | None) -> bool:
        if not role_arn:
            return False
        for pattern in self._deny:
            if isinstance(pattern, re.Pattern):
                if pattern.search(role_arn):
                    return True
            elif fnmatch.fnmatchcase(role_arn, pattern):
                return True
        return False

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.read()
        params = dict(parse_qsl(request.query_string, keep_blank_values=True))
        if body and "x-www-form-urlencoded" in request.headers.get("Content-Type", ""):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action", "")
        match = _CREDENTIAL_RE.search(request.headers.get("Authorization", ""))
        service = match.group(2) if match else "sts"
        namespace = _IAM_NS if service == "iam" else _STS_NS
        with self._lock:
            self._counts[action or "(none)"] += 1
            fault: str | None = None
            if action.startswith("AssumeRole") and self._denied(params.get("RoleArn")):
                fault = "deny"
            elif self._faults.throttle > 0:
                self._faults.throttle -= 1
                fault = "throttle"
            elif self._faults.fail > 0:
                self._faults.fail -= 1
                fault = "fail"
            status = self._faults.fail_status
            delay = 0.0
            if self._faults.delay > 0:
                self._faults.delay -= 1
                delay = self._faults.delay_seconds
                self._injected["delay"] += 1
            if fault:
                self._injected[fault] += 1
        if delay:
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        xml = {"Content-Type": "text/xml"}
        if fault == "deny":
            role_arn = params.get("RoleArn", "")
            if action == "AssumeRole":
                caller = None
                if match and self.identify is not None:
                    caller = self.identify(match.group(1))
                caller = caller or "arn:aws:sts::000000000000:assumed-role/unknown/unknown"
                message = (
                    f"User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
                )
            else:
                message = f"Not authorized to perform sts:{action}"
            return web.Response(
                status=403, body=error_xml("AccessDenied", message, namespace=namespace), headers=xml
            )
        if fault == "throttle":
            return web.Response(
                status=400, body=error_xml("Throttling", "Rate exceeded", namespace=namespace), headers=xml
            )
        if fault == "fail":
            if status in _5XX:
                kind, code, message = _5XX[status]
                body_out = error_xml(code, message, kind=kind, namespace=namespace)
                return web.Response(status=status, body=body_out, headers=xml)
            return web.Response(status=status, text=f"{status} injected by rdsiam FaultProxy\n")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.target_url + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, body=payload, headers=out_headers)
