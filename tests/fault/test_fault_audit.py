"""The audit every fault test relies on really fails: fed Secret versions that are half-written, mix two
generations, hold a token that dies while still current, claim a later expiry than the token has,
change owner, are duplicated or deleted, it names each; fed sound ones, it finds nothing. Pure: the
versions are made here, signed with a credential the lookup knows."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any
from urllib.parse import quote

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
    audit = Audit(kube=None, lookup=lambda akid: KEY if akid == KEY.access_key_id else None)
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
