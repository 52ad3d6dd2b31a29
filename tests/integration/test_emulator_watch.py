"""Watch streams behave like kube-apiserver's: resume, bookmarks, timeouts, 410 Gone, selectors."""

from __future__ import annotations

import http.client
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rdsiam.testing.kube import KubeClient, KubeEmulator


class Stream:
    """Reads a watch in a thread so a test can act while events arrive."""

    def __init__(self, client: KubeClient, path: str, **options: Any) -> None:
        self.events: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(client, path, options), daemon=True)
        self._thread.start()

    def _run(self, client: KubeClient, path: str, options: dict[str, Any]) -> None:
        try:
            for event in client.watch(path, **options):
                self.events.put(event)
        except (OSError, http.client.HTTPException) as exc:
            self.events.put(exc)
            return
        self.events.put(None)

    def next(self, timeout: float = 5) -> dict[str, Any] | BaseException | None:
        return self.events.get(timeout=timeout)

    def summary(self, count: int) -> list[tuple[str, str]]:
        result = []
        for _ in range(count):
            event = self.next()
            assert isinstance(event, dict), event
            result.append((event["type"], event["object"]["metadata"].get("name", "")))
        return result


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator(bookmark_interval=0.3) as emulator:
        yield emulator


@pytest.fixture
def client(emu: KubeEmulator) -> Iterator[KubeClient]:
    client = emu.client()
    yield client
    client.close()


@pytest.fixture
def ns(client: KubeClient) -> str:
    name = f"w-{uuid.uuid4().hex[:8]}"
    client.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def cms(ns: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def test_watch_without_resource_version_lists_then_streams(client: KubeClient, ns: str) -> None:
    client.create(cms(ns), {"metadata": {"name": "a"}})
    stream = Stream(client, cms(ns), timeout_seconds=10)
    assert stream.summary(1) == [("ADDED", "a")]
    client.patch(cms(ns, "a"), {"data": {"k": "v"}})
    client.create(cms(ns), {"metadata": {"name": "b"}})
    client.delete(cms(ns, "a"))
    assert stream.summary(3) == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_watch_resumes_from_a_resource_version(client: KubeClient, ns: str) -> None:
    first = client.create(cms(ns), {"metadata": {"name": "a"}})
    client.create(cms(ns), {"metadata": {"name": "b"}})
    client.patch(cms(ns, "a"), {"data": {"x": "1"}})
    events = list(client.watch(cms(ns), resource_version=first["metadata"]["resourceVersion"], timeout_seconds=1))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
    ]
    assert int(events[-1]["object"]["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])




def test_the_event_history_is_bounded() -> None:
    with KubeEmulator(history_limit=3) as small:
        client = small.client()
        start = client.create(cms("default"), {"metadata": {"name": "a"}})["metadata"]["resourceVersion"]
        for i in range(5):
            client.patch(cms("default", "a"), {"data": {"i": str(i)}})
        events = list(client.watch(cms("default"), resource_version=start, timeout_seconds=1))
        assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
        client.close()


def test_timeout_ends_the_stream_with_a_bookmark(client: KubeClient, ns: str) -> None:
    rv = client.create(cms(ns), {"metadata": {"name": "a"}})["metadata"]["resourceVersion"]
    began = time.monotonic()
    events = list(client.watch(cms(ns), resource_version=rv, timeout_seconds=1, allow_bookmarks=True))
    assert 0.9 <= time.monotonic() - began < 3
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks and bookmarks[-1] == events[-1]  # periodic ones (interval 0.3 s) and the final one
    assert bookmarks[-1]["object"]["kind"] == "ConfigMap"
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= int(rv)
    assert [e for e in events if e["type"] != "BOOKMARK"] == []
    # Without allowWatchBookmarks, no bookmarks at all.
    assert list(client.watch(cms(ns), resource_version=rv, timeout_seconds=1)) == []




def test_objects_entering_and_leaving_a_selector_are_added_and_deleted(client: KubeClient, ns: str) -> None:
    rv = client.create(cms(ns), {"metadata": {"name": "a", "labels": {"app": "x"}}})["metadata"]["resourceVersion"]
    stream = Stream(client, cms(ns), label_selector="app=y", resource_version=rv, timeout_seconds=10)
    client.patch(cms(ns, "a"), {"metadata": {"labels": {"app": "y"}}})  # enters the selector
    client.patch(cms(ns, "a"), {"data": {"k": "v"}})  # stays in it
    client.patch(cms(ns, "a"), {"metadata": {"labels": {"app": "z"}}})  # leaves it
    assert stream.summary(3) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]


def test_field_selected_watch_sees_only_its_object(client: KubeClient, ns: str) -> None:
    stream = Stream(client, cms(ns), field_selector="metadata.name=b", timeout_seconds=10)
    client.create(cms(ns), {"metadata": {"name": "a"}})
    client.create(cms(ns), {"metadata": {"name": "b"}})
    assert stream.summary(1) == [("ADDED", "b")]


def test_watch_streams_are_json(emu: KubeEmulator, ns: str) -> None:
    conn = http.client.HTTPConnection(emu.host, emu.port, timeout=5)
    conn.request("GET", cms(ns) + "?watch=true&timeoutSeconds=1")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "application/json"
    response.read()
    conn.close()




def test_ended_watches_close_cleanly_and_resume(emu: KubeEmulator, client: KubeClient, ns: str) -> None:
    stream = Stream(client, cms(ns), timeout_seconds=30)
    created = client.create(cms(ns), {"metadata": {"name": "a"}})
    assert stream.summary(1) == [("ADDED", "a")]
    assert emu.end_watches(rf"/namespaces/{ns}/configmaps") == 1
    assert stream.next() is None  # the stream ends like a timeout: no broken connection
    client.patch(f"{cms(ns)}/a", {"data": {"k": "v"}})
    resumed = Stream(client, cms(ns), resource_version=created["metadata"]["resourceVersion"], timeout_seconds=1)
    assert resumed.summary(1) == [("MODIFIED", "a")]
