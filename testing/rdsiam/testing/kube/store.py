"""In-memory object storage with a global resourceVersion counter, event history and watchers.

Replaces kmock's ``ObjectsArray`` (which keeps every version of every object and is
scanned linearly) with per-resource tables indexed by (namespace, name) and by namespace,
a uid index and an owner index (for garbage collection), and a bounded per-resource event
history used to resume watches from a resourceVersion. All methods are synchronous and
must run on the emulator's event loop thread: each API call is atomic.

Cost model: get/put/delete are O(1) (plus the size of the object for the change check);
a list is O(objects in the scope); publishing an event is O(open watches of that
resource); resuming a watch is O(events since that resourceVersion).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from rdsiam.testing.kube.resources import StorageKey
from rdsiam.testing.kube.selectors import Selector

__all__ = ["Event", "Store", "Table", "Watcher"]

ObjKey = tuple[str, str]  # (namespace or "", name)


@dataclass(slots=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


class Subscriber(Protocol):
    """Anything a table hands its committed events to (watch streams)."""

    def offer(self, event: Event) -> None: ...


@dataclass(eq=False)
class Watcher:
    """An open watch: its filter and the queue its HTTP stream drains."""

    selector: Selector
    path: str = ""
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(default_factory=asyncio.Queue)

    def offer(self, event: Event) -> None:
        """Translate a storage event into what this watcher sees through its selector."""
        sel = self.selector
        if sel.trivial:
            if sel.namespace is None or (event.obj.get("metadata") or {}).get("namespace") == sel.namespace:
                self.queue.put_nowait((event.type, event.obj))
            return
        new_match = event.type != "DELETED" and sel.matches(event.obj)
        old_match = sel.matches(event.old) if event.type != "ADDED" else False
        if event.type == "DELETED":
            if sel.matches(event.obj):
                self.queue.put_nowait(("DELETED", event.obj))
        elif new_match and old_match:
            self.queue.put_nowait(("MODIFIED", event.obj))
        elif new_match:
            self.queue.put_nowait(("ADDED", event.obj))
        elif old_match:
            self.queue.put_nowait(("DELETED", event.obj))


class Table:
    """All objects of one resource (all versions share it) plus its history and watchers."""

    def __init__(self, key: StorageKey, history_limit: int) -> None:
        self.key = key
        self.objects: dict[ObjKey, dict[str, Any]] = {}
        self.by_ns: dict[str, dict[str, dict[str, Any]]] = {}
        self.history: deque[Event] = deque(maxlen=history_limit)
        self.floor = 0  # events with rv <= floor are no longer available
        self.watchers: set[Subscriber] = set()

    def scope(self, namespace: str | None) -> Iterator[dict[str, Any]]:
        if namespace is None:
            return iter(self.objects.values())
        return iter(self.by_ns.get(namespace, {}).values())

    def events_since(self, rv: int) -> list[Event] | None:
        """Events newer than ``rv``, oldest first; None if some of them fell out of the bounded history."""
        if rv < self.floor:
            return None
        newer: list[Event] = []
        for event in reversed(self.history):
            if event.rv <= rv:
                break
            newer.append(event)
        newer.reverse()
        return newer


class Store:
    """Tables by storage key, the resourceVersion counter and cross-resource indexes."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.history_limit = history_limit
        self.rv = 0
        self.tables: dict[StorageKey, Table] = {}
        self.by_uid: dict[str, tuple[StorageKey, ObjKey]] = {}
        self.dependents: dict[str, set[str]] = {}  # owner uid -> dependent uids

    def table(self, key: StorageKey) -> Table:
        table = self.tables.get(key)
        if table is None:
            table = self.tables[key] = Table(key, self.history_limit)
        return table

    def get(self, key: StorageKey, namespace: str | None, name: str) -> dict[str, Any] | None:
        table = self.tables.get(key)
        return None if table is None else table.objects.get((namespace or "", name))

    def get_by_uid(self, uid: str) -> dict[str, Any] | None:
        where = self.by_uid.get(uid)
        if where is None:
            return None
        return self.tables[where[0]].objects.get(where[1])

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def write(self, key: StorageKey, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """Store ``obj`` (ADDED if ``old`` is None, else MODIFIED) under a new resourceVersion."""
        table = self.table(key)
        rv = self.next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        meta = obj["metadata"]
        okey = (meta.get("namespace") or "", meta["name"])
        table.objects[okey] = obj
        table.by_ns.setdefault(okey[0], {})[okey[1]] = obj
        uid = meta.get("uid")
        if uid:
            self.by_uid[uid] = (key, okey)
            self._index_owners(uid, old, obj)
        self._publish(table, Event(rv, "ADDED" if old is None else "MODIFIED", obj, old))
        return obj

    def remove(self, key: StorageKey, obj: dict[str, Any]) -> dict[str, Any]:
        """Remove the object for good; the DELETED event carries a new resourceVersion."""
        table = self.table(key)
        meta = obj["metadata"]
        okey = (meta.get("namespace") or "", meta["name"])
        table.objects.pop(okey, None)
        in_ns = table.by_ns.get(okey[0])
        if in_ns is not None:
            in_ns.pop(okey[1], None)
            if not in_ns:
                del table.by_ns[okey[0]]
        rv = self.next_rv()
        gone = {**obj, "metadata": {**meta, "resourceVersion": str(rv)}}
        uid = meta.get("uid")
        if uid:
            self.by_uid.pop(uid, None)
            self._index_owners(uid, obj, None)
        self._publish(table, Event(rv, "DELETED", gone, obj))
        return gone

    def _index_owners(self, uid: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        before = {r.get("uid") for r in ((old or {}).get("metadata") or {}).get("ownerReferences") or []}
        after = {r.get("uid") for r in ((new or {}).get("metadata") or {}).get("ownerReferences") or []}
        for owner in before - after:
            deps = self.dependents.get(owner)
            if deps is not None:
                deps.discard(uid)
                if not deps:
                    del self.dependents[owner]
        for owner in after - before:
            if owner:
                self.dependents.setdefault(owner, set()).add(uid)

    def _publish(self, table: Table, event: Event) -> None:
        table.history.append(event)
        if len(table.history) == table.history.maxlen:
            table.floor = max(table.floor, table.history[0].rv - 1)
        for watcher in table.watchers:
            watcher.offer(event)
