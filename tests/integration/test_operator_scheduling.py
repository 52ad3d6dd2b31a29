"""The operator's scheduler and informers against the Kubernetes API emulator and a real HTTP server:
several watched namespaces, a resource in foreground deletion, and a server that ends every watch at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from rdsiam.operator import informer
from rdsiam.operator.informer import Informer
from rdsiam.operator.kubeapi import KubeApi
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture


@pytest.fixture
def two_namespaces(kubectl: Kubectl, ns: str) -> Iterator[tuple[str, str]]:
    other = f"{ns}-b"
    kubectl.create_namespace(other)
    yield ns, other
    kubectl.run("delete", "namespace", other, "--wait=false", check=False)


def test_every_watched_namespace_is_served_and_a_relist_of_one_keeps_the_others(
    kube: Any, kubectl: Kubectl, rds: Any, two_namespaces: tuple[str, str], app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    a, b = two_namespaces
    kubectl.apply([credential(rds, "db", a), credential(rds, "db", b)])  # before the operator starts
    op = operator_factory(args=["--namespace", a, "--namespace", b])
    for space in (a, b):
        kubectl.wait(f"the Secret in {space}", lambda s=space: kubectl.secret_data("db", s), timeout=15)
        ready = kubectl.wait(f"Ready in {space}", lambda s=space: kubectl.condition("db", s))
        assert (ready["status"], ready["reason"]) == ("True", "TokenIssued")

    # Namespace a's informers re-list (their resume answered 410 Gone); b's keep watching.
    paths = [f"/apis/rdsiam.io/v1alpha1/namespaces/{a}/rdsiamcredentials", f"/api/v1/namespaces/{a}/secrets"]
    for path in paths:
        kube.inject(rf"^{path}$", method="GET", status=410, times=1, watch=True)
    assert kube.end_watches("|".join(rf"^{p}$" for p in paths)) == 2
    kubectl.wait("both of a's informers to re-list",
                 lambda: sum(f"/namespaces/{a}:" in line and "watch restarting (410)" in line
                             for line in op.log().splitlines()) >= 2)
    # b's resource is still scheduled and its Secret still known: deleted, it comes back at once.
    for space in (b, a):
        before = kubectl.get("secret", "db", space)
        assert before is not None
        kubectl.delete("secret", "db", space)
        kubectl.wait(f"the Secret in {space} back",
                     lambda s=space, uid=before["metadata"]["uid"]:
                     (x := kubectl.get("secret", "db", s)) is not None and x["metadata"]["uid"] != uid, timeout=10)


def test_a_resource_in_foreground_deletion_does_not_get_its_secret_back(
    kubectl: Kubectl, rds: Any, ns: str, app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    """``kubectl delete --cascade=foreground``: the resource stays, with deletionTimestamp set, until the
    garbage collector has deleted its Secret (here longer: another finalizer holds it). The operator must
    not write that Secret again meanwhile."""
    op = operator_factory(args=["--namespace", ns])
    held = credential(rds, "db", ns)
    held["metadata"]["finalizers"] = ["example.com/hold"]
    kubectl.apply(held)
    kubectl.wait("the Secret", lambda: kubectl.secret_data("db", ns))
    refreshes = op.log().count(f"Refreshing {ns}/db")
    try:
        kubectl.run("delete", "rdsiamcredential", "db", "-n", ns, "--cascade=foreground", "--wait=false")
        kubectl.wait("the Secret deleted by the garbage collector", lambda: kubectl.get("secret", "db", ns) is None)
        time.sleep(2.0)  # time for a refresh to bring it back, if there were one
        obj = kubectl.get("rdsiamcredential", "db", ns)
        assert obj is not None and obj["metadata"].get("deletionTimestamp")  # still being deleted
        assert kubectl.get("secret", "db", ns) is None
        assert op.log().count(f"Refreshing {ns}/db") == refreshes
    finally:
        kubectl.run("patch", "rdsiamcredential", "db", "-n", ns, "--type=merge",
                    "-p", '{"metadata": {"finalizers": null}}', check=False)


class ClosingServer:
    """An API server whose watches end (200, no events) after ``holds[i]`` seconds (0: at once)."""

    def __init__(self, holds: list[float]) -> None:
        self.holds = holds
        self.watches: list[float] = []  # when each watch request arrived
        self.lists = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/version":
            return web.json_response({"major": "1", "minor": "30"})
        if request.query.get("watch") != "true":
            self.lists += 1
            return web.json_response({"kind": "List", "metadata": {"resourceVersion": "5"}, "items": []})
        self.watches.append(time.monotonic())
        hold = self.holds[len(self.watches) - 1] if len(self.watches) <= len(self.holds) else 0.0
        resp = web.StreamResponse()
        await resp.prepare(request)
        if hold:
            await asyncio.sleep(hold)
            bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "6"}}}
            await resp.write(json.dumps(bookmark).encode() + b"\n")
        return resp


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[list[float]], Any]]:
    runners: list[web.AppRunner] = []
    clients: list[KubeApi] = []

    async def start(holds: list[float]) -> tuple[ClosingServer, KubeApi]:
        server = ClosingServer(holds)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        clients.append(KubeApi(f"http://127.0.0.1:{port}"))
        return server, clients[-1]

    yield start
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


async def run_informer(kube: KubeApi, seconds: float) -> Informer:
    inf = Informer(kube, "/api/v1/secrets", on_list=lambda items: None, on_event=lambda kind, obj: None)
    task = asyncio.create_task(inf.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return inf


async def test_watches_the_server_ends_at_once_are_resumed_with_backoff(closing: Any) -> None:
    server, kube = await closing([])
    inf = await run_informer(kube, 2.0)
    # At once, then after 0.25, 0.5 and 1 s: 4 requests in 2 s (thousands a second without the delay).
    assert 3 <= len(server.watches) <= 5, server.watches
    assert server.lists == inf.relists == 1  # the stream ended normally: resumed, not re-listed


async def test_a_long_lived_watch_resets_the_backoff(closing: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scaled so that "at once" (< 0.5 s) and "after a delay" (>= 1 s) stay apart on a busy machine.
    monkeypatch.setattr(informer, "SHORT_STREAM", 0.2)  # "long-lived" is 5 s; 0.2 s here
    monkeypatch.setattr(informer, "SHORT_STREAM_BACKOFF", 1.0)
    server, kube = await closing([0, 0, 0, 0.3, 0, 0])
    await run_informer(kube, 3.8)
    w = server.watches
    assert len(w) >= 6, w
    assert w[1] - w[0] < 0.5 and w[2] - w[1] >= 1.0  # the second short stream in a row waits
    assert w[4] - w[3] < 0.8  # after the long one (0.3 s): at once again, not after the next delay (4 s)
    assert w[5] - w[4] < 0.5
