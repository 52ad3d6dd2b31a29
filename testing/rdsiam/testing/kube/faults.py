"""Fault injection rules and the request log.

Faults match requests by HTTP method and a path regular expression (``re.search`` on the
path, optionally also on ``path?query``) and either answer with a status code (a proper
``Status`` body; for watch requests a 410 is sent as an ``ERROR`` watch event like the real
server), add latency, or both; ``times`` bounds how often a fault fires. Open watch streams
can be dropped on demand (see ``KubeEmulator.drop_watches``).

The request log is a bounded deque (default 100,000 entries) appended once per request:
never scanned while serving.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Fault", "FaultSet", "RequestLog", "RequestRecord"]


@dataclass
class Fault:
    """One injected fault; ``hits`` counts how often it fired."""

    method: str | None
    path: re.Pattern[str]
    status: int | None = None
    times: int | None = 1
    latency: float = 0.0
    message: str | None = None
    reason: str | None = None
    retry_after: int | None = None
    watch: bool | None = None
    hits: int = 0
    _owner: FaultSet | None = field(default=None, repr=False)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, method: str, path: str, query: str, is_watch: bool) -> bool:
        if self.exhausted:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.watch is not None and self.watch != is_watch:
            return False
        target = f"{path}?{query}" if query else path
        return bool(self.path.search(path) or self.path.search(target))

    def remove(self) -> None:
        if self._owner is not None:
            self._owner.remove(self)


class FaultSet:
    """Thread-safe list of active faults (tests add them, the loop thread consumes them)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        fault._owner = self
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str, query: str, is_watch: bool) -> Fault | None:
        """The first matching fault (its hit counted), or None. O(number of faults)."""
        if not self._faults:
            return None
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, query, is_watch):
                    fault.hits += 1
                    if fault.exhausted:
                        self._faults.remove(fault)
                    return fault
        return None

    def __len__(self) -> int:
        return len(self._faults)

    def __iter__(self) -> Iterator[Fault]:
        with self._lock:
            return iter(list(self._faults))


@dataclass
class RequestRecord:
    """One served request, with the RBAC attributes it needed (verb, group, resource, ...)."""

    method: str
    path: str
    query: dict[str, str]
    user_agent: str
    verb: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    status: int | None = None
    content_type: str = ""
    accept: str = ""
    time: float = field(default_factory=time.time)

    @property
    def rbac(self) -> tuple[str, str, str]:
        """(apiGroup, resource[/subresource], verb) as RBAC rules name them."""
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return (self.group, resource, self.verb)


class RequestLog:
    """A bounded, thread-safe log of requests. Iterating takes a snapshot."""

    def __init__(self, limit: int = 100_000) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=limit)
        self._lock = threading.Lock()

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> RequestRecord:
        return self.snapshot()[index]

    def filter(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        verb: str | None = None,
        resource: str | None = None,
        user_agent: str | None = None,
    ) -> list[RequestRecord]:
        """Records matching all given criteria (``path`` and ``user_agent`` are regexes searched)."""
        result = []
        for record in self.snapshot():
            if method is not None and record.method != method.upper():
                continue
            if verb is not None and record.verb != verb:
                continue
            if resource is not None and record.resource != resource:
                continue
            if path is not None and not re.search(path, record.path):
                continue
            if user_agent is not None and not re.search(user_agent, record.user_agent):
                continue
            result.append(record)
        return result

    def rbac(self, user_agent: str | None = None) -> set[tuple[str, str, str]]:
        """The distinct (apiGroup, resource, verb) triples used (optionally by one client)."""
        return {r.rbac for r in self.filter(user_agent=user_agent) if r.verb}
