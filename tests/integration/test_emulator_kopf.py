"""kopf runs against the emulator: handlers run once, finalizer and status patches succeed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kopf
import pytest

from rdsiam.testing.kube import KubeEmulator
from rdsiam.testing.kube.example import EXAMPLE_CRD, GROUP, PLURAL, VERSION, example_object


def eventually(check: Callable[[], Any], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        emulator.apply_manifest(EXAMPLE_CRD)
        yield emulator


@pytest.fixture
def operator(emu: KubeEmulator) -> Iterator[dict[str, list[str]]]:
    """A tiny kopf operator in its own thread and event loop, recording its handler calls."""
    registry = kopf.OperatorRegistry()
    calls: dict[str, list[str]] = {"create": [], "delete": []}

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=emu.url, token=emu.token)

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(name: str, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        calls["create"].append(name)
        patch.status["secretName"] = f"{name}-db"
        kopf.info(body, reason="Created", message="first event")
        kopf.info(body, reason="Created", message="second event")

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def deleted(name: str, **_: Any) -> None:
        calls["delete"].append(name)

    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    settings.watching.server_timeout = 2  # reconnect often: exercises watch resumption
    settings.posting.level = 0
    stop, ready = threading.Event(), threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(registry=registry, settings=settings, clusterwide=True, stop_flag=stop, ready_flag=ready)
        )

    thread = threading.Thread(target=run, name="kopf", daemon=True)
    thread.start()
    assert ready.wait(15)
    yield calls
    stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive()


def test_kopf_handles_a_resource_once_and_its_patches_succeed(
    emu: KubeEmulator, operator: dict[str, list[str]]
) -> None:
    client = emu.client()
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
    client.create(path, example_object("orders"))

    handled = eventually(
        lambda: (
            (obj := client.get(f"{path}/orders")).get("status", {}).get("secretName")
            and obj["metadata"].get("finalizers")
            and obj
        )
    )
    assert handled["status"]["secretName"] == "orders-db"
    assert handled["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    assert "kopf.zalando.org/last-handled-configuration" in handled["metadata"]["annotations"]

    events = eventually(
        lambda: client.list("/api/v1/namespaces/default/events", fieldSelector="involvedObject.name=orders")["items"]
    )
    eventually(lambda: len(client.list("/api/v1/namespaces/default/events")["items"]) >= 2)
    assert events[0]["involvedObject"]["uid"] == handled["metadata"]["uid"]

    time.sleep(2.5)  # a watch reconnection (server timeout 2 s) must not re-run the handler
    assert operator["create"] == ["orders"]

    client.delete(f"{path}/orders")
    eventually(lambda: not client.exists(f"{path}/orders"))
    assert operator["delete"] == ["orders"]

    records = emu.requests.snapshot()
    kopf_calls = [r for r in records if r.user_agent.startswith("kopf")]
    assert not [r for r in kopf_calls if r.status is not None and r.status >= 400], kopf_calls
    json_patches = [r for r in kopf_calls if r.content_type == "application/json-patch+json"]
    assert len(json_patches) >= 2  # the finalizer was added and removed with `test` ops that passed
    assert all(r.status == 200 for r in json_patches)
    assert any(r.verb == "watch" and r.query.get("resourceVersion") for r in kopf_calls)
    client.close()
