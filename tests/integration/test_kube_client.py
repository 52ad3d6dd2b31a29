"""The operator's Kubernetes calls (``rdsiam.operator.kube``) against a small HTTP server on a real socket:
the client is configured from a kubeconfig the way ``rdsiam run`` configures it."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rdsiam.operator.kube import ApiError, KubeClient


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answers: list[tuple[int, dict[str, str], dict[str, Any]]], delay: float = 0.0) -> None:
        self.answers, self.delay = answers, delay
        self.seen: list[tuple[float, str, str, str | None]] = []  # (when, method, path, authorization)
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append((time.monotonic(), self.command, self.path, self.headers.get("Authorization")))
        time.sleep(self.server.delay)
        status, headers, body = self.server.answers.pop(0) if len(self.server.answers) > 1 else self.server.answers[0]
        raw = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(raw)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


def _serve(answers: list[tuple[int, dict[str, str], dict[str, Any]]], delay: float = 0.0) -> _Server:
    server = _Server(answers, delay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str, timeout: float = 10.0) -> KubeClient:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "from-kubeconfig"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    client = KubeClient.from_environment(workers=2)
    client.timeout = timeout
    return client


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in things:
        thing.shutdown() if isinstance(thing, _Server) else thing.close()


SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop"}}
CREATED = (201, {}, {"kind": "Secret", "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "7"},
                     "data": {"password": "c2VjcmV0"}})


async def test_a_429_is_retried_after_the_servers_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: list[Any],
) -> None:
    busy = (429, {"Retry-After": "1"}, {"kind": "Status", "code": 429, "reason": "TooManyRequests",
                                          "message": "please slow down"})
    server = _serve([busy, CREATED])
    client = _client(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_port}")
    closing += [server, client]
    written = await client.create_secret("shop", SECRET)
    assert written == {"metadata": {"name": "db", "namespace": "shop", "resourceVersion": "7"}}  # no data kept
    (first, *_, auth), (second, *_) = server.seen
    assert len(server.seen) == 2 and second - first >= 0.95  # waited as asked, then sent again
    assert auth == "Bearer from-kubeconfig"


async def test_a_server_that_keeps_answering_429_ends_in_an_api_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: list[Any],
) -> None:
    server = _serve([(429, {"Retry-After": "0"}, {"kind": "Status", "reason": "TooManyRequests", "message": "no"})])
    client = _client(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_port}")
    closing += [server, client]
    with pytest.raises(ApiError) as caught:
        await client.patch_status("shop", "db", {"expiresAt": "x"})
    assert (caught.value.status, caught.value.reason) == (429, "TooManyRequests")
    assert len(server.seen) == 6  # the first try and five retries
    assert client.writes == 1


async def test_no_server_and_a_silent_server_are_temporary_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: list[Any],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    client = _client(tmp_path, monkeypatch, f"http://127.0.0.1:{free}")
    closing.append(client)
    with pytest.raises(ApiError) as caught:
        await client.get_secret("shop", "db")
    assert caught.value.status == 503 and "could not reach the API server" in caught.value.message

    server = _serve([CREATED], delay=1.0)
    slow = _client(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_port}", timeout=0.3)
    closing += [server, slow]
    with pytest.raises(ApiError) as caught:
        await slow.get_secret("shop", "db")
    assert caught.value.status == 504 and "within 0.3 s" in caught.value.message


async def test_a_missing_object_is_none_and_other_errors_carry_the_servers_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: list[Any],
) -> None:
    server = _serve([(404, {}, {"kind": "Status", "reason": "NotFound", "message": "secrets \"db\" not found"}),
                     (403, {}, {"kind": "Status", "reason": "Forbidden", "message": "cannot create secrets"})])
    client = _client(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_port}")
    closing += [server, client]
    assert await client.get_secret("shop", "db") is None
    errors: list[tuple[str, int]] = []
    client.on_write_error = lambda path, status: errors.append((path, status))
    with pytest.raises(ApiError) as caught:
        await client.create_secret("shop", SECRET)
    assert (caught.value.status, caught.value.message) == (403, "cannot create secrets")
    assert errors == [("/api/v1/namespaces/shop/secrets", 403)]
