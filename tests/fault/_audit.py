"""What every fault test checks, on every Secret version the operator ever wrote.

:class:`Audit` watches the real API server directly (never through the fault proxy the operator goes
through): a watch of Secrets and one of RdsIamCredentials per audited namespace, each from the
resourceVersion the audit started at, resumed from the last resourceVersion it saw whenever it ends
(timeoutSeconds, a dropped connection, an API server restart). Events of one watch come in
resourceVersion order, so every committed version is recorded, in order, whatever the faults the tests
inject on the operator's side. A watch rather than the API server's audit log: the log would have to
hold Secret data (tokens) on disk to be checked, and the cluster is shared with other tiers.

Each change carries the time the audit *observed* it, not the time it was committed (the watch gives
no commit time): a few milliseconds later normally, seconds later while the API server restarts. The
checks that use it are only stricter for it (a token must still be live when observed; a version is
current until its successor is observed), except ``writes(since=...)``, which may count a write
committed just before ``since`` as after it: where that matters, ``writes(after=resourceVersion)`` is exact.

Two things a watch alone cannot promise, and how the audit makes up for them:

- having seen everything up to now: :meth:`Audit.sync` (run by :meth:`report` and :meth:`close`) writes
  a marker Secret (unlabelled: the operator never sees it) in each namespace and waits until the watch
  delivered it, so every Secret version committed before it is recorded; RdsIamCredentials (which the
  operator never creates or deletes) are awaited until the watch delivered the version a list shows;
- 410 Gone on resume (history compacted, or an API server restart rebuilt its watch cache): the audit
  lists, records what changed as observed then, and names any object that changed while it was blind
  in :attr:`Report.gaps`, which fails :meth:`Report.assert_clean` (versions may be missing there).
  Run :meth:`sync` right before a compaction, so that nothing is in flight.

:meth:`Audit.report` then checks, for each version of each managed Secret:

- complete: every key of the contract is there (``username``, ``password``, ``host``, ``port``,
  ``dbname``, ``dsn``, ``expires-at``; ``pgpass`` for PostgreSQL);
- one generation: ``conninfo_to_dict(dsn)`` gives back exactly ``password``, ``username``, ``host``,
  ``port`` and ``dbname``; each ``pgpass`` line ends with ``password``; the ``expires-at`` key equals
  the ``rdsiam.io/expires-at`` annotation;
- a live token when written: the token verifies (SigV4, re-derived independently by
  ``rdsiam.testing.sigv4`` with the keys STS issued) at the moment it was observed, and the
  ``expires-at`` it claims is not later than when RDS would stop accepting it (token or signing
  credentials, whichever dies first; 1 s of rounding allowed);
- never expired while current: the token was still accepted when the next version replaced it (or
  when the audit ended);
- one owner: the controller ownerReference never changes, and one Secret per resource;
- never deleted, except where a test deleted it on purpose (:meth:`Audit.expect_deletion`).

Nothing here prints a token: problems name the Secret, the resourceVersion and what is wrong.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import http.client
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from rdsiam.operator.target import split_pgpass
from rdsiam.testing import sigv4
from rdsiam.testing.kubectl import Kubectl

UTC = dt.UTC
MANAGED_BY = "app.kubernetes.io/managed-by"
CREDENTIAL_LABEL = "rdsiam.io/credential"
EXPIRES_ANN = "rdsiam.io/expires-at"
ISSUED_ANN = "rdsiam.io/issued-at"
REFRESH_ANN = "rdsiam.io/refresh-requested-at"
REQUIRED_KEYS = ("username", "password", "host", "port", "dbname", "dsn", "expires-at")
GROUP, VERSION, PLURAL = "rdsiam.io", "v1alpha1", "rdsiamcredentials"


def parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stamp(when: float | None = None) -> str:
    """An RFC 3339 UTC time with whole seconds (what ``date -u +%FT%TZ`` gives)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))


