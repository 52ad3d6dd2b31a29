"""The scheduler: one heap of due times, bounded workers, per-resource backoff, no head-of-line blocking."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from rdsiam.operator import reconcile as rec
from rdsiam.operator.scheduler import Scheduler


class FakeReconciler:
    def __init__(self, fail: set[str] | None = None, slow: set[str] | None = None) -> None:
        self.secrets: dict[Any, Any] = {}
        self.clock = lambda: dt.datetime.now(dt.UTC)
        self.calls: list[str] = []
        self.forgotten: list[str] = []
        self.prepared: list[str] = []
        self.secrets_listed = False
        self.fail, self.slow = fail or set(), slow or set()

    def forget(self, namespace: str, name: str) -> None:
        self.forgotten.append(name)

    def prepare(self, body: dict[str, Any]) -> None:
        self.prepared.append(body["metadata"]["name"])

    async def reconcile(self, body: dict[str, Any]) -> rec.Outcome:
        name = body["metadata"]["name"]
        self.calls.append(name)
        if name in self.slow:
            await asyncio.sleep(0.5)
        if name in self.fail:
            return rec.Outcome(None, False, "Throttled", retry_after=0.05)
        return rec.Outcome(self.clock() + dt.timedelta(seconds=0.2), True, "TokenIssued", refreshed=True)


def body(name: str, generation: int = 1, namespace: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": name, "generation": generation}, "spec": {}}


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    scheduler.ready.set()
    scheduler.active.set()
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await scheduler.drain()


async def test_due_times_drive_refreshes_and_status_only_events_do_not() -> None:
    fake = FakeReconciler()
    scheduler = Scheduler(fake, concurrency=4)  # type: ignore[arg-type]
    scheduler.observe(body("a"))
    scheduler.observe({**body("a"), "status": {"x": 1}})  # a status change: nothing new to do
    await run_for(scheduler, 0.5)
    # once at start, then every 0.2 s as the outcome says: about 3 times, never a burst
    assert 2 <= fake.calls.count("a") <= 4


async def test_spec_change_runs_again_at_once() -> None:
    fake = FakeReconciler()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    scheduler.observe(body("a"))
    await run_for(scheduler, 0.05)
    n = len(fake.calls)
    scheduler.observe(body("a", generation=2))
    await run_for(scheduler, 0.05)
    assert len(fake.calls) == n + 1


async def test_a_failing_and_a_slow_resource_do_not_delay_others() -> None:
    fake = FakeReconciler(fail={"bad"}, slow={"slow"})
    scheduler = Scheduler(fake, concurrency=2)  # type: ignore[arg-type]
    for name in ("bad", "slow", "good"):
        scheduler.observe(body(name))
    await run_for(scheduler, 1.6)
    assert fake.calls.count("good") >= 5
    # retried with exponential backoff (0.5-1 s, then 1-2 s): not hammered like "good" is
    assert 2 <= fake.calls.count("bad") <= 3
    assert scheduler.outcomes[("ns", "bad")].reason == "Throttled"


async def test_deleted_resources_are_forgotten() -> None:
    fake = FakeReconciler()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    scheduler.replace_credentials([body("a"), body("b")])
    scheduler.replace_credentials([body("b")])
    await run_for(scheduler, 0.05)
    assert "a" not in fake.calls and "b" in fake.calls
    assert fake.forgotten == ["a"]  # the reconciler drops what it kept about "a" too
    assert fake.prepared == ["a", "b", "b"]  # each listed spec parsed ahead of its first refresh


async def test_nothing_happens_before_the_caches_are_primed() -> None:
    fake = FakeReconciler()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    scheduler.observe(body("a"))
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.05)
    assert fake.calls == [] and not fake.secrets_listed
    scheduler.active.set()
    scheduler.ready.set()
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert fake.calls == ["a"]
    assert fake.secrets_listed  # the Secret cache is complete from now on: misses need no GET


async def test_a_spec_fixed_while_an_invalid_one_is_reconciled_is_reconciled_at_once() -> None:
    """The run in progress reads the old spec and ends with no next due time (InvalidSpec): the fix that
    arrived meanwhile must still be reconciled, now, and not wait for another change."""

    class Validating(FakeReconciler):
        async def reconcile(self, body: dict[str, Any]) -> rec.Outcome:
            self.calls.append(f"{body['metadata']['name']}@{body['metadata']['generation']}")
            await asyncio.sleep(0.2)  # writing status
            if body["metadata"]["generation"] == 1:
                return rec.Outcome(None, False, "InvalidSpec")  # permanent: not retried
            return rec.Outcome(self.clock() + dt.timedelta(hours=1), True, "TokenIssued", refreshed=True)

    fake = Validating()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    scheduler.ready.set()
    scheduler.active.set()
    task = asyncio.create_task(scheduler.run())
    scheduler.observe(body("a"))
    await asyncio.sleep(0.05)  # its reconcile is running
    scheduler.observe(body("a", generation=2))  # the fix
    await asyncio.sleep(0.5)
    assert fake.calls == ["a@1", "a@2"]
    assert scheduler.outcomes[("ns", "a")].reason == "TokenIssued"
    scheduler.observe(body("a", generation=3))  # and later changes too
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await scheduler.drain()
    assert fake.calls == ["a@1", "a@2", "a@3"]


async def test_each_namespace_listing_replaces_only_that_namespace() -> None:
    """One informer pair per watched namespace: a listing of one says nothing about the others."""
    fake = FakeReconciler()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    scheduler.replace_credentials([body("x", namespace="a")], namespace="a")
    scheduler.replace_credentials([body("y", namespace="b")], namespace="b")
    owned = {"labels": {rec.CREDENTIAL_LABEL: "x"},
             "ownerReferences": [{"kind": "RdsIamCredential", "name": "x", "uid": "x", "controller": True}]}
    scheduler.replace_secrets([{"metadata": {"name": "x", "namespace": "a", "resourceVersion": "1", **owned},
                                "data": {}}], namespace="a")
    scheduler.replace_secrets([{"metadata": {"name": "y", "namespace": "b", "resourceVersion": "1"}, "data": {}}],
                              namespace="b")
    assert set(scheduler.bodies) == {("a", "x"), ("b", "y")} and set(fake.secrets) == {("a", "x"), ("b", "y")}
    # A relist of "a" (after 410 Gone, say): "b" keeps its resources and its cached Secrets.
    scheduler.replace_credentials([body("x", namespace="a"), body("z", namespace="a")], namespace="a")
    scheduler.replace_secrets([], namespace="a")
    assert set(scheduler.bodies) == {("a", "x"), ("a", "z"), ("b", "y")} and fake.forgotten == []
    assert set(fake.secrets) == {("b", "y")}
    scheduler.replace_credentials([], namespace="a")
    assert set(scheduler.bodies) == {("b", "y")} and sorted(fake.forgotten) == ["x", "z"]
    # Cluster-wide (None): the listing is everything.
    scheduler.replace_credentials([], namespace=None)
    scheduler.replace_secrets([], namespace=None)
    assert scheduler.bodies == {} and fake.secrets == {}


async def test_a_relisted_secret_gone_meanwhile_is_written_again() -> None:
    fake = FakeReconciler()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    cred = {**body("x", namespace="a"), "spec": {"target": {"name": "x-secret"}}}
    scheduler.replace_credentials([cred], namespace="a")
    await run_for(scheduler, 0.05)
    fake.secrets[("a", "x-secret")] = {"metadata": {"name": "x-secret", "namespace": "a", "resourceVersion": "1",
                                                    "ownerReferences": [{"kind": "RdsIamCredential", "name": "x",
                                                                         "controller": True}]}, "keys": []}
    calls = len(fake.calls)
    scheduler.replace_secrets([], namespace="a")  # deleted while the watch was down
    await run_for(scheduler, 0.05)
    assert len(fake.calls) == calls + 1


async def test_a_resource_deleted_while_it_is_reconciled_leaves_nothing_behind() -> None:
    fake = FakeReconciler(fail={"a"}, slow={"a"})
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    scheduler.credential_event("ADDED", body("a"))
    scheduler.ready.set()
    scheduler.active.set()
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.1)
    scheduler.credential_event("DELETED", body("a"))
    await asyncio.sleep(0.6)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # forgotten at the DELETED event, and again once the run that outlived it is over (what that run noted
    # about the resource in the reconciler, say a failure's warning, goes too)
    assert fake.calls == ["a"] and fake.forgotten == ["a", "a"]
    assert (scheduler.bodies, scheduler.outcomes, scheduler._attempts, scheduler._deadline) == ({}, {}, {}, {})


async def test_a_resource_being_deleted_is_left_to_the_garbage_collector() -> None:
    """Foreground deletion: the resource stays (deletionTimestamp set) while its Secret is deleted; neither
    its due time nor that Secret's deletion may bring the Secret back."""
    fake = FakeReconciler()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    scheduler.observe(body("a"))
    await run_for(scheduler, 0.05)
    assert fake.calls == ["a"]  # next due in 0.2 s
    owner = [{"kind": "RdsIamCredential", "name": "a", "uid": "a", "controller": True}]
    fake.secrets[("ns", "a")] = {"metadata": {"resourceVersion": "1"}, "keys": []}
    terminating = body("a")
    terminating["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    scheduler.observe(terminating)
    scheduler.secret_event("DELETED", {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "2",
                                                    "ownerReferences": owner}})
    scheduler.schedule(("ns", "a"), 0.0)  # a heap entry that fires anyway is skipped
    await run_for(scheduler, 0.4)
    assert fake.calls == ["a"]


