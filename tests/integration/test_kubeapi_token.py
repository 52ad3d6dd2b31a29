"""The in-cluster ServiceAccount token is projected by the kubelet and replaced before it expires: the
operator's client reads the file again every minute and at once after a 401, so a long-running operator
never keeps calling with a token the API server no longer accepts. Against a real HTTP server that accepts
only the current token."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rdsiam.operator import kubeapi
from rdsiam.operator.kubeapi import ApiError, KubeApi


class TokenServer:
    """Accepts only ``Bearer <current>``; records the token of every request."""

    def __init__(self) -> None:
        self.current = "t1"
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {self.current}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized",
                                      "message": "Unauthorized"}, status=401)
        if request.query.get("watch") == "true":
            resp = web.StreamResponse()
            await resp.prepare(request)
            event = {"type": "ADDED", "object": {"metadata": {"name": "x", "resourceVersion": "2"}}}
            await resp.write(json.dumps(event).encode() + b"\n")
            return resp
        return web.json_response({"kind": "Secret", "metadata": {"name": "x", "resourceVersion": "1"}})


@pytest.fixture
async def server() -> AsyncIterator[tuple[TokenServer, str]]:
    tokens = TokenServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", tokens.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield tokens, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_rotated_token_is_read_again_after_a_401_and_every_minute(
    server: tuple[TokenServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens, url = server
    token_file = tmp_path / "token"
    token_file.write_text("t1\n")
    kube = KubeApi(url, headers={"Authorization": "Bearer from-login"}, token_file=str(token_file))
    try:
        assert await kube.get_secret("ns", "x") is not None
        assert tokens.seen == ["Bearer t1"]  # the file's token, not the one kopf's login read once

        # The kubelet writes a new token and the server stops taking the old one: one 401, the file read
        # again, the same call repeated with the new token.
        token_file.write_text("t2\n")
        tokens.current = "t2"
        assert await kube.get_secret("ns", "x") is not None
        assert tokens.seen[1:] == ["Bearer t1", "Bearer t2"]

        # Without a 401 the file is read again once a minute has passed.
        token_file.write_text("t3\n")
        assert await kube.get_secret("ns", "x") is not None
        assert tokens.seen[-1] == "Bearer t2"  # within the minute: the token read last
        monkeypatch.setattr(kubeapi, "TOKEN_REREAD_SECONDS", 0.0)
        tokens.current = "t3"
        assert await kube.get_secret("ns", "x") is not None
        assert tokens.seen[-1] == "Bearer t3"
        monkeypatch.setattr(kubeapi, "TOKEN_REREAD_SECONDS", 60.0)

        # A watch refused with 401 reads the file at once: the informer's next watch gets through.
        token_file.write_text("t4\n")
        tokens.current = "t4"
        with pytest.raises(ApiError) as refused:
            async for _ in kube.watch_objects("/api/v1/namespaces/ns/secrets", "1"):
                pass
        assert refused.value.status == 401
        events: list[dict[str, Any]] = [e async for e in kube.watch_objects("/api/v1/namespaces/ns/secrets", "1")]
        assert events[0]["type"] == "ADDED" and tokens.seen[-1] == "Bearer t4"

        # A token the server never accepts stays a clear 401, after one re-read, not a loop.
        tokens.current = "not-in-the-file"
        with pytest.raises(ApiError) as denied:
            await kube.get_secret("ns", "x")
        assert denied.value.status == 401
    finally:
        await kube.close()


def test_in_the_cluster_the_token_file_is_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built from kopf's login: when its token is the projected ServiceAccount token's, the client keeps
    reading that file; a token from a kubeconfig is used as it is."""
    from types import SimpleNamespace

    token_file = tmp_path / "token"
    token_file.write_text("in-cluster\n")
    monkeypatch.setattr(kubeapi, "SERVICE_ACCOUNT_TOKEN", str(token_file))

    def info(token: str) -> Any:
        return SimpleNamespace(server="http://127.0.0.1:1", token=token,
                               as_http_headers=lambda: {"Authorization": f"Bearer {token}"})

    assert KubeApi.from_connection_info(info("in-cluster"))._token_file == str(token_file)
    assert KubeApi.from_connection_info(info("from-kubeconfig"))._token_file is None
