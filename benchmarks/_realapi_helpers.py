"""Machinery of ``bench_realapi.py``: /proc readings, the audit log, list+watch mirrors, bulk creation.

Nothing here decides what is measured; the benchmark does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rdsiam.testing.operator import OperatorProcess
from rdsiam.testing.realapi import _WATCHDOG, RealCluster

TICKS = os.sysconf("SC_CLK_TCK")
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


# ----------------------------------------------------------------------------------------- /proc

def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from the 3rd (state) on


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``, its reaped children, and every live process in its group."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except OSError:
            continue
        if int(entry) == pid:
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        elif int(fields[2]) == pid:  # same process group (the operator runs in its own session)
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    values = {"VmRSS:": 0.0, "VmHWM:": 0.0}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(" ", 1)[0].split("\t", 1)[0]
            if key in values:
                values[key] = int(line.split()[1]) / 1024
    return values["VmRSS:"], values["VmHWM:"]


def component_pids(cluster: RealCluster) -> dict[str, int]:
    """PIDs of the cluster's etcd, kube-apiserver and kube-controller-manager (their command lines name its
    temporary directory)."""
    marker = str(cluster.directory)
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = os.path.basename(argv[0].decode(errors="replace"))
        if name in ("etcd", "kube-apiserver", "kube-controller-manager") and marker.encode() in b" ".join(argv):
            found[name] = int(entry)
    return found


def components_cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            out[name] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


# ----------------------------------------------------------------------------------------- cleanup

# The same watchdog script RealCluster runs for the control plane: reads process-group ids on stdin; when
# stdin closes without "disarm" (the benchmark was killed), ends those groups and removes the work directory.
_REAPER = _WATCHDOG


class Reaper:
    """Ends the operator processes and removes the work directory even if this process is SIGKILLed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._proc = subprocess.Popen(["/bin/sh", "-c", _REAPER, "rdsiam-bench-reaper", str(directory)],
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)

    def add(self, pgid: int) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.write(f"{pgid}\n".encode())
            self._proc.stdin.flush()

    def close(self, keep: bool = False) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self._proc.stdin is not None
            self._proc.stdin.write(b"disarm\n")
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if not keep:
            shutil.rmtree(self.directory, ignore_errors=True)


