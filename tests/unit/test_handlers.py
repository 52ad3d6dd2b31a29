"""The kopf handlers' own logic: which watch events wake a resource's daemon, and the Secret cache the
reconciler reads (kopf's index overlaid with the operator's own writes). kopf itself is not run here."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from rdsiam.operator import handlers
from rdsiam.operator.handlers import SecretCache, _owner


def _secret(name: str, version: str, owner: str | None = "db", keys: tuple[str, ...] = ("password",)) -> dict[str, Any]:
    refs = [{"kind": "RdsIamCredential", "name": owner, "controller": True, "uid": "u1"}] if owner else []
    return {"metadata": {"name": name, "namespace": "shop", "resourceVersion": version, "ownerReferences": refs,
                         "labels": {"app.kubernetes.io/managed-by": "rdsiam"}}, "keys": list(keys)}


def test_the_cache_reads_the_index_and_prefers_the_operators_unechoed_write() -> None:
    cache = SecretCache()
    assert cache.get(("shop", "db")) is None  # no index yet, nothing written
    cache.index = {("shop", "db"): [_secret("db", "1")]}
    assert cache.get(("shop", "db"))["metadata"]["resourceVersion"] == "1"
    cache[("shop", "db")] = _secret("db", "2")  # the operator's write, not yet seen by the watch
    assert cache.get(("shop", "db"))["metadata"]["resourceVersion"] == "2"
    cache.seen(("shop", "db"))  # its watch event: the index has it
    assert cache.get(("shop", "db"))["metadata"]["resourceVersion"] == "1"  # (this fake index did not move)


def test_a_secret_dropped_from_the_cache_is_read_again() -> None:
    cache = SecretCache()
    cache.index = {("shop", "db"): [_secret("db", "1")]}
    cache.pop(("shop", "db"), None)  # a 409: someone wrote it meanwhile
    assert cache.get(("shop", "db"))["keys"] is None  # the reconciler reads it from the API server
    cache.seen(("shop", "db"))
    assert cache.get(("shop", "db"))["keys"] == ["password"]


def test_a_secret_belongs_to_its_controller_else_to_its_label() -> None:
    assert _owner(_secret("x", "1", owner="orders")["metadata"]) == "orders"
    assert _owner({"labels": {"rdsiam.io/credential": "billing"}}) == "billing"
    assert _owner({}) == ""


def _runtime() -> Any:
    runtime = handlers.Runtime.__new__(handlers.Runtime)
    runtime.secrets, runtime.wakers = SecretCache(), {("shop", "db"): asyncio.Event()}
    return runtime


@pytest.mark.parametrize(("event_type", "version", "wakes"), [
    (None, "1", False),  # the initial listing: the daemon reconciles anyway when it starts
    ("MODIFIED", "5", False),  # the echo of the operator's own write
    ("MODIFIED", "6", True),  # someone else changed it
    ("DELETED", "5", True),  # deleted: written again now
], ids=["listing", "own-echo", "foreign-edit", "deleted"])
async def test_secret_events_wake_the_owner_only_when_someone_else_acted(
    event_type: str | None, version: str, wakes: bool,
) -> None:
    runtime = _runtime()
    runtime.secrets[("shop", "db")] = _secret("db", "5")
    body = _secret("db", version)
    await handlers.secret_event(event={"type": event_type, "object": body}, body=kopf.Body(body), namespace="shop",
                          name="db", memo=kopf.Memo(runtime=runtime), managed_secrets={})
    assert runtime.wakers[("shop", "db")].is_set() is wakes
    assert ("shop", "db") not in runtime.secrets.own  # the index is current again


@pytest.mark.parametrize(("change", "wakes"), [
    ({}, False),  # a status write's echo
    ({"generation": 2}, True),  # the spec changed
    ({"annotations": {"rdsiam.io/refresh-requested-at": "2026-12-06T08:00:00Z"}}, True),  # kubectl annotate
    ({"annotations": {"team": "payments"}}, False),  # any other annotation
], ids=["status-echo", "new-generation", "refresh-requested", "other-annotation"])
async def test_resource_events_wake_the_daemon_for_a_new_generation_or_a_refresh_request(
    change: dict[str, Any], wakes: bool,
) -> None:
    runtime = _runtime()
    memo = kopf.Memo(runtime=runtime, seen=(1, None))
    meta = {"name": "db", "namespace": "shop", "generation": 1, **change}
    await handlers.credential_event(event={"type": "MODIFIED"}, body=kopf.Body({"metadata": meta}), namespace="shop",
                              name="db", memo=memo)
    assert runtime.wakers[("shop", "db")].is_set() is wakes


async def test_a_listing_after_the_first_makes_the_daemon_read_its_secret_again() -> None:
    """kopf lists again when a watch cannot resume (410 Gone); a Secret deleted meanwhile sent no event."""
    runtime = _runtime()
    memo = kopf.Memo(runtime=runtime, seen=(1, None))
    body = kopf.Body({"metadata": {"name": "db", "namespace": "shop", "generation": 1}})
    await handlers.credential_event(event={"type": None}, body=body, namespace="shop", name="db", memo=memo)
    assert not runtime.wakers[("shop", "db")].is_set() and not memo.get("verify")  # the first listing
    await handlers.credential_event(event={"type": None}, body=body, namespace="shop", name="db", memo=memo)
    assert runtime.wakers[("shop", "db")].is_set() and memo.verify
    runtime.wakers[("shop", "db")].clear()
    memo = kopf.Memo(runtime=runtime, seen=(1, None))  # a resource first seen by a watch event, not a listing
    await handlers.credential_event(event={"type": "ADDED"}, body=body, namespace="shop", name="db", memo=memo)
    await handlers.credential_event(event={"type": None}, body=body, namespace="shop", name="db", memo=memo)
    assert runtime.wakers[("shop", "db")].is_set() and memo.verify


async def test_the_echo_of_kopfs_finalizer_lets_a_new_resources_first_pass_go() -> None:
    """A status write before kopf's finalizer patch lands makes that patch (guarded by the resource's
    version) fail with 422 and kopf send it again: the first pass waits for the echo."""
    runtime = _runtime()
    memo = kopf.Memo(runtime=runtime, seen=(1, None), unheld=True, known=True)
    meta = {"name": "db", "namespace": "shop", "generation": 1}
    await handlers.credential_event(event={"type": "MODIFIED"}, body=kopf.Body({"metadata": meta}), namespace="shop",
                              name="db", memo=memo)
    assert not runtime.wakers[("shop", "db")].is_set()  # an event without the finalizer: keep waiting
    held = {**meta, "finalizers": [handlers.FINALIZER]}
    await handlers.credential_event(event={"type": "MODIFIED"}, body=kopf.Body({"metadata": held}), namespace="shop",
                              name="db", memo=memo)
    assert runtime.wakers[("shop", "db")].is_set() and not memo.unheld
