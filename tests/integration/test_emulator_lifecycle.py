"""Finalizers, ownerReference garbage collection and namespace deletion, as the real control plane does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdsiam.testing.kube import KubeApiError, KubeClient, KubeEmulator


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu: KubeEmulator) -> Iterator[KubeClient]:
    client = emu.client()
    yield client
    client.close()


@pytest.fixture
def ns(client: KubeClient) -> str:
    name = f"l-{uuid.uuid4().hex[:8]}"
    client.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def cms(ns: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{ns}/configmaps" + (f"/{name}" if name else "")


def secrets(ns: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{ns}/secrets" + (f"/{name}" if name else "")


def eventually(check: Callable[[], bool], timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }


def test_finalizers_keep_a_deleted_object_until_removed(client: KubeClient, ns: str) -> None:
    client.create(cms(ns), {"metadata": {"name": "a", "finalizers": ["example.com/hold"]}})
    pending = client.delete(cms(ns, "a"))
    assert pending["metadata"]["deletionTimestamp"] and pending["metadata"]["finalizers"] == ["example.com/hold"]
    assert client.get(cms(ns, "a"))["metadata"]["deletionTimestamp"] == pending["metadata"]["deletionTimestamp"]

    with pytest.raises(KubeApiError) as exc:  # no new finalizers once deleting
        client.patch(cms(ns, "a"), {"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}})
    assert exc.value.code == 422 and "no new finalizers can be added if the object is being deleted" in str(exc.value)

    client.patch(cms(ns, "a"), {"metadata": {"finalizers": None}})
    assert not client.exists(cms(ns, "a"))


def test_owned_objects_are_garbage_collected_in_the_background(client: KubeClient, ns: str) -> None:
    owner = client.create(cms(ns), {"metadata": {"name": "owner"}})
    client.create(secrets(ns), {"metadata": {"name": "dep", "ownerReferences": [owner_ref(owner)]}})
    client.create(
        secrets(ns),
        {
            "metadata": {
                "name": "held",
                "ownerReferences": [owner_ref(owner)],
                "finalizers": ["example.com/hold"],
            }
        },
    )
    other = client.create(cms(ns), {"metadata": {"name": "other"}})
    client.create(
        secrets(ns), {"metadata": {"name": "shared", "ownerReferences": [owner_ref(owner), owner_ref(other)]}}
    )

    client.delete(cms(ns, "owner"))
    eventually(lambda: not client.exists(secrets(ns, "dep")))
    held = client.get(secrets(ns, "held"))  # its finalizer is honoured: marked, not removed
    assert held["metadata"]["deletionTimestamp"]
    assert client.exists(secrets(ns, "shared"))  # another owner still exists
    client.patch(secrets(ns, "held"), {"metadata": {"finalizers": []}})
    assert not client.exists(secrets(ns, "held"))


def test_objects_whose_owner_does_not_exist_are_collected(client: KubeClient, ns: str) -> None:
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": str(uuid.uuid4())}
    client.create(secrets(ns), {"metadata": {"name": "orphan", "ownerReferences": [ghost]}})
    eventually(lambda: not client.exists(secrets(ns, "orphan")))



def test_foreground_deletion_removes_dependents_first(client: KubeClient, ns: str) -> None:
    owner = client.create(cms(ns), {"metadata": {"name": "owner"}})
    client.create(
        secrets(ns),
        {
            "metadata": {
                "name": "dep",
                "ownerReferences": [owner_ref(owner)],
                "finalizers": ["example.com/hold"],
            }
        },
    )
    marked = client.delete(cms(ns, "owner"), propagation_policy="Foreground")
    assert "foregroundDeletion" in marked["metadata"]["finalizers"]
    eventually(lambda: bool(client.get(secrets(ns, "dep"))["metadata"].get("deletionTimestamp")))
    assert client.exists(cms(ns, "owner"))  # waits for its dependent
    client.patch(secrets(ns, "dep"), {"metadata": {"finalizers": None}})
    eventually(lambda: not client.exists(cms(ns, "owner")))


def test_namespace_deletion_removes_content_then_the_namespace(client: KubeClient, ns: str) -> None:
    client.create(cms(ns), {"metadata": {"name": "plain"}})
    client.create(cms(ns), {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    terminating = client.delete(f"/api/v1/namespaces/{ns}")
    assert terminating["status"]["phase"] == "Terminating"
    eventually(lambda: not client.exists(cms(ns, "plain")))

    with pytest.raises(KubeApiError) as exc:
        client.create(cms(ns), {"metadata": {"name": "late"}})
    assert (exc.value.code, exc.value.reason) == (403, "Forbidden")
    assert exc.value.message == (
        f'configmaps "late" is forbidden: unable to create new content in namespace {ns} because it is being terminated'
    )

    assert client.exists(f"/api/v1/namespaces/{ns}")  # the held object keeps it
    client.patch(cms(ns, "held"), {"metadata": {"finalizers": None}})
    eventually(lambda: not client.exists(f"/api/v1/namespaces/{ns}"))


def test_new_namespaces_get_a_default_service_account(client: KubeClient, ns: str) -> None:
    eventually(lambda: client.exists(f"/api/v1/namespaces/{ns}/serviceaccounts/default"))


def test_namespace_fixture_of_the_session_emulator(kube: KubeEmulator, namespace: str) -> None:
    client = kube.client()
    assert client.get(f"/api/v1/namespaces/{namespace}")["status"]["phase"] == "Active"
    created = client.create(cms(namespace), {"metadata": {"name": "x"}})
    assert created["metadata"]["namespace"] == namespace
    client.close()
