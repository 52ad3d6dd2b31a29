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
        self.secrets_listed = False
        self.fail, self.slow = fail or set(), slow or set()

    def forget(self, namespace: str, name: str) -> None:
        self.forgotten.append(name)

    async def reconcile(self, body: dict[str, Any]) -> rec.Outcome:
        name = body["metadata"]["name"]
        self.calls.append(name)
        if name in self.slow:
            await asyncio.sleep(0.5)
        if name in self.fail:
            return rec.Outcome(None, False, "Throttled", retry_after=0.05)
        return rec.Outcome(self.clock() + dt.timedelta(seconds=0.2), True, "TokenIssued", refreshed=True)


def body(name: str, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": name, "generation": generation}, "spec": {}}


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