async def test_a_secret_is_mapped_to_its_resource_by_the_controller_reference() -> None:
    """The credential label's value is cut short for names over 63 characters; the owner reference is not."""
    fake = FakeReconciler()
    scheduler = Scheduler(fake)  # type: ignore[arg-type]
    long = "orders-" + "x" * 60 + ".db"
    scheduler.observe(body(long))
    scheduler.observe(body("labelled"))
    await run_for(scheduler, 0.05)
    fake.secrets[("ns", long)] = {"metadata": {"resourceVersion": "1"}, "keys": []}
    fake.secrets[("ns", "labelled")] = {"metadata": {"resourceVersion": "1"}, "keys": []}
    before = list(fake.calls)
    scheduler.secret_event("MODIFIED", {
        "kind": "PartialObjectMetadata",
        "metadata": {"name": long, "namespace": "ns", "resourceVersion": "2",
                     "labels": {rec.CREDENTIAL_LABEL: long[:52] + "-0123456789"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "other"},
                                         {"kind": "RdsIamCredential", "name": long, "controller": True}]}})
    # No owner reference (a Secret written before they were set): the label still says.
    scheduler.secret_event("DELETED", {"metadata": {"name": "labelled", "namespace": "ns", "resourceVersion": "2",
                                                    "labels": {rec.CREDENTIAL_LABEL: "labelled"}}})
    await run_for(scheduler, 0.05)
    assert sorted(fake.calls[len(before):]) == sorted([long, "labelled"])


