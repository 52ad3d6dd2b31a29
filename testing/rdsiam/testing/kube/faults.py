"""Injected failures and the request log.

A fault matches requests by HTTP method, a path regular expression (``re.search`` on the path,
or on ``path?query``) and whether the request is a watch, and answers with a status code and a
proper ``Status`` body (for a watch, a 410 is sent as an ``ERROR`` event like the real server);
``times`` bounds how often it fires.

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
    status: int
    times: int | None = 1
    watch: bool | None = None
    hits: int = 0

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


class FaultSet:
    """Thread-safe list of active faults (tests add them, the loop thread consumes them)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

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

    def filter(self, *, method: str | None = None, path: str | None = None) -> list[RequestRecord]:
        """Records of that method and whose path the regular expression ``path`` is found in."""
        return [
            record
            for record in self.snapshot()
            if (method is None or record.method == method.upper()) and (path is None or re.search(path, record.path))
        ]
