"""Lease-based leader election (coordination.k8s.io/v1), for ``replicas > 1``.

Every replica watches and keeps its caches warm; only the holder of the Lease refreshes tokens.
A replica that stops renewing loses the Lease after ``lease_seconds``, and another takes over.
(kopf's own peering pauses kopf's watchers, not this scheduler, and freezes all replicas when
their priorities are equal, so the operator elects its leader itself.)
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from rdsiam.operator.kubeapi import ApiError

logger = logging.getLogger("rdsiam.leader")
UTC = datetime.UTC


def _now() -> str:
    return datetime.datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


class LeaderElector:
    def __init__(
        self, kube: Any, active: asyncio.Event, *, namespace: str, name: str, identity: str,
        lease_seconds: int = 15, renew_every: float = 5.0,
    ) -> None:
        self.kube, self.active = kube, active
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_every = lease_seconds, renew_every

    async def run(self) -> None:
        try:
            while True:
                try:
                    leading = await self._try()
                except ApiError as exc:
                    logger.warning("Lease %s/%s: %s", self.namespace, self.name, exc.status)
                    leading = False
                if leading and not self.active.is_set():
                    logger.info("Leading: this replica (%s) now refreshes tokens", self.identity)
                    self.active.set()
                elif not leading and self.active.is_set():
                    logger.info("No longer leading (%s)", self.identity)
                    self.active.clear()
                await asyncio.sleep(self.renew_every)
        finally:
            was_leading = self.active.is_set()
            self.active.clear()
            if was_leading:
                await self._release()

    async def _release(self) -> None:
        """On a graceful stop, hand the Lease over at once (as client-go's ReleaseOnCancel does)."""
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _now()}
            await self.kube.replace_lease(self.namespace, self.name, lease)
            logger.info("Released the Lease %s/%s", self.namespace, self.name)
        except Exception as exc:  # best effort: the Lease expires on its own
            logger.info("Could not release the Lease: %s", getattr(exc, "status", type(exc).__name__))

    async def _try(self) -> bool:
        lease = await self.kube.get_lease(self.namespace, self.name)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "renewTime": _now()}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": _now(), "leaseTransitions": 0}}
            try:
                await self.kube.create_lease(self.namespace, body)
                return True
            except ApiError as exc:
                if exc.status == 409:
                    return False
                raise
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        renewed = _parse(current.get("renewTime"))
        duration = current.get("leaseDurationSeconds") or self.lease_seconds
        expired = renewed is None or (datetime.datetime.now(UTC) - renewed).total_seconds() > duration
        if holder and holder != self.identity and not expired:
            return False
        new_spec = {**current, **spec}
        if holder != self.identity:
            new_spec["acquireTime"] = _now()
            new_spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            await self.kube.replace_lease(self.namespace, self.name, lease)  # resourceVersion guards races
            return True
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