class BenchOperator(OperatorProcess):
    """``OperatorProcess`` whose process group is handed to the reaper as soon as it exists."""

    def __init__(self, *args: Any, reaper: Reaper, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reaper = reaper

    def wait_healthy(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            self.reaper.add(self.proc.pid)
        super().wait_healthy(timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.poll() is None, "the operator is not running"
        return self.proc.pid


# ----------------------------------------------------------------------------------------- audit log

AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["{user}"]
- level: None
"""


def _epoch(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def category(ref: dict[str, Any]) -> str:
    resource, sub = ref.get("resource", ""), ref.get("subresource", "")
    if resource == "rdsiamcredentials":
        return "status" if sub == "status" else "resource"
    return {"secrets": "secret", "events": "event", "leases": "lease"}.get(resource, f"other:{resource}/{sub}")


class AuditLog:
    """kube-apiserver's audit log of one user's requests (Metadata level), read incrementally.

    Each record: (time the request was received, "write"/"read"/"watch", category, HTTP code).
    """

    def __init__(self, directory: Path, user: str) -> None:
        self.path = directory / "audit.log"
        self.policy = directory / "audit-policy.yaml"
        self.policy.write_text(AUDIT_POLICY.replace("{user}", user))
        self.records: list[tuple[float, str, str, int]] = []
        self._offset = 0
        self._lock = threading.Lock()

    def apiserver_args(self) -> list[str]:
        return [f"--audit-policy-file={self.policy}", f"--audit-log-path={self.path}",
                "--audit-log-format=json", "--audit-log-maxsize=100000", "--audit-log-mode=blocking"]

    def refresh(self) -> None:
        with self._lock:
            if not self.path.exists():
                return
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            self._offset += end
            for line in data[:end].splitlines():
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                verb, stage = ev.get("verb", ""), ev.get("stage", "")
                if verb == "watch":
                    if stage != "ResponseStarted":
                        continue
                    kind = "watch"
                elif stage != "ResponseComplete":
                    continue
                else:
                    kind = "write" if verb in WRITE_VERBS else "read"
                code = int((ev.get("responseStatus") or {}).get("code") or 0)
                self.records.append((_epoch(ev["requestReceivedTimestamp"]), kind, category(ev.get("objectRef") or {}),
                                     code))

    def count(self, since: float, until: float | None = None) -> Counter[str]:
        """Requests received in [since, until): writes by category, failed writes, reads, watches."""
        self.refresh()
        out: Counter[str] = Counter()
        for when, kind, cat, code in self.records:
            if when < since or (until is not None and when >= until):
                continue
            if kind == "write":
                out[cat] += 1
                out["writes"] += 1
                if code >= 400:
                    out["failed"] += 1
                    out[f"failed:{code} {cat}"] += 1
            else:
                out[kind + "s"] += 1
        return out

    def last_write(self) -> float:
        self.refresh()
        return max((w for w, kind, _, _ in self.records if kind == "write"), default=0.0)

    def wait_quiet(self, seconds: float, timeout: float) -> float:
        """Wait until the user has written nothing for ``seconds`` (trailing Events are posted); returns the
        time waited."""
        began = time.monotonic()
        while time.time() - self.last_write() < seconds:
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"the operator still writing after {timeout:.0f} s")
            time.sleep(0.5)
        return time.monotonic() - began


# ----------------------------------------------------------------------------------------- watches

class Mirror:
    """``namespace/name -> keep(object)`` for one kind, kept current by list + watch in a thread.

    ``keep`` returns None for objects that are not of interest (they are not stored).
    """

    def __init__(self, cluster: RealCluster, path: str, keep: Callable[[dict[str, Any]], Any]) -> None:
        self.cluster, self.path, self.keep = cluster, path, keep
        self.items: dict[str, Any] = {}
        self.error = ""
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"mirror {path}")
        self._thread.start()

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"

    def _url(self, query: str) -> str:
        return f"{self.path}{'&' if '?' in self.path else '?'}{query}"

    def _list(self) -> str:
        items: dict[str, Any] = {}
        token = ""
        while True:
            query = "limit=500" + (f"&continue={urllib.parse.quote(token)}" if token else "")
            status, body = self.cluster.request("GET", self._url(query), timeout=60)
            if status != 200:
                raise RuntimeError(f"list {self.path}: HTTP {status}")
            for obj in body["items"]:
                value = self.keep(obj)
                if value is not None:
                    items[self._key(obj)] = value
            token = body["metadata"].get("continue") or ""
            if not token:
                self.items = items
                self.synced.set()
                return str(body["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list()
                query = f"watch=1&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion={version}"
                for status, event in self.cluster.watch(self._url(query), timeout=300):
                    if self._stop.is_set():
                        return
                    obj = event.get("object") or {}
                    if status != 200 or event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            version = ""  # expired: list again
                            break
                        raise RuntimeError(f"watch {self.path}: HTTP {status}: {obj.get('message', obj)}")
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    key = self._key(obj)
                    value = None if event["type"] == "DELETED" else self.keep(obj)
                    if value is None:
                        self.items.pop(key, None)
                    else:
                        self.items[key] = value
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                self._stop.wait(1.0)

    def values(self) -> list[Any]:
        return list(self.items.values())

    def stop(self) -> None:
        self._stop.set()  # the thread is a daemon: it ends at its next event or with the process


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> float:
    """Poll until ``predicate()`` is truthy; the seconds it took. TimeoutError naming ``what``."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - began


# ----------------------------------------------------------------------------------------- creation

def create_all(cluster: RealCluster, objects: Iterable[tuple[str, dict[str, Any]]], concurrency: int = 8,
               timeout: float = 600.0) -> None:
    """POST (collection path, object) pairs over a few keep-alive connections; 409 counts as done, 429 and 5xx
    are retried."""
    import aiohttp

    items = list(objects)

    async def main() -> None:
        context = ssl.create_default_context(cafile=cluster.ca_file)
        headers = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"}
        slots = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(ssl=context, limit=concurrency)
        async with aiohttp.ClientSession(cluster.url, headers=headers, connector=connector) as session:

            async def one(path: str, obj: dict[str, Any]) -> None:
                async with slots:
                    for attempt in range(20):
                        async with session.post(path, data=json.dumps(obj)) as resp:
                            await resp.read()
                            if resp.status in (200, 201, 409):
                                return
                            if resp.status != 429 and resp.status < 500:
                                raise RuntimeError(f"POST {path}: HTTP {resp.status}")
                        await asyncio.sleep(0.2 * (attempt + 1))
                    raise RuntimeError(f"POST {path}: still refused after 20 attempts")

            await asyncio.wait_for(asyncio.gather(*(one(p, o) for p, o in items)), timeout)

    asyncio.run(main())
