"""Lease-based leader election (coordination.k8s.io/v1), for ``replicas > 1``.

Every replica watches and keeps its caches warm; only the holder of the Lease refreshes tokens.
(kopf's own peering pauses kopf's watchers, not this scheduler, and freezes all replicas when
their priorities are equal, so the operator elects its leader itself.)

The timing follows client-go's leaderelection package:

* ``lease_seconds`` (client-go's LeaseDuration, 15 s): another replica takes the Lease once it has seen
  no change of it for that long, timed by its OWN clock from when it saw the last change (client-go's
  ``observedTime``), never by comparing the holder's ``renewTime`` with the local clock (clock skew).
* ``renew_deadline`` (client-go's RenewDeadline, 10 s; 2/3 of ``lease_seconds`` unless given): the leader
  stops acting (clears ``active``) once its last successful renewal is older than this, even while an API
  call still hangs, so it has stopped before anyone else can take over (``lease_seconds`` after seeing that
  renewal, which came after the leader sent it).
* ``renew_every``: how often the leader renews and a standby looks (5 s); after a failed renewal the
  leader tries again every ``retry_every`` (client-go's RetryPeriod, 2 s) until the deadline.

Every attempt is bounded by ``asyncio.wait_for``; no error ends the election loop (an unexpected one makes
the replica step down and back off), and a malformed Lease counts as held by someone else until it has
been seen unchanged for ``lease_seconds``, so it can neither stop the election nor make two leaders.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from typing import Any

from rdsiam.operator.kubeapi import ApiError

logger = logging.getLogger("rdsiam.leader")
UTC = datetime.UTC


def _now() -> str:
    return datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _count(value: Any) -> int:
    """A non-negative integer field of the Lease, or 0 when it is missing or malformed."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class LeaderElector:
    def __init__(
        self, kube: Any, active: asyncio.Event, *, namespace: str, name: str, identity: str,
        lease_seconds: int = 15, renew_every: float = 5.0, renew_deadline: float | None = None,
        retry_every: float | None = None,
    ) -> None:
        self.kube, self.active = kube, active
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_every = lease_seconds, renew_every
        self.renew_deadline = lease_seconds * 2 / 3 if renew_deadline is None else renew_deadline
        self.retry_every = min(renew_every, 2.0) if retry_every is None else retry_every
        if not (0 < self.renew_every < self.renew_deadline < self.lease_seconds
                and 0 < self.retry_every < self.renew_deadline):
            raise ValueError(
                "leader election needs 0 < renew_every, retry_every < renew_deadline < lease_seconds, "
                f"got {self.renew_every}, {self.retry_every}, {self.renew_deadline}, {self.lease_seconds}")
        self._renewed_at: float | None = None  # loop time the last successful renewal was sent
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._observed: str | None = None  # the Lease spec last seen (serialised) ...
        self._observed_at = 0.0  # ... and the loop time it was first seen: client-go's observedTime
        self._foreign_expiry: float | None = None  # loop time another holder's Lease runs out, as seen here
        self._failures = 0  # unexpected errors in a row

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(await self._step(loop))
        finally:
            was_leading = self.active.is_set()
            self._step_down(None)
            if was_leading:
                await self._release()

    async def _step(self, loop: asyncio.AbstractEventLoop) -> float:
        """One bounded attempt to acquire or renew the Lease; returns how long to wait before the next."""
        start = loop.time()
        deadline = self._deadline()
        if deadline is not None and start >= deadline:
            self._step_down("renew deadline passed")
            deadline = None
        budget = self.renew_deadline if deadline is None else deadline - start
        try:
            sent = await asyncio.wait_for(self._try(loop), budget)
        except TimeoutError:
            logger.warning("Lease %s: no answer within %.1f s", self.where, budget)
            return self._after_failure(loop)
        except ApiError as exc:
            logger.warning("Lease %s: %s", self.where, exc.status)
            return self._after_failure(loop)
        except Exception as exc:  # a bug or a malformed answer: never end the election for it
            self._failures += 1
            logger.error("Lease %s: unexpected %s (%s); not leading, trying again", self.where,
                         type(exc).__name__, exc, exc_info=self._failures == 1)
            self._step_down(f"unexpected {type(exc).__name__}")
            return float(min(self.renew_every * 2 ** min(self._failures - 1, 8),
                             max(self.renew_every, self.lease_seconds)))
        self._failures = 0
        now = loop.time()
        if sent is None:  # someone else holds the Lease
            self._step_down("the Lease is held by another replica")
            if self._foreign_expiry is not None:  # look again as soon as it runs out
                return min(self.renew_every, max(self._foreign_expiry - now, 0.0) + 0.01)
            return self.renew_every
        self._renewed(loop, sent)
        return min(self.renew_every, max((self._deadline() or now) - now, 0.0))

    def _after_failure(self, loop: asyncio.AbstractEventLoop) -> float:
        """After an API error or timeout: a leader keeps leading until its renew deadline and retries sooner."""
        now = loop.time()
        deadline = self._deadline()
        if deadline is None:
            return self.renew_every
        if now >= deadline:
            self._step_down("renew deadline passed")
            return 0.0
        return min(self.retry_every, deadline - now)

    def _deadline(self) -> float | None:
        """When this replica must have stopped acting (None: it is not leading)."""
        if not self.active.is_set() or self._renewed_at is None:
            return None
        return self._renewed_at + self.renew_deadline

    def _renewed(self, loop: asyncio.AbstractEventLoop, sent: float) -> None:
        self._renewed_at = sent
        deadline = sent + self.renew_deadline
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer = loop.call_at(deadline, self._on_deadline)
        if not self.active.is_set() and loop.time() < deadline:
            logger.info("Leading: this replica (%s) now refreshes tokens", self.identity)
            self.active.set()

    def _on_deadline(self) -> None:
        """The watchdog: fires at the renew deadline whatever the attempt in flight is doing."""
        self._deadline_timer = None
        self._step_down(f"the Lease was not renewed within {self.renew_deadline:g} s")

    def _step_down(self, why: str | None) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._renewed_at = None
        if self.active.is_set():
            if why is not None:
                logger.info("No longer leading (%s): %s", self.identity, why)
            self.active.clear()

    async def _release(self) -> None:
        """On a graceful stop, hand the Lease over at once (as client-go's ReleaseOnCancel does)."""
        try:
            await asyncio.wait_for(self._release_lease(), self.renew_deadline)
        except Exception as exc:  # best effort: the Lease expires on its own
            logger.info("Could not release the Lease: %s", getattr(exc, "status", type(exc).__name__))

    async def _release_lease(self) -> None:
        lease = await self.kube.get_lease(self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now()}
        await self.kube.replace_lease(self.namespace, self.name, lease)
        logger.info("Released the Lease %s", self.where)

    def _observe(self, spec: Any, now: float) -> None:
        """Note the Lease as seen at ``now``; the clock of another holder's Lease restarts when it changed."""
        seen = json.dumps(spec, sort_keys=True, default=repr)
        if seen != self._observed:
            self._observed, self._observed_at = seen, now

    async def _try(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """Acquire or renew; the loop time the winning write was sent, or None when another replica holds it."""
        lease = await self.kube.get_lease(self.namespace, self.name)
        now = loop.time()
        self._foreign_expiry = None
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                "renewTime": _now()}
        if lease is None:
            self._observe(None, now)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": _now(), "leaseTransitions": 0}}
            sent = loop.time()
            try:
                await self.kube.create_lease(self.namespace, body)
            except ApiError as exc:
                if exc.status == 409:
                    return None
                raise
            self._observe(body["spec"], loop.time())
            return sent
        current = lease.get("spec")
        self._observe(current, now)
        holder: Any
        if not isinstance(current, dict):  # malformed: held by nobody knows whom
            current, holder = {}, "<malformed Lease spec>"
        else:
            holder = current.get("holderIdentity")
        if holder not in (None, "", self.identity):
            # (missing, 0 or malformed: ours)
            duration = _count(current.get("leaseDurationSeconds")) or self.lease_seconds
            expiry = self._observed_at + duration
            if now < expiry:
                self._foreign_expiry = expiry
                return None
            logger.info("Lease %s held by %r unchanged for %s s: taking it over", self.where, holder, duration)
        version = (lease.get("metadata") or {}).get("resourceVersion")
        if not version:  # without it the update would not be guarded against a concurrent one
            raise ValueError("the Lease has no metadata.resourceVersion")
        new_spec = {**current, **spec}
        if holder != self.identity:
            new_spec["acquireTime"] = _now()
            new_spec["leaseTransitions"] = _count(current.get("leaseTransitions")) + 1
        lease["spec"] = new_spec
        sent = loop.time()
        try:
            await self.kube.replace_lease(self.namespace, self.name, lease)  # resourceVersion guards races
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        self._observe(new_spec, loop.time())
        return sent