def decode(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def managed(obj: dict[str, Any]) -> bool:
    """A Secret the operator wrote: its label, and an RdsIamCredential as its controller (a Secret
    forged with the label alone is not one)."""
    meta = obj.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    return (meta.get("labels") or {}).get(MANAGED_BY) == "rdsiam" and any(
        r.get("controller") and r.get("kind") == "RdsIamCredential" for r in refs)


def controller_uid(obj: dict[str, Any]) -> str | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def access_key_of(token: str) -> str:
    query = token.split("?", 1)[1] if "?" in token else ""
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key == "X-Amz-Credential":
            return unquote(value).split("/", 1)[0]
    return ""


@dataclasses.dataclass
class Change:
    at: float  # time.time() when the audit observed it (see the module doc)
    type: str  # ADDED, MODIFIED, DELETED
    kind: str  # Secret, RdsIamCredential
    obj: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        meta = self.obj.get("metadata") or {}
        return meta.get("namespace", ""), meta.get("name", "")

    @property
    def rv(self) -> int:
        return int((self.obj.get("metadata") or {}).get("resourceVersion") or 0)


@dataclasses.dataclass
class Version:
    """One committed version of a managed Secret, with what the audit found."""

    namespace: str
    name: str
    rv: str
    at: float
    data: dict[str, str]
    annotations: dict[str, str]
    owner: str | None
    until: float | None = None  # when the next version (or a deletion) replaced it
    real_expiry: float | None = None  # when RDS stops accepting its token (epoch seconds)
    claimed_expiry: float | None = None  # its expires-at
    issued: float | None = None  # its rdsiam.io/issued-at
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}@{self.rv}"


@dataclasses.dataclass
class Report:
    versions: int = 0
    secrets: int = 0
    expired: list[str] = dataclasses.field(default_factory=list)
    corrupt: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    gaps: list[str] = dataclasses.field(default_factory=list)  # where the audit may have missed versions
    min_margin: float | None = None  # least remaining token life when a version stopped being current

    def assert_clean(self) -> None:
        problems = {"expired tokens": self.expired, "corrupted/half-written": self.corrupt,
                    "deleted": self.deleted, "duplicates": self.duplicates, "unaudited gaps": self.gaps}
        bad = {k: v[:10] for k, v in problems.items() if v}
        assert not bad, f"audit of {self.versions} Secret versions found: {bad}"

    def summary(self) -> str:
        margin = "n/a" if self.min_margin is None else f"{self.min_margin:.1f} s"
        return (f"{self.versions} Secret versions of {self.secrets} Secrets checked: {len(self.expired)} expired, "
                f"{len(self.corrupt)} corrupted, {len(self.deleted)} deleted, {len(self.duplicates)} duplicated, "
                f"{len(self.gaps)} unaudited gaps; "
                f"least remaining token life when replaced: {margin}")


@dataclasses.dataclass(eq=False)
class _Stream:
    """One watch of the audit: a kind in a namespace, the last resourceVersion it saw, and what exists."""

    kind: str
    namespace: str
    path: str
    rv: int = 0
    state: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # name -> latest object


FENCE = "rdsiam-audit-fence"  # the marker Secret of Audit.sync (no label: the operator never sees it)
WATCH_SECONDS = 5  # each watch request ends after this and is resumed; close() waits for none