# ---- resources watched as metadata only ----------------------------------------------------------


def partial(name: str, generation: int = 1, rv: str = "2", **meta: Any) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": generation,
                         "resourceVersion": rv, **meta}}


class FakeFetch:
    """Reads a resource whole, as KubeApi.get_credential does: what ``objects`` holds, or a failure."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.reads: list[str] = []
        self.failures = 0

    async def __call__(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(name)
        await asyncio.sleep(0.01)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("refused")
        return self.objects.get(name)


class SpecRecorder(FakeReconciler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, Any]] = []

    async def reconcile(self, body: dict[str, Any]) -> rec.Outcome:
        self.seen.append((body["metadata"]["generation"], body["spec"].get("host")))
        body["status"] = {"written": len(self.seen)}  # as Reconciler._patch_status keeps its view current
        return rec.Outcome(self.clock() + dt.timedelta(hours=1), True, "TokenIssued", refreshed=True)


async def test_the_echo_of_a_status_write_keeps_spec_and_status_and_reads_nothing() -> None:
    fake, fetch = SpecRecorder(), FakeFetch()
    scheduler = Scheduler(fake, fetch=fetch)  # type: ignore[arg-type]
    scheduler.replace_credentials([{**body("a"), "spec": {"host": "one"}}])
    await run_for(scheduler, 0.05)
    assert fake.seen == [(1, "one")]
    held = scheduler.bodies[("ns", "a")]
    scheduler.credential_event("MODIFIED", partial("a", rv="7"))  # the status write's echo
    await run_for(scheduler, 0.05)
    assert fake.seen == [(1, "one")] and fetch.reads == []
    assert scheduler.bodies[("ns", "a")] is held  # the status the reconciler wrote stays with it
    assert held["spec"] == {"host": "one"} and held["status"] == {"written": 1}
    assert held["metadata"]["resourceVersion"] == "7"


async def test_a_new_resource_or_a_new_generation_is_read_whole_before_it_is_reconciled() -> None:
    fake, fetch = SpecRecorder(), FakeFetch()
    scheduler = Scheduler(fake, fetch=fetch)  # type: ignore[arg-type]
    fetch.objects["a"] = {**body("a"), "spec": {"host": "one"}}
    scheduler.credential_event("ADDED", partial("a"))
    await run_for(scheduler, 0.1)
    assert fake.seen == [(1, "one")] and fetch.reads == ["a"]
    fetch.objects["a"] = {**body("a", generation=2), "spec": {"host": "two"}}
    scheduler.credential_event("MODIFIED", partial("a", generation=2, rv="9"))
    await run_for(scheduler, 0.1)
    assert fake.seen == [(1, "one"), (2, "two")] and fetch.reads == ["a", "a"]
    requested = {"annotations": {rec.REFRESH_ANN: "2026-01-01T00:00:00Z"}}
    scheduler.credential_event("MODIFIED", partial("a", generation=2, rv="10", **requested))
    await run_for(scheduler, 0.1)
    assert len(fake.seen) == 3 and fetch.reads == ["a", "a", "a"]


async def test_a_resource_that_cannot_be_read_is_retried_and_one_gone_is_not_reconciled() -> None:
    fake, fetch = SpecRecorder(), FakeFetch()
    scheduler = Scheduler(fake, fetch=fetch)  # type: ignore[arg-type]
    fetch.objects["a"] = {**body("a"), "spec": {"host": "one"}}
    fetch.failures = 2
    scheduler.credential_event("ADDED", partial("a"))
    await run_for(scheduler, 4.0)  # backoff 0.5-1 s, then 1-2 s
    assert fetch.reads == ["a", "a", "a"] and fake.seen == [(1, "one")]
    scheduler.credential_event("ADDED", partial("b"))  # deleted before it was read
    await run_for(scheduler, 0.1)
    assert fetch.reads[-1] == "b" and fake.seen == [(1, "one")]
