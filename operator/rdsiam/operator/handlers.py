"""kopf activities: start and stop the operator's parts, serve the health probe.

kopf runs the process (login, signals, logging, the liveness endpoint). The credentials and their
Secrets are watched by two light informers (LIST + WATCH) feeding one scheduler: kopf's own
per-object event processing cost ~0.9 ms of CPU per watch event, about half of the operator's CPU
per refresh at scale (benchmarks/bench_scale.py; numbers in the README), and it cannot be paused
with our scheduler. kopf itself writes nothing to the API: every write is the operator's own,
counted and explained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
from typing import TYPE_CHECKING, Any

import kopf

from rdsiam.operator.spec import GROUP, PLURAL, VERSION

if TYPE_CHECKING:
    from rdsiam.operator.informer import Informer
    from rdsiam.operator.kubeapi import KubeApi
    from rdsiam.operator.scheduler import Scheduler

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=rdsiam"

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
    verify_ca_file: str | None = None  # the RDS CA bundle, for a DSN's sslrootcert the operator cannot read
    rotation_events: bool = False
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide


CONFIG = Config()
STATE: dict[str, Any] = {}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    from rdsiam.operator import metrics
    from rdsiam.operator.aws import Identities
    from rdsiam.operator.kubeapi import KubeApi
    from rdsiam.operator.reconcile import EventPoster, Reconciler
    from rdsiam.operator.scheduler import Scheduler
    from rdsiam.operator.verify import make_resolver, make_verifier

    # kopf posts handler log lines at INFO+ as Events; ours never carry secrets, but keep it quiet.
    settings.posting.enabled = False
    settings.persistence.finalizer = "rdsiam.io/finalizer"  # unused: no handler needs a finalizer
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # kopf serves no resources here: no need for its cluster-wide CRD/namespace observation (and RBAC).
    settings.scanning.disabled = True

    info = await _connection_info(settings)
    kube = KubeApi.from_connection_info(info)
    identities = Identities(kube)
    events = EventPoster(kube)
    reconciler = Reconciler(kube, identities, tenancy=CONFIG.tenancy, events=events,
                            verifier=make_verifier(CONFIG.verify_timeout, CONFIG.verify_ca_file),
                            resolver=make_resolver(), rotation_events=CONFIG.rotation_events)
    scheduler = Scheduler(reconciler, concurrency=CONFIG.concurrency, fetch=kube.get_credential)
    metrics.instrument(reconciler, identities, scheduler, kube)
    if CONFIG.metrics_port is not None:
        metrics.serve(CONFIG.metrics_port)
    informers = [i for ns in CONFIG.namespaces or (None,) for i in informers_for(kube, scheduler, ns)]

    async def mark_ready() -> None:
        await asyncio.gather(*(i.synced.wait() for i in informers))
        settle_heap()
        scheduler.ready.set()

    tasks = [asyncio.create_task(i.run(), name=f"rdsiam informer {i.name}") for i in informers]
    tasks += [asyncio.create_task(mark_ready(), name="rdsiam ready"),
              asyncio.create_task(scheduler.run(), name="rdsiam scheduler")]
    if CONFIG.leader_election:
        from rdsiam.operator.leader import LeaderElector

        elector = LeaderElector(kube, scheduler.active, namespace=CONFIG.lease_namespace or "default",
                                name=CONFIG.lease_name, identity=reconciler.instance)
        tasks.append(asyncio.create_task(elector.run(), name="rdsiam leader election"))
    else:
        scheduler.active.set()
    tasks.append(asyncio.create_task(_warm_up(identities), name="rdsiam identity warm-up"))
    STATE.update(kube=kube, scheduler=scheduler, reconciler=reconciler, identities=identities, tasks=tasks,
                 events=events)
    logger.info("rdsiam operator started (concurrency %d, leader election %s)",
                CONFIG.concurrency, "on" if CONFIG.leader_election else "off")


def informers_for(kube: KubeApi, scheduler: Scheduler, namespace: str | None) -> list[Informer]:
    """The two informers feeding ``scheduler`` for one namespace (None: cluster-wide): the resources, and
    the Secrets the operator manages."""
    from rdsiam.operator.informer import Informer
    from rdsiam.operator.reconcile import _strip_data

    scope = f"/namespaces/{namespace}" if namespace else ""
    # A listing replaces what the scheduler holds of this namespace only: with several watched namespaces,
    # each pair of informers lists its own.
    return [
        # The resources: listed whole, then watched as metadata only when the scheduler can read one whole
        # (the echo of every status write then comes back without the spec and status it already holds;
        # a new resource, a new generation or a refresh request is read before it is reconciled).
        Informer(kube, f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}", name=f"{PLURAL}{scope}",
                 on_list=functools.partial(scheduler.replace_credentials, namespace=namespace),
                 on_event=scheduler.credential_event, watch_metadata_only=scheduler.fetch is not None),
        # Secrets: listed whole in pages, each page reduced at once to which keys each Secret has (no
        # data is kept), then watched as metadata only: the echo of every write the operator makes comes
        # back without its tokens (a change by someone else is re-read).
        Informer(kube, f"/api/v1{scope}/secrets", label_selector=MANAGED_SELECTOR, name=f"secrets{scope}",
                 on_list=functools.partial(scheduler.replace_secrets, namespace=namespace),
                 on_event=scheduler.secret_event, watch_metadata_only=True, each=_strip_data),
    ]


def settle_heap() -> None:
    """Once the caches are listed: keep the cyclic garbage collector off what lives as long as the process.

    The modules, kopf, aiohttp, botocore's service models and the listed objects are ~160,000 objects;
    every full collection walked them all (~0.1 s at 3,000 resources) and a refresh burst triggered
    one or two, while JSON-decoded bodies are freed by reference counting anyway. Freezing them and
    collecting the young generation less often cut the collector's time in a 3,000-refresh burst from
    0.195 s to 0.037 s (benchmarks/, issue 8). Objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 10)


async def _warm_up(identities: Any) -> None:
    """Build boto3's session and STS clients at start (~0.5 s, no network call), off the first refresh's
    path. Credentials are still fetched only when a resource needs them."""
    try:
        await asyncio.to_thread(identities.prepare)
    except Exception as exc:  # the first refresh will report it with its reason
        logger.warning("Could not prepare the AWS clients: %s", type(exc).__name__)


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
    if "events" in STATE:
        await STATE["events"].close()
    if "kube" in STATE:
        await STATE["kube"].close()
    STATE.clear()


@kopf.on.probe(id="scheduler")
async def probe(**_: Any) -> dict[str, Any]:
    scheduler = STATE.get("scheduler")
    if scheduler is None:
        return {"ready": False}
    # kopf caches probe results for 10 s: wait briefly for the Secret cache rather than report
    # "not ready" for the next 10 s.
    try:
        await asyncio.wait_for(scheduler.ready.wait(), 5.0)
    except TimeoutError:
        pass
    return {"ready": scheduler.ready.is_set(), "leading": scheduler.active.is_set(),
            "resources": len(scheduler.bodies)}
