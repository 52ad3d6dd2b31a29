"""kopf handlers: translate watch events into scheduler calls, nothing more.

kopf watches ``RdsIamCredential`` objects (with resume, peering-free) and serves the health probe;
the scheduler decides and acts. ``on.event`` handlers store no progress on the objects, so kopf
itself writes nothing to the API: every write is the operator's own, counted and explained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import kopf

from rdsiam.operator.spec import GROUP, PLURAL, VERSION

logger = logging.getLogger("rdsiam.handlers")


@dataclasses.dataclass
class Config:
    """Operator settings from ``rdsiam run`` flags (set before kopf starts)."""

    concurrency: int = 16
    tenancy: Any = None
    metrics_port: int | None = None
    leader_election: bool = False
    lease_namespace: str | None = None
    lease_name: str = "rdsiam-operator"
    verify_timeout: float = 5.0


CONFIG = Config()
STATE: dict[str, Any] = {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    from rdsiam.operator import metrics
    from rdsiam.operator.aws import Identities
    from rdsiam.operator.kubeapi import KubeApi
    from rdsiam.operator.reconcile import Reconciler
    from rdsiam.operator.scheduler import Scheduler
    from rdsiam.operator.verify import make_resolver, make_verifier

    # kopf posts handler log lines at INFO+ as Events; ours never carry secrets, but keep it quiet.
    settings.posting.enabled = False
    settings.persistence.finalizer = "rdsiam.io/finalizer"  # unused: no handler needs a finalizer
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]

    info = await _connection_info(settings)
    kube = KubeApi.from_connection_info(info)
    identities = Identities(kube)
    reconciler = Reconciler(kube, identities, tenancy=CONFIG.tenancy,
                            verifier=make_verifier(CONFIG.verify_timeout), resolver=make_resolver())
    scheduler = Scheduler(reconciler, concurrency=CONFIG.concurrency)
    metrics.instrument(reconciler, identities, scheduler, kube)
    if CONFIG.metrics_port is not None:
        metrics.serve(CONFIG.metrics_port)
    tasks = [asyncio.create_task(scheduler.watch_secrets(kube), name="rdsiam secret watch"),
             asyncio.create_task(scheduler.run(), name="rdsiam scheduler")]
    if CONFIG.leader_election:
        from rdsiam.operator.leader import LeaderElector

        elector = LeaderElector(kube, scheduler.active, namespace=CONFIG.lease_namespace or "default",
                                name=CONFIG.lease_name, identity=reconciler.instance)
        tasks.append(asyncio.create_task(elector.run(), name="rdsiam leader election"))
    else:
        scheduler.active.set()
    STATE.update(kube=kube, scheduler=scheduler, reconciler=reconciler, identities=identities, tasks=tasks)
    logger.info("rdsiam operator started (concurrency %d, leader election %s)",
                CONFIG.concurrency, "on" if CONFIG.leader_election else "off")


async def _connection_info(settings: kopf.OperatorSettings) -> Any:
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.PermanentError("No Kubernetes credentials: neither in-cluster nor a kubeconfig.")
    return info


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    for task in STATE.get("tasks", []):
        task.cancel()
    await asyncio.gather(*STATE.get("tasks", []), return_exceptions=True)
    if "scheduler" in STATE:
        await STATE["scheduler"].drain()
    if "kube" in STATE:
        await STATE["kube"].close()
    STATE.clear()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def credential_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    scheduler = STATE.get("scheduler")
    if scheduler is None:
        return
    if event.get("type") == "DELETED":
        scheduler.forget(body.metadata.namespace, body.metadata.name)
    else:
        scheduler.observe(body)


@kopf.on.probe(id="scheduler")
def probe(**_: Any) -> dict[str, Any]:
    scheduler = STATE.get("scheduler")
    if scheduler is None:
        return {"ready": False}
    return {"ready": scheduler.ready.is_set(), "leading": scheduler.active.is_set(),
            "resources": len(scheduler.bodies)}
