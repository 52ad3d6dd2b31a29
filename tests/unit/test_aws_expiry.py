"""Tokens capped by credentials that expire first: expires-at, and when the resource comes back.

The reconciler with fakes (from test_reconcile) and a real :class:`Identities` cache over a fake
fetch, on one fake clock: the scheduler's next visit finds new credentials, never a tight loop.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

from rdsiam.operator.aws import Credentials, Identities, IdentityKey
from rdsiam.operator.reconcile import Reconciler
from tests.unit.test_reconcile import HOST, T0, FakeIdentities, FakeKube, resource

ROLE = "arn:aws:iam::123456789012:role/shop-db"
SPEC = {"host": HOST, "username": "app_user", "database": "orders", "assumeRoleArn": ROLE}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def expires_at(kube: FakeKube) -> dt.datetime:
    text = base64.b64decode(kube.secrets[("shop", "orders")]["data"]["expires-at"]).decode()
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def short_lived(clock: Clock, lifetime: float) -> tuple[Identities, list[IdentityKey]]:
    calls: list[IdentityKey] = []

    async def fetch(key: IdentityKey) -> Credentials:
        calls.append(key)
        await asyncio.sleep(0)
        return Credentials(f"ASIA{len(calls):016d}", "s", "t", clock.now + dt.timedelta(seconds=lifetime),
                           "arn:aws:sts::123456789012:assumed-role/shop-db/rdsiam-shop")

    ids = Identities(clock=clock)
    ids._fetch = fetch  # type: ignore[method-assign]
    return ids, calls


async def test_token_capped_by_credentials_comes_back_at_half_its_life_with_new_credentials() -> None:
    clock, kube = Clock(), FakeKube()
    ids, calls = short_lived(clock, lifetime=60)
    rec = Reconciler(kube, ids, clock=clock)
    body = resource(SPEC)
    out = await rec.reconcile(body)
    assert out.ok and out.refreshed and out.next_due is not None
    assert expires_at(kube) == T0 + dt.timedelta(seconds=60)  # min(15 min, credential expiry)
    assert "credentials expire first" in kube.statuses[-1]["conditions"][0]["message"]
    # The expiry margin (3 min) has already passed, yet the next visit is not "now": half the life.
    assert out.next_due == T0 + dt.timedelta(seconds=30)
    # A spurious wakeup before then (a watch event, a restart) re-mints nothing.
    clock.now = T0 + dt.timedelta(seconds=10)
    writes = kube.calls.count("replace_secret")
    again = await rec.reconcile(body)
    assert not again.refreshed and again.next_due == T0 + dt.timedelta(seconds=30)
    assert kube.calls.count("replace_secret") == writes and len(calls) == 1
    # At the due time the cache hands out new credentials and the token gets their full (capped) life.
    clock.now = T0 + dt.timedelta(seconds=30)
    out = await rec.reconcile(body)
    assert out.refreshed and len(calls) == 2
    assert expires_at(kube) == clock.now + dt.timedelta(seconds=60)


async def test_the_refresh_interval_still_wins_when_it_is_sooner() -> None:
    clock, kube = Clock(), FakeKube()
    ids, _ = short_lived(clock, lifetime=900)  # AssumeRole's minimum DurationSeconds
    spec = {**SPEC, "refreshInterval": "1m"}
    out = await Reconciler(kube, ids, clock=clock).reconcile(resource(spec))
    assert out.next_due is not None and out.next_due <= T0 + dt.timedelta(seconds=60)


async def test_full_lifetime_credentials_leave_scheduling_alone() -> None:
    kube = FakeKube()
    out = await Reconciler(kube, FakeIdentities(expiry=T0 + dt.timedelta(hours=1)),  # type: ignore[arg-type]
                           clock=lambda: T0).reconcile(resource(SPEC))
    assert expires_at(kube) == T0 + dt.timedelta(minutes=15)
    assert out.next_due is not None and T0 + dt.timedelta(seconds=540) <= out.next_due <= T0 + dt.timedelta(
        seconds=600)
    assert "credentials expire first" not in kube.statuses[-1]["conditions"][0]["message"]
