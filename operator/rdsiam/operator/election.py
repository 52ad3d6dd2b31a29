"""Leader election for ``replicas > 1``: the ``kubernetes`` client's Lease-based ``leaderelection``.

Every replica runs kopf and keeps its daemons and Secret index warm; only the holder of the Lease
reconciles (``active`` is set). The client's elector is blocking and runs in a thread: it calls
back when this replica starts or stops leading, and is started again after it stops. A watchdog
on the event loop stops acting once the last renewal is older than the renew deadline, even while a
call of the elector hangs. On a graceful
stop the Lease is handed over at once (``holderIdentity`` emptied), as client-go's ReleaseOnCancel.
Timing is client-go's default: a Lease of 15 s, renewed within 10 s, tried every 2 s.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from typing import Any

logger = logging.getLogger("rdsiam.election")
LEASE_SECONDS, RENEW_DEADLINE, RETRY_PERIOD = 15, 10, 2


class Election:
    def __init__(self, active: asyncio.Event, *, namespace: str, name: str, identity: str, kube: Any) -> None:
        self.active, self.namespace, self.name, self.identity, self.kube = active, namespace, name, identity, kube
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rdsiam leader election", daemon=True)
        self._leading = False  # between the elector's started and stopped callbacks
        self._renewed_at = 0.0  # time.monotonic() of the last successful write of the Lease
        self._watchdog: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._thread.start()
        logger.info("Leader election: Lease %s/%s, this replica is %s", self.namespace, self.name, self.identity)
        self._watchdog = asyncio.create_task(self._watch(), name="rdsiam leader watchdog")

    async def _watch(self) -> None:
        while True:
            acting = self._leading and time.monotonic() - self._renewed_at < RENEW_DEADLINE
            if acting and not self.active.is_set():
                logger.info("Leading (Lease %s/%s): this replica (%s) now refreshes tokens", self.namespace,
                            self.name, self.identity)
                self.active.set()
            elif not acting and self.active.is_set():
                logger.info("No longer leading (Lease %s/%s): %s", self.namespace, self.name, self.identity)
                self.active.clear()
            await asyncio.sleep(0.25)

    def _run(self) -> None:
        from kubernetes import client
        from kubernetes.leaderelection import electionconfig, leaderelection
        from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

        stopping, election = self._stopping, self

        class Lock(LeaseLock):  # type: ignore[misc]  # (untyped base)
            """Writes nothing once stopping, so the elector cannot take back the Lease handed over."""

            def create(self, *args: Any, **kwargs: Any) -> bool:
                return election._wrote(not stopping.is_set() and bool(super().create(*args, **kwargs)))

            def update(self, *args: Any, **kwargs: Any) -> bool:
                return election._wrote(not stopping.is_set() and bool(super().update(*args, **kwargs)))

        while not stopping.is_set():
            lock = Lock(self.name, self.namespace, self.identity)
            lock.api_instance = client.CoordinationV1Api(self.kube.api)  # the operator's client, not a default one
            config = electionconfig.Config(
                lock, LEASE_SECONDS, RENEW_DEADLINE,
                RETRY_PERIOD, self._started, self._stopped)
            try:
                leaderelection.LeaderElection(config).run()
            except Exception as exc:  # an API failure the elector did not catch: not leading, try again
                logger.warning("Leader election: %s; trying again", type(exc).__name__)
                self._stopped()
            self._stopping.wait(RETRY_PERIOD)

    def _wrote(self, ok: bool) -> bool:
        if ok:
            self._renewed_at = time.monotonic()
        return ok

    def _started(self) -> None:
        self._leading = True

    def _stopped(self) -> None:
        self._leading = False

    async def stop(self) -> None:
        """Stop acting and hand the Lease over when this replica holds it (best effort)."""
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.cancel()
        was_leading = self.active.is_set()
        self.active.clear()
        if not was_leading:
            return
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"
        try:
            lease = await self.kube._call("GET", path, allow_404=True)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=now)
                await self.kube._call("PUT", path, lease)
                logger.info("Released the Lease %s/%s", self.namespace, self.name)
        except Exception as exc:  # the Lease expires on its own
            logger.info("Could not release the Lease: %s", getattr(exc, "status", type(exc).__name__))
