"""kopf handlers: translate kopf's events into reconciliations; no decisions here.

kopf watches RdsIamCredentials and the Secrets the operator manages, retries its own API calls,
logs in (in-cluster, any kubeconfig), and runs one daemon per resource. A daemon reconciles its
resource, then sleeps until the plan's next look or until kopf sees a change that matters (a new
generation, a refresh request, its Secret deleted or edited by someone else). The managed Secrets
are a kopf index, so no decision is taken before they are all listed. Daemons put kopf's finalizer
on each resource: kopf stops the daemon before the resource goes (and the garbage collector then
removes its Secret).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any, cast

import kopf

from rdsiam.operator.reconcile import (
    CREDENTIAL_LABEL,
    MANAGED_BY,
    MANAGER,
    REFRESH_ANN,
    Reconciler,
    _strip_data,
    backoff,
    json_copy,
    secret_name_of,
)
from rdsiam.operator.spec import GROUP, KIND, PLURAL, VERSION

logger = logging.getLogger("rdsiam.handlers")
FINALIZER = "rdsiam.io/finalizer"
FINALIZER_WAIT = 5.0  # seconds a new resource's first pass waits for kopf's finalizer at most
# A look is taken this long after the plan's time: a token capped by short-lived credentials is due at the
# instant the cached credentials go stale, and a look a few milliseconds early would sign with them again.
DUE_SLACK = 1.0
ECHO_WAIT = 30.0  # seconds the status the operator wrote stands in for a watch that has not shown it yet
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
Key = tuple[str, str]


@dataclasses.dataclass
class Config:
    """Operator settings from ``rdsiam run`` flags, handed to kopf as its memo."""

    concurrency: int = 16
    tenancy: Any = None
    metrics_port: int | None = None
    leader_election: bool = False
    lease_namespace: str | None = None
    lease_name: str = "rdsiam-operator"
    verify_timeout: float = 5.0
    verify_ca_file: str | None = None  # the RDS CA bundle, for a DSN's sslrootcert the operator cannot read
    rotation_events: bool = False


class SecretCache:
    """The managed Secrets as the reconciler reads them: kopf's index, overlaid with the operator's own
    writes until their watch event arrives (so a write is never read back as stale)."""

    def __init__(self) -> None:
        self.index: Any = None  # kopf.Index[(namespace, name), stripped Secret], set by the first handler
        self.own: dict[Key, dict[str, Any]] = {}

    def get(self, key: Key, default: Any = None) -> Any:
        if key in self.own:
            return self.own[key]
        store = self.index.get(key) if self.index is not None else None
        return next(iter(store), default) if store else default

    def __setitem__(self, key: Key, value: dict[str, Any]) -> None:
        self.own[key] = value

    def pop(self, key: Key, default: Any = None) -> Any:
        # Forgetting a Secret (a 409, a foreign one): the next read asks the API server.
        found = self.own.pop(key, default)
        self.own[key] = _UNKNOWN
        return found

    def seen(self, key: Key) -> None:
        """A watch event for the Secret: the index has it now."""
        self.own.pop(key, None)


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds each object's "essence" (a deep copy, a Secret's data included) on every watch event, for
    handlers that react to changes of it (on.create, on.update, on.field); the operator has none."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})


# A Secret whose cached state was dropped: ``keys`` None makes the reconciler read it.
_UNKNOWN: dict[str, Any] = {"metadata": {}, "keys": None}


@dataclasses.dataclass
class Runtime:
    """What the handlers share (kept in kopf's operator memo; no module-level state)."""

    config: Config
    reconciler: Reconciler
    kube: Any
    identities: Any
    secrets: SecretCache
    slots: asyncio.Semaphore
    active: asyncio.Event  # set while this replica acts (always, without leader election)
    wakers: dict[Key, asyncio.Event] = dataclasses.field(default_factory=dict)
    resources: dict[Key, Any] = dataclasses.field(default_factory=dict)  # live bodies, for metrics
    election: Any = None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    from rdsiam.operator import metrics
    from rdsiam.operator.aws import Identities
    from rdsiam.operator.kube import KubeClient
    from rdsiam.operator.verify import make_resolver, make_verifier

    config: Config = memo.get("config") or Config()
    # Events the operator posts go through kopf's queue (off the refresh path, retried); kopf's own log
    # lines are never posted as Events.
    settings.posting.level = logging.CRITICAL + 1
    settings.posting.reporting_component = "rdsiam"
    settings.posting.event_name_prefix = "rdsiam-"
    settings.persistence.finalizer = FINALIZER
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # HTTPS_PROXY / NO_PROXY, as the kubernetes client honours them; only when set: aiohttp then looks up
    # proxies (and ~/.netrc) in a thread for every request.
    settings.networking.trust_env = any(os.environ.get(v) for v in PROXY_VARIABLES)
    # Only the resources and the Secrets the handlers name are watched (no CRD or namespace scanning, and
    # no RBAC for it); of the Secrets, only the managed ones (a server-side label selector).
    settings.scanning.disabled = True
    settings.watching.label_selectors["", "v1", "secrets"] = f"{MANAGED_BY}={MANAGER}"

    kube = await asyncio.to_thread(KubeClient.from_environment, config.concurrency)
    identities = Identities(kube)
    secrets = SecretCache()
    reconciler = Reconciler(kube, identities, tenancy=config.tenancy, events=_post_event,
                            verifier=make_verifier(config.verify_timeout, config.verify_ca_file),
                            resolver=make_resolver(), rotation_events=config.rotation_events,
                            secret_cache=secrets)  # type: ignore[arg-type]
    reconciler.secrets_listed = True  # kopf lists the Secret index before any handler runs
    settings.posting.reporting_instance = reconciler.instance
    runtime = Runtime(config, reconciler, kube, identities, secrets, asyncio.Semaphore(config.concurrency),
                      asyncio.Event())
    metrics.instrument(runtime)
    if config.metrics_port is not None:
        metrics.serve(config.metrics_port)
    if config.leader_election:
        from rdsiam.operator.election import Election

        runtime.election = Election(runtime.active, namespace=config.lease_namespace or "default",
                                    name=config.lease_name, identity=reconciler.instance, kube=kube)
        runtime.election.start()
    else:
        runtime.active.set()
    memo.runtime = runtime
    asyncio.create_task(_warm_up(identities), name="rdsiam identity warm-up")
    logger.info("rdsiam operator started (concurrency %d, leader election %s)",
                config.concurrency, "on" if config.leader_election else "off")


def _post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """An Event about the resource, posted by kopf's queue (in order per resource, retried, off the
    refresh path)."""
    involved = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": body["metadata"]}
    kopf.event(involved, type=type_, reason=reason, message=message)  # type: ignore[arg-type]


async def _warm_up(identities: Any) -> None:
    """Build boto3's session and STS clients at start, off the first refresh's path. Credentials are
    still fetched only when a resource needs them."""
    try:
        await asyncio.to_thread(identities.prepare)
    except Exception as exc:  # the first refresh will report it with its reason
        logger.warning("Could not prepare the AWS clients: %s", type(exc).__name__)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    if runtime.election is not None:
        await runtime.election.stop()
    runtime.kube.close()


@kopf.on.probe(id="rdsiam")
async def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return {"ready": False}
    return {"ready": True, "leading": runtime.active.is_set(), "resources": len(runtime.resources)}


# ---- the managed Secrets ---------------------------------------------------------------------

# The handlers below are coroutines: kopf runs a plain function in a worker thread, a hop per watch event.
@kopf.index("", "v1", "secrets", labels={MANAGED_BY: MANAGER})
async def managed_secrets(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Key, dict[str, Any]]:
    """What the reconciler knows of each managed Secret: metadata and key names, never the data."""
    return {(str(namespace), name): _strip_data(dict(body))}


@kopf.on.event("", "v1", "secrets", labels={MANAGED_BY: MANAGER})
async def secret_event(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, memo: Any,
                 **kwargs: Any) -> None:
    """A Secret deleted, or changed by someone else: its resource reconciles now (its own writes echo
    back with the version it wrote, and change nothing)."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return
    runtime.secrets.index = kwargs["managed_secrets"]  # kopf passes each index by its name
    key = (str(namespace), name)
    mine = runtime.secrets.own.get(key)
    runtime.secrets.seen(key)
    version = body.get("metadata", {}).get("resourceVersion")
    if mine is not None and event.get("type") != "DELETED" and mine["metadata"].get("resourceVersion") == version:
        return  # the echo of the operator's own write
    owner = _owner(body.get("metadata", {}))
    waker = runtime.wakers.get((str(namespace), owner))
    if waker is not None and event.get("type") is not None:
        waker.set()


def _owner(meta: Any) -> str:
    """The RdsIamCredential a Secret belongs to: its controller reference, else the credential label."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == KIND:
            return str(ref.get("name") or "")
    return str((meta.get("labels") or {}).get(CREDENTIAL_LABEL) or "")


# ---- the resources ---------------------------------------------------------------------------

@kopf.on.event(GROUP, VERSION, PLURAL)
async def credential_event(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, memo: Any,
                     **_: Any) -> None:
    """A new generation or a refresh request wakes the resource's daemon (status echoes do not). So does
    a listing after the first (kopf lists again when a watch cannot resume): a Secret deleted while
    nothing was watched sent no event, so the daemon reads its Secret once."""
    runtime: Runtime | None = memo.get("runtime")
    waker = runtime.wakers.get((str(namespace), name)) if runtime is not None else None
    if event.get("type") is None and memo.get("known") and waker is not None:
        logger.debug("%s/%s: listed again; its Secret is read once", namespace, name)
        memo.verify = True
        waker.set()
    memo.known = True
    if waker is None:
        return
    meta = body.get("metadata", {})
    if memo.get("unheld") and FINALIZER in (meta.get("finalizers") or ()):
        memo.unheld = False  # kopf's finalizer is in: the daemon's first pass may write status now
        waker.set()
    seen = (meta.get("generation"), (meta.get("annotations") or {}).get(REFRESH_ANN))
    if memo.get("seen") != seen:
        memo.seen = seen
        waker.set()


# A reconciliation under way when kopf stops the daemon gets a few seconds to finish its writes.
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=5.0, cancellation_timeout=5.0)
async def keep_fresh(body: kopf.Body, namespace: str | None, name: str, memo: Any, stopped: kopf.DaemonStopped,
                     **kwargs: Any) -> None:
    """Reconcile, then wait for the next look (or a change); until kopf stops the daemon."""
    runtime: Runtime = memo.runtime
    runtime.secrets.index = kwargs["managed_secrets"]
    key = (str(namespace), name)
    wake = runtime.wakers[key] = asyncio.Event()
    runtime.resources[key] = body
    meta = body.get("metadata", {})
    memo.seen = (meta.get("generation"), (meta.get("annotations") or {}).get(REFRESH_ANN))
    loop = asyncio.get_running_loop()
    ours: tuple[float, dict[str, Any]] | None = None  # (loop time, the status last written) until its echo
    attempt = 0
    try:
        if FINALIZER not in (meta.get("finalizers") or ()):
            # kopf is adding its finalizer (a patch guarded by the resource's version): a status write
            # first would make that patch fail and kopf send it again. Its echo wakes this daemon.
            memo.unheld = True
            await _wait(wake, stopped, FINALIZER_WAIT)
            memo.unheld = False  # (a late echo must not start a second pass)
        while not stopped:
            if not runtime.active.is_set():
                await _wait(runtime.active, stopped, None)
                continue
            wake.clear()
            snapshot = _snapshot(body)
            if memo.get("verify"):  # after a listing: read the Secret from the API server, not the index
                memo.verify = False
                runtime.secrets.pop((key[0], secret_name_of(snapshot)), None)
            if ours is not None:
                # Until the watch brings back the status the operator wrote, that status is the truth
                # (only the operator writes status); after ECHO_WAIT, whatever the watch shows.
                if snapshot["status"] == ours[1] or loop.time() - ours[0] > ECHO_WAIT:
                    ours = None
                else:
                    snapshot["status"] = json_copy(ours[1])
            before = snapshot["status"]
            async with runtime.slots:
                if stopped:
                    break
                try:
                    outcome = await runtime.reconciler.reconcile(snapshot)
                except Exception as exc:  # a bug or a failure nobody foresaw: reported, never ends the daemon
                    logger.exception("Unexpected error reconciling %s/%s: %s", *key, type(exc).__name__)
                    outcome = await runtime.reconciler.internal_error(snapshot, exc)
            if snapshot["status"] is not before and snapshot["status"] != (body.get("status") or {}):
                ours = (loop.time(), snapshot["status"])  # written (the reconciler replaced its view)
            delay: float | None = None
            if outcome.ok:
                attempt = 0
                if outcome.next_due is not None:
                    delay = max(0.0, (outcome.next_due - runtime.reconciler.clock()).total_seconds()) + DUE_SLACK
            elif outcome.retry_after is not None:
                delay = backoff(attempt, outcome.retry_after)
                attempt += 1
            await _wait(wake, stopped, delay)
    finally:
        runtime.wakers.pop(key, None)
        runtime.resources.pop(key, None)
        runtime.reconciler.forget(*key)


def _snapshot(body: kopf.Body) -> dict[str, Any]:
    """The resource as one reconciliation sees it (kopf's body is a live view that changes under it)."""
    meta = body.get("metadata", {})
    return {
        "metadata": {k: json_copy(meta.get(k)) for k in (
            "name", "namespace", "uid", "generation", "resourceVersion", "annotations", "deletionTimestamp")},
        "spec": json_copy(dict(body.get("spec") or {})),
        "status": json_copy(dict(body.get("status") or {})),
    }


async def _wait(event: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float | None) -> None:
    """Until ``event`` is set, the daemon is stopped, or ``timeout`` seconds pass (None: no limit)."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

