"""The audit every fault test relies on really fails: fed Secret versions that are half-written, mix two
generations, hold a token that dies while still current, claim a later expiry than the token has,
change owner, are duplicated or deleted, it names each; fed sound ones, it finds nothing. Pure: the
versions are made here, signed with a credential the lookup knows."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote

import pytest

from rdsiam.testing.sigv4 import sign_token
from rdsiam.testing.sts import Issued
from tests.fault._audit import Audit, Change

UTC = dt.UTC
HOST, PORT, USER = "db.cluster-abc.us-east-1.rds.amazonaws.com", 5432, "app_user"
KEY = Issued("ASIATESTAUDIT0000001", "secret-key", "session-token", "arn:aws:sts::1:assumed-role/r/s",
             dt.datetime(2030, 1, 1, tzinfo=UTC))
T0 = dt.datetime(2029, 1, 1, 12, 0, 0, tzinfo=UTC)


def token(at: dt.datetime) -> str:
    return sign_token(host=HOST, port=PORT, user=USER, region="us-east-1", access_key_id=KEY.access_key_id,
                      secret_access_key=KEY.secret_access_key, session_token=KEY.session_token, now=at)


def rfc(at: dt.datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def version(name: str, at: dt.datetime, *, uid: str = "uid-1", tok: str | None = None, **override: str) -> Change:
    tok = tok or token(at)
    data = {"username": USER, "password": tok, "host": HOST, "port": str(PORT), "dbname": "orders",
            "dsn": f"postgresql://{USER}:{quote(tok, safe='')}@{HOST}:{PORT}/orders",
            "expires-at": rfc(at + dt.timedelta(seconds=900)),
            "pgpass": f"{HOST}:{PORT}:orders:{USER}:{tok.replace(':', chr(92) + ':')}\n", **override}
    data = {k: v for k, v in data.items() if v != "<drop>"}
    obj = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(int(at.timestamp())),
                        "labels": {"app.kubernetes.io/managed-by": "rdsiam", "rdsiam.io/credential": name},
                        "annotations": {"rdsiam.io/issued-at": rfc(at), "rdsiam.io/expires-at": data.get(
                            "expires-at", rfc(at))},
                        "ownerReferences": [{"kind": "RdsIamCredential", "name": name, "uid": uid,
                                             "controller": True}]},
           "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    return Change(at.timestamp() + 0.5, "MODIFIED", "Secret", obj)


def audit_of(*changes: Change) -> Audit:
    audit = Audit(cluster=None, lookup=lambda akid: KEY if akid == KEY.access_key_id else None)
    audit.changes.extend(changes)
    return audit


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


def test_sound_versions_pass() -> None:
    sound = [version("a", minutes(0)), version("a", minutes(10)), version("b", minutes(1), uid="uid-b")]
    report = audit_of(*sound).report(end=minutes(12).timestamp())
    report.assert_clean()
    assert (report.versions, report.secrets) == (3, 2) and report.min_margin is not None


def test_every_kind_of_damage_is_named() -> None:
    other = token(minutes(0.5))
    cases: dict[str, Any] = {
        "half-written": [version("a", minutes(0), dsn="<drop>")],
        "two generations": [version("a", minutes(0), dsn=f"postgresql://{USER}:{quote(other, safe='')}@{HOST}:"
                                                         f"{PORT}/orders")],
        "expires-at ahead of the token": [version("a", minutes(0), **{"expires-at": rfc(minutes(20))})],
        "dead while current": [version("a", minutes(0)), version("a", minutes(16))],
        "owner changed": [version("a", minutes(0)), version("a", minutes(1), uid="uid-2")],
        "not a token": [version("a", minutes(0), tok="hunter2")],
    }
    for what, changes in cases.items():
        report = audit_of(*changes).report(end=changes[-1].at + 1)
        assert report.expired or report.corrupt, what
    twins = audit_of(version("a", minutes(0)), version("b", minutes(0))).report(end=minutes(1).timestamp())
    assert len(twins.duplicates) == 1
    gone = version("a", minutes(0))
    deleted = audit_of(gone, Change(gone.at + 1, "DELETED", "Secret", gone.obj)).report(end=gone.at + 2)
    assert deleted.deleted == ["ns/a"]
    expected = audit_of(gone, Change(gone.at + 1, "DELETED", "Secret", gone.obj))
    expected.expect_deletion("ns", "a")
    assert expected.report(end=gone.at + 2).deleted == []
    assert "hunter2" not in str(audit_of(*cases["not a token"]).report().corrupt)


class FakeServer:
    """Just enough of the API server for the audit's watches: a history per collection, watches that end
    after two events (so the audit must resume), and compaction (older resumes get 410 Gone)."""

    def __init__(self) -> None:
        self.rv, self.compacted, self.paused = 10, 0, False
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.resumes: list[tuple[str, int]] = []

    def write(self, path: str, type_: str, name: str) -> dict[str, Any]:
        self.rv += 1
        obj = {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(self.rv)}}
        self.history.setdefault(path, []).append((self.rv, type_, obj))
        return obj

    def state(self, path: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for _, type_, obj in self.history.get(path, []):
            if type_ == "DELETED":
                out.pop(obj["metadata"]["name"], None)
            else:
                out[obj["metadata"]["name"]] = obj
        return out

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> tuple[int, Any]:
        base, _, name = path.rpartition("/")
        if method == "GET":
            return 200, {"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.state(path).values())}
        if method == "PATCH":
            return (200, self.write(base, "MODIFIED", name)) if name in self.state(base) else (404, {})
        return 201, self.write(path, "ADDED", body["metadata"]["name"])

    def watch(self, path: str, timeout: float) -> Iterator[tuple[int, dict[str, Any]]]:
        base, _, query = path.partition("?")
        rv = int(parse_qs(query)["resourceVersion"][0])
        self.resumes.append((base, rv))
        if rv < self.compacted:
            yield 200, {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
            return
        sent, deadline = 0, time.monotonic() + 0.2
        while sent < 2 and time.monotonic() < deadline and not self.paused:  # paused: a broken connection
            pending = [e for e in self.history.get(base, []) if e[0] > rv]
            if not pending:
                time.sleep(0.005)
                continue
            rv, type_, obj = pending[0]
            sent += 1
            yield 200, {"type": type_, "object": obj}


def test_the_audit_resumes_where_it_left_off_and_names_what_it_could_not_see() -> None:
    server = FakeServer()
    secrets = "/api/v1/namespaces/ns/secrets"
    with Audit(server, lambda akid: None, ["ns"]) as audit:
        written = [server.write(secrets, "ADDED" if i == 0 else "MODIFIED", "a")["metadata"]["resourceVersion"]
                   for i in range(7)]
        audit.sync()
        # Every version, in order, though each watch ended after two events; each resume from the last seen.
        assert [str(c.rv) for c in audit.writes("ns", "a")] == written
        resumed = {rv for path, rv in server.resumes if path == secrets}
        assert resumed <= {10, *map(int, written)} and len(resumed) >= 4 and not audit.gaps
        # Blind (the watch paused), then compacted: two versions of "a" pass unseen and resuming gets 410.
        server.paused = True
        time.sleep(0.3)
        server.write(secrets, "MODIFIED", "a")
        last = server.write(secrets, "MODIFIED", "a")["metadata"]["resourceVersion"]
        server.compacted, server.paused = server.rv + 1, False
        audit.sync()
        assert audit.resyncs >= 1 and str(audit.writes("ns", "a")[-1].rv) == last
        report = audit.report()
    assert report.gaps and "ns/['a']" in report.gaps[0]
    with pytest.raises(AssertionError, match="unaudited gaps"):
        report.assert_clean()