class Audit:
    """Record every change of Secrets and RdsIamCredentials in ``namespaces`` (see the module doc).

    ``cluster``: a :class:`~rdsiam.testing.realapi.RealCluster` (reached directly, not through a proxy);
    None for an audit fed ``changes`` by hand."""

    def __init__(self, cluster: Any, lookup: sigv4.Lookup, namespaces: Iterable[str] | None = None) -> None:
        self.cluster = cluster
        self.lookup = lookup
        self.namespaces = set(namespaces) if namespaces is not None else None
        self.changes: list[Change] = []
        self.gaps: list[str] = []
        self.resyncs = 0  # 410 Gone answered to a resume: listed again
        self._expected_deletions: set[tuple[str, str]] = set()
        self._streams: list[_Stream] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._fences = 0

    def __enter__(self) -> Audit:
        assert self.cluster is not None and self.namespaces, "a live audit needs a cluster and namespaces"
        for ns in sorted(self.namespaces):
            for kind, path in (("Secret", f"/api/v1/namespaces/{ns}/secrets"), ("RdsIamCredential", cr_path(ns))):
                stream = _Stream(kind, ns, path)
                body = self._list(stream)
                stream.rv = int(body["metadata"]["resourceVersion"])
                stream.state = {item["metadata"]["name"]: item for item in body["items"]}
                self._streams.append(stream)
        for stream in self._streams:
            threading.Thread(target=self._follow, args=(stream,), name=f"audit {stream.path}", daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(sync=exc_type is None)

    def close(self, sync: bool = True) -> None:
        """Stop watching; first (``sync``) record everything committed until now."""
        if self._streams and not self._stopping.is_set():
            try:
                if sync:
                    self.sync()
            finally:
                self._stopping.set()

    # ---- following the API server --------------------------------------------------------------

    def _list(self, stream: _Stream) -> dict[str, Any]:
        status, body = self.cluster.request("GET", stream.path)
        if status != 200:
            raise OSError(f"audit: listing {stream.path}: HTTP {status}")
        return dict(body)

    def _follow(self, stream: _Stream) -> None:
        """Watch from the last resourceVersion seen, again and again, until the audit stops."""
        while not self._stopping.is_set():
            query = f"?watch=1&allowWatchBookmarks=true&resourceVersion={stream.rv}&timeoutSeconds={WATCH_SECONDS}"
            try:
                for status, event in self.cluster.watch(stream.path + query, timeout=WATCH_SECONDS + 10):
                    if self._stopping.is_set():
                        return
                    gone = status == 410 or (event.get("type") == "ERROR" and (event.get("object") or {}).get(
                        "code") == 410)
                    if gone:
                        self._resync(stream)
                    if status != 200 or event.get("type") == "ERROR":
                        break  # refused (a restarting server) or expired: watch again
                    self._record(stream, event["type"], event["object"])
            except (OSError, http.client.HTTPException, ValueError):
                pass  # the connection broke (a restart): resume from stream.rv
            self._stopping.wait(0.05)

    def _record(self, stream: _Stream, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        with self._lock:
            if type_ != "BOOKMARK":
                name = meta.get("name", "")
                if type_ == "DELETED":
                    stream.state.pop(name, None)
                else:
                    stream.state[name] = obj
                if not (stream.kind == "Secret" and name == FENCE):
                    self.changes.append(Change(time.time(), type_, stream.kind, obj))
            stream.rv = max(stream.rv, int(meta.get("resourceVersion") or 0))

    def _resync(self, stream: _Stream) -> None:
        """After 410 Gone: list, record what changed while the watch was blind, and name it a gap."""
        body = self._list(stream)
        now, listed = time.time(), {item["metadata"]["name"]: item for item in body["items"]}
        with self._lock:
            changed = []
            for name, item in listed.items():
                before = stream.state.get(name)
                if before is None or before["metadata"]["resourceVersion"] != item["metadata"]["resourceVersion"]:
                    changed.append(name)
                    if name != FENCE or stream.kind != "Secret":
                        self.changes.append(Change(now, "ADDED" if before is None else "MODIFIED", stream.kind, item))
            for name in set(stream.state) - set(listed):
                changed.append(name)
                if name != FENCE or stream.kind != "Secret":
                    self.changes.append(Change(now, "DELETED", stream.kind, stream.state[name]))
            stream.state = listed
            stream.rv = int(body["metadata"]["resourceVersion"])
            self.resyncs += 1
            blind = sorted(n for n in changed if n != FENCE)
            if blind:
                self.gaps.append(f"{stream.kind} {stream.namespace}/{blind}: changed while the audit's watch had "
                                 "expired (410 Gone): versions between may be missing")

    def sync(self, timeout: float = 20.0) -> None:
        """Return once every change committed before this call is recorded (see the module doc)."""
        targets = []
        for stream in self._streams:
            if stream.kind == "Secret":
                targets.append((stream, self._fence(stream.namespace)))
            else:
                items = self._list(stream)["items"]
                targets.append((stream, max((int(i["metadata"]["resourceVersion"]) for i in items), default=0)))
        deadline = time.monotonic() + timeout
        while lagging := [s.path for s, rv in targets if s.rv < rv]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the audit's watches did not catch up within {timeout:.0f} s: {lagging}")
            time.sleep(0.02)

    def _fence(self, namespace: str) -> int:
        """Write the marker Secret; returns its resourceVersion."""
        self._fences += 1
        meta = {"name": FENCE, "annotations": {"rdsiam.io/audit-fence": str(self._fences)}}
        path = f"/api/v1/namespaces/{namespace}/secrets"
        status, body = self.cluster.request("PATCH", f"{path}/{FENCE}", {"metadata": meta},
                                            content_type="application/merge-patch+json")
        if status == 404:
            status, body = self.cluster.request("POST", path, {"metadata": meta})
        if status not in (200, 201):
            raise OSError(f"audit: writing {path}/{FENCE}: HTTP {status}")
        return int(body["metadata"]["resourceVersion"])

    def expect_deletion(self, namespace: str, name: str) -> None:
        self._expected_deletions.add((namespace, name))

    # ---- views --------------------------------------------------------------------------------

    def snapshot(self) -> list[Change]:
        with self._lock:
            return list(self.changes)

    def current(self, kind: str = "Secret") -> dict[tuple[str, str], dict[str, Any]]:
        """The latest state of each object of ``kind`` (deleted ones left out)."""
        state: dict[tuple[str, str], dict[str, Any]] = {}
        for change in self.snapshot():
            if change.kind != kind:
                continue
            if change.type == "DELETED":
                state.pop(change.key, None)
            else:
                state[change.key] = change.obj
        return state

    def writes(self, namespace: str, name: str, kind: str = "Secret", since: float = 0.0,
               after: int = 0) -> list[Change]:
        """Changes observed at ``since`` or later, of a resourceVersion above ``after``."""
        return [c for c in self.snapshot()
                if c.kind == kind and c.key == (namespace, name) and c.at >= since and c.rv > after]

    def ready(self, namespace: str, name: str, since: float = 0.0) -> list[tuple[float, str, str]]:
        """(time, status, reason) of each change of the resource's Ready condition."""
        out: list[tuple[float, str, str]] = []
        for change in self.writes(namespace, name, "RdsIamCredential", since):
            cond = next((c for c in (change.obj.get("status") or {}).get("conditions") or []
                         if c.get("type") == "Ready"), None)
            if cond is not None and (not out or out[-1][1:] != (cond.get("status"), cond.get("reason"))):
                out.append((change.at, str(cond.get("status")), str(cond.get("reason"))))
        return out

    def versions(self, end: float | None = None) -> list[Version]:
        """Every managed Secret version, checked (see the module doc)."""
        end = time.time() if end is None else end
        out: list[Version] = []
        last: dict[tuple[str, str], Version] = {}
        for change in self.snapshot():
            if change.kind != "Secret":
                continue
            previous = last.get(change.key)
            if previous is not None and previous.until is None:
                previous.until = change.at
            if change.type == "DELETED" or not managed(change.obj):
                last.pop(change.key, None)
                continue
            meta = change.obj["metadata"]
            version = Version(meta.get("namespace", ""), meta["name"], str(meta.get("resourceVersion")), change.at,
                              decode(change.obj), dict(meta.get("annotations") or {}), controller_uid(change.obj))
            if previous is not None and previous.owner != version.owner:
                version.problems.append("the controlling owner changed")
            self._check(version)
            out.append(version)
            last[change.key] = version
        for version in last.values():
            if version.until is None:
                version.until = end
        return out

    def report(self, end: float | None = None) -> Report:
        if self._streams and not self._stopping.is_set():
            self.sync()
        end = time.time() if end is None else end
        versions = self.versions(end)
        report = Report(versions=len(versions), secrets=len({(v.namespace, v.name) for v in versions}),
                        gaps=list(self.gaps))
        for v in versions:
            if v.problems:
                report.corrupt.append(f"{v.label}: {'; '.join(v.problems)}")
            if v.real_expiry is not None and v.until is not None:
                margin = v.real_expiry - v.until
                report.min_margin = margin if report.min_margin is None else min(report.min_margin, margin)
                if margin <= 0:
                    report.expired.append(f"{v.label}: token dead {-margin:.1f} s before it was replaced")
        for change in self.snapshot():
            if change.kind == "Secret" and change.type == "DELETED" and managed(change.obj) \
                    and change.key not in self._expected_deletions:
                report.deleted.append("/".join(change.key))
        owners: dict[str, list[str]] = {}
        for (ns, name), obj in self.current().items():
            if managed(obj) and (uid := controller_uid(obj)):
                owners.setdefault(uid, []).append(f"{ns}/{name}")
        report.duplicates = [f"{uid}: {names}" for uid, names in owners.items() if len(names) > 1]
        return report

    # ---- the checks ---------------------------------------------------------------------------

    def _check(self, v: Version) -> None:
        data, problems = v.data, v.problems
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            problems.append(f"missing keys {missing}")
            return
        token = data["password"]
        try:
            info = conninfo_to_dict(data["dsn"])
        except psycopg.Error as exc:
            problems.append(f"dsn does not parse ({type(exc).__name__})")
        else:
            if info.get("password") != token:
                problems.append("dsn and password are from different generations")
            for key, field in (("user", "username"), ("host", "host"), ("port", "port"), ("dbname", "dbname")):
                if data[field] and str(info.get(key, "")) != data[field]:
                    problems.append(f"dsn {key} differs from the {field} key")
        if "pgpass" in data:
            for line in data["pgpass"].splitlines():
                if line and split_pgpass(line)[-1] != token:
                    problems.append("a pgpass line holds another token")
        if v.annotations.get(EXPIRES_ANN) != data["expires-at"]:
            problems.append("expires-at key and annotation differ")
        try:
            v.claimed_expiry = parse_time(data["expires-at"]).timestamp()
            v.issued = parse_time(v.annotations.get(ISSUED_ANN, "")).timestamp()
        except ValueError:
            problems.append("expires-at or issued-at is not an RFC 3339 time")
            return
        if v.claimed_expiry - v.issued > 900:
            problems.append("expires-at is more than 15 minutes after issued-at")
        try:
            parsed = sigv4.parse_token(token)
            region = parsed.params["X-Amz-Credential"].split("/")[2]
        except (ValueError, KeyError, IndexError):
            problems.append("the password is not an RDS IAM token")
            return
        verdict = sigv4.verify_token(token, user=data["username"], host=parsed.host, port=parsed.port, region=region,
                                     lookup=self.lookup, now=dt.datetime.fromtimestamp(v.at, UTC))
        if verdict.expires_at is not None:
            v.real_expiry = verdict.expires_at.timestamp()
        if not verdict.ok:
            problems.append(f"token refused when written: {verdict.reason}")
            return
        if v.real_expiry is not None and v.claimed_expiry > v.real_expiry + 1.0:
            problems.append(f"expires-at claims {v.claimed_expiry - v.real_expiry:.0f} s more than the token lives")


# ---- driving the stack ---------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def credential(rds: Any, name: str, namespace: str, user: str = "app_user", **spec: Any) -> dict[str, Any]:
    """An RdsIamCredential pointed at the local IAM-checking PostgreSQL."""
    dsn = (f"postgresql://{user}:$TOKEN@{rds.endpoint}:{rds.port}/postgres?sslmode=verify-full"
           f"&sslrootcert={rds.ca_file}&hostaddr={rds.hostaddr}")
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RdsIamCredential",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"dsn": dsn, **spec}}


def create_namespace(cluster: Any, prefix: str = "f") -> str:
    name = unique(prefix)
    status, body = cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201, body
    return name


def cr_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def call(cluster: Any, method: str, path: str, body: Any = None, ok: Iterable[int] = (200, 201)) -> Any:
    """One API call as the admin, straight to the API server; a merge patch for PATCH."""
    status, answer = cluster.request(method, path, body, content_type="application/merge-patch+json"
                                     if method == "PATCH" else "application/json")
    assert status in ok, f"{method} {path}: HTTP {status}"  # not the answer: it may hold a Secret
    return answer


def request_refresh(cluster: Any, namespace: str, names: Iterable[str], audit: Audit | None = None) -> float:
    """Annotate resources with ``rdsiam.io/refresh-requested-at`` (whole seconds, strictly after the
    last issue of their Secrets, so the request is never mistaken for one already served)."""
    names = list(names)
    if audit is not None:
        latest = max((parse_time(obj["metadata"]["annotations"][ISSUED_ANN]).timestamp()
                      for (ns, n), obj in audit.current().items()
                      if ns == namespace and managed(obj) and ISSUED_ANN in (obj["metadata"].get("annotations") or {})),
                     default=0.0)
        while int(time.time()) <= int(latest):
            time.sleep(0.05)
    when = time.time()
    for name in names:
        call(cluster, "PATCH", cr_path(namespace, name), {"metadata": {"annotations": {REFRESH_ANN: stamp(when)}}})
    return float(int(when))


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """``Kubectl.wait`` with the fault tier's longer default timeout."""
    return Kubectl.wait(what, fn, timeout, interval)


def wait_settled(what: str, problems: Callable[[], list[str]], timeout: float = 20.0) -> None:
    """Wait until ``problems()`` lists nothing; else fail with what it listed last."""
    deadline = time.monotonic() + timeout
    while (last := problems()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if last:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}: {last[:10]}")


def ready_reason(cluster: Any, namespace: str, name: str) -> tuple[str, str] | None:
    obj = cluster.get(f"{GROUP}/{VERSION}", "RdsIamCredential", name, namespace)
    cond = next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                None)
    return (cond["status"], cond["reason"]) if cond else None


def secret(cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    return cluster.get("v1", "Secret", name, namespace)


def all_ready(cluster: Any, namespace: str, names: Iterable[str]) -> bool:
    return all(ready_reason(cluster, namespace, n) == ("True", "TokenIssued") for n in names)


def login(data: dict[str, str]) -> str:
    """Log in with the Secret's DSN through the IAM-checking PostgreSQL; return current_user."""
    with psycopg.connect(data["dsn"], connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


