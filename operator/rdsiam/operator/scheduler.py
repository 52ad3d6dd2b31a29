"""One scheduler for all credentials: a priority queue of due times and a bounded worker pool.

kopf's per-resource timers cost one asyncio task each and wake every resource on its own; here
every resource is one heap entry, and a refresh happens only when ``policy.decide`` says it is due
(interval, expiry margin, spec change, Secret gone). One resource at a time per key; a failing
resource backs off on its own and never delays the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rdsiam.operator import reconcile as rec
from rdsiam.operator.spec import KIND

logger = logging.getLogger("rdsiam.scheduler")
UTC = datetime.UTC
Key = tuple[str, str]
Fetch = Callable[[str, str], Awaitable[dict[str, Any] | None]]
_META = ("name", "namespace", "uid", "generation", "resourceVersion", "annotations", "deletionTimestamp")


def _trim(body: dict[str, Any]) -> dict[str, Any]:
    """What reconciliation needs of a watched object (freshly decoded JSON, owned by nobody else)."""
    meta = body.get("metadata", {})
    return {
        "metadata": {k: meta.get(k) for k in _META},
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }


class Scheduler:
    def __init__(
        self, reconciler: rec.Reconciler, *, concurrency: int = 16,
        clock: Callable[[], datetime.datetime] | None = None, fetch: Fetch | None = None,
    ) -> None:
        self.reconciler = reconciler
        # Reads a resource whole: given, its watch carries metadata only (see observe_metadata).
        self.fetch = fetch
        self._stale: set[Key] = set()  # known by metadata only since it changed: read before reconciling
        self.clock = clock or reconciler.clock
        self.concurrency = concurrency
        self.bodies: dict[Key, dict[str, Any]] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._deadline: dict[Key, float] = {}
        self._seq = itertools.count()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._attempts: dict[Key, int] = {}
        self._wake = asyncio.Event()
        self.active = asyncio.Event()  # set while this replica leads (always, without HA)
        self.ready = asyncio.Event()  # set once both informers have listed (no decisions on a cold cache)
        self._tasks: set[asyncio.Task[None]] = set()
        self.outcomes: dict[Key, rec.Outcome] = {}

    # ---- inputs -------------------------------------------------------------------------------

    def observe(self, body: dict[str, Any]) -> None:
        """A watch event for a resource (kopf on.event). Schedules work only when it matters."""
        trimmed = _trim(body)
        meta = trimmed["metadata"]
        key = (meta["namespace"], meta["name"])
        old = self.bodies.get(key)
        self.bodies[key] = trimmed
        self._stale.discard(key)
        if meta.get("deletionTimestamp"):
            self._deadline.pop(key, None)  # being deleted: nothing more to do (its heap entry is skipped)
            return
        if old is None or _changed(old, trimmed):
            self._attempts.pop(key, None)
            self.schedule(key, 0.0)

    def observe_metadata(self, metadata: dict[str, Any]) -> None:
        """A watch event that carries only the resource's metadata (``PartialObjectMetadata``): the echo of
        each status write comes back without the spec and status the operator already holds. Those are
        kept (the operator's own status writes update them in place); a new resource, a new generation or
        a refresh request is read whole before it is reconciled."""
        meta = {k: metadata.get(k) for k in _META}
        key = (str(meta["namespace"]), str(meta["name"]))
        old = self.bodies.get(key)
        changed = old is None or _changed(old, {"metadata": meta})
        if old is None:
            self.bodies[key] = {"metadata": meta, "spec": {}, "status": {}}
        else:
            old["metadata"] = meta  # a new dict: a reconciliation in progress keeps reading the one it began with
        if meta.get("deletionTimestamp"):
            self._deadline.pop(key, None)
            return
        if changed:
            self._stale.add(key)
            self._attempts.pop(key, None)
            self.schedule(key, 0.0)

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        self.bodies.pop(key, None)
        self._stale.discard(key)
        self._deadline.pop(key, None)
        self._attempts.pop(key, None)
        self.outcomes.pop(key, None)
        self.reconciler.forget(namespace, name)

    def secret_event(self, kind: str, secret: dict[str, Any]) -> None:
        """Keep the Secret cache current. A deleted Secret is written again now; a change someone else made
        is read back at once, and a Secret missing a key is rewritten then, while other edits (a label, a
        value) wait for the next refresh."""
        meta = secret.get("metadata", {})
        skey = (meta.get("namespace"), meta.get("name"))
        cache = self.reconciler.secrets
        known = cache.get(skey)
        if known is not None and kind != "DELETED" and \
                known["metadata"].get("resourceVersion") == meta.get("resourceVersion"):
            return  # the echo of a write already in the cache (with the keys it has)
        if kind == "DELETED":
            cache.pop(skey, None)
        else:
            cache[skey] = rec._strip_data(secret)
        key = (str(meta.get("namespace")), _owner(meta))
        if kind != "DELETED" and key in self._running:
            return  # the echo of the write a running refresh is making: it updates the cache itself
        body = self.bodies.get(key)
        if body is not None and known is not None and not body["metadata"].get("deletionTimestamp"):
            self.schedule(key, 0.0)

    def schedule(self, key: Key, delay: float) -> None:
        """Run ``key`` in ``delay`` seconds (unless it is due earlier); while it runs: again once it ends.

        Every ``_deadline`` has its heap entry: it is dropped when that entry is taken.
        """
        if key in self._running:
            self._dirty.add(key)  # the run in progress may have read the old body: run again when it ends
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, delay)
        current = self._deadline.get(key)
        if current is not None and current <= deadline:
            return  # already due earlier
        self._deadline[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._seq), key))
        self._wake.set()

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.concurrency)
        await self.ready.wait()
        self.reconciler.secrets_listed = True  # both informers have listed: the Secret cache is complete
        while True:
            await self.active.wait()
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                deadline, _, key = heapq.heappop(self._heap)
                if self._deadline.get(key) != deadline:
                    continue  # superseded
                del self._deadline[key]
                if key in self._running:
                    self._dirty.add(key)
                    continue
                await slots.acquire()
                self._running.add(key)
                task = asyncio.create_task(self._one(key, slots), name=f"rdsiam {key[0]}/{key[1]}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                if not self.active.is_set():
                    break
            self._wake.clear()
            timeout = (self._heap[0][0] - loop.time()) if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _one(self, key: Key, slots: asyncio.Semaphore) -> None:
        delay: float | None = None  # when to come back (None: when the resource changes)
        try:
            body = self.bodies.get(key)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return  # gone, or being deleted: the garbage collector is removing its Secret
            if key in self._stale:
                body = await self._read(key)
                if body is None:
                    if key in self._stale:  # could not be read: again after a backoff
                        delay = rec.backoff(self._attempts[key] - 1, 1.0)
                    return
            try:
                outcome = await self.reconciler.reconcile(body)
            except Exception as exc:  # a bug or an unexpected failure must not stop the others
                logger.exception("Unexpected error reconciling %s/%s: %s", key[0], key[1], type(exc).__name__)
                outcome = await self.reconciler.internal_error(body, exc)
            if key not in self.bodies:  # deleted meanwhile: keep nothing about it (a failure this run
                self.reconciler.forget(*key)  # reported after forget() was called noted itself again)
                return
            self.outcomes[key] = outcome
            if outcome.ok:
                self._attempts.pop(key, None)
                if outcome.next_due is not None:
                    delay = (outcome.next_due - self.clock()).total_seconds()
            elif outcome.retry_after is not None:
                attempt = self._attempts.get(key, 0)
                self._attempts[key] = attempt + 1
                delay = rec.backoff(attempt, outcome.retry_after)
        finally:
            self._running.discard(key)
            slots.release()
            if key in self._dirty:  # changed while it ran: again now, whatever this run concluded
                self._dirty.discard(key)
                delay = 0.0
            if delay is not None and key in self.bodies:
                self.schedule(key, delay)

    async def _read(self, key: Key) -> dict[str, Any] | None:
        """The whole resource, read now (its watch said it changed), stored as the body to reconcile; None
        when it is gone or being deleted, or when it could not be read (then still stale: retried)."""
        assert self.fetch is not None
        self._stale.discard(key)  # a change seen while reading marks it again (and runs it again after)
        try:
            found = await self.fetch(*key)
        except Exception as exc:  # an API error or an unreachable server: try again with a backoff
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
            self._stale.add(key)
            logger.warning("Could not read %s/%s after a change: %s; retrying", key[0], key[1],
                           getattr(exc, "status", None) or type(exc).__name__)
            return None
        if found is None or key not in self.bodies:
            return None  # deleted: its DELETED event (or the next listing) forgets it
        body = self.bodies[key] = _trim(found)
        return None if body["metadata"].get("deletionTimestamp") else body

    # ---- informer callbacks ------------------------------------------------------------------

    def replace_credentials(self, items: list[dict[str, Any]], namespace: str | None = None) -> None:
        """A full listing of ``namespace`` (None: all of them): forget its resources that are gone, observe
        the rest. Resources of other namespaces (listed by their own informers) are left alone."""
        present = dict.fromkeys((i["metadata"]["namespace"], i["metadata"]["name"]) for i in items)  # in order
        for key in [k for k in self.bodies if k not in present and (namespace is None or k[0] == namespace)]:
            self.forget(*key)
        for item in items:
            self.observe(item)
        for key in present:  # after a restart: every spec parsed here, one after another, before any refresh
            self.reconciler.prepare(self.bodies[key])

    def credential_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if kind == "DELETED":
            self.forget(meta["namespace"], meta["name"])
        elif obj.get("kind") == "PartialObjectMetadata":
            self.observe_metadata(meta)
        else:
            self.observe(obj)

    def replace_secrets(self, items: list[dict[str, Any]], namespace: str | None = None) -> None:
        """A full listing of the managed Secrets of ``namespace`` (None: all of them): it replaces what the
        cache holds for that namespace only."""
        fresh = {(i["metadata"]["namespace"], i["metadata"]["name"]): rec._strip_data(i) for i in items}
        cache = self.reconciler.secrets
        gone = [(k, cache.pop(k)) for k in [k for k in cache if k not in fresh
                                            and (namespace is None or k[0] == namespace)]]
        cache.update(fresh)
        for (ns, name), known in gone:  # deleted while the watch was down: recreate
            key = (ns, _owner(known["metadata"]))
            body = self.bodies.get(key)
            if body is not None and rec.secret_name_of(body) == name and not body["metadata"].get("deletionTimestamp"):
                self.schedule(key, 0.0)

    async def drain(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _owner(meta: dict[str, Any]) -> str:
    """The name of the RdsIamCredential a Secret belongs to ("" if none): its controller reference
    (PartialObjectMetadata carries it too), else the ``rdsiam.io/credential`` label (whose value is cut
    short for long names)."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == KIND:
            return str(ref.get("name") or "")
    return str((meta.get("labels") or {}).get(rec.CREDENTIAL_LABEL) or "")


def _changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    om, nm = old["metadata"], new["metadata"]
    if om.get("generation") != nm.get("generation") or om.get("uid") != nm.get("uid"):
        return True
    oa, na = om.get("annotations") or {}, nm.get("annotations") or {}
    return bool(oa.get(rec.REFRESH_ANN) != na.get(rec.REFRESH_ANN))
