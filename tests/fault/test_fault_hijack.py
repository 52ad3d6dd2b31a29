"""A resource whose target names a Secret it did not create is refused, and nothing is overwritten:
another resource's Secret, one that two resources race for, one forged to look managed, one another
controller owns, and one a resource retargets onto. The audit sees every write to every Secret."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import (
    CREDENTIAL_LABEL,
    EXPIRES_ANN,
    ISSUED_ANN,
    MANAGED_BY,
    Audit,
    call,
    controller_uid,
    credential,
    decode,
    login,
    parse_time,
    ready_reason,
    request_refresh,
    secret,
    stamp,
    wait_for,
)
from tests.fault._figures import record, record_audit


def conflict(cluster: RealCluster, ns: str, name: str) -> str:
    """Wait for Ready=False SecretConflict; return its message."""
    obj = wait_for(f"{name} SecretConflict", lambda: ready_reason(cluster, ns, name) == ("False", "SecretConflict")
                   and cluster.get("rdsiam.io/v1alpha1", "RdsIamCredential", name, ns), timeout=15)
    return next(c["message"] for c in obj["status"]["conditions"] if c["type"] == "Ready")


def rotated(audit: Audit, ns: str, name: str, requested: float) -> bool:
    """The Secret was written with a token issued at or after ``requested`` (what ``request_refresh``
    returned: whole seconds, strictly after every earlier issue)."""
    return any(parse_time(((c.obj.get("metadata") or {}).get("annotations") or {}).get(ISSUED_ANN) or
                          "1970-01-01T00:00:00Z").timestamp() >= requested
               for c in audit.writes(ns, name, since=requested))


def uid(cluster: RealCluster, ns: str, name: str) -> str:
    return str((cluster.get("rdsiam.io/v1alpha1", "RdsIamCredential", name, ns) or {})["metadata"]["uid"])


def test_targets_it_did_not_create_are_refused_and_never_overwritten(
    cluster: RealCluster, sts: Any, rds: Any, spaces: Callable[[str], str], operator_factory: Any, app_user: str,
) -> None:
    ns = spaces("hijack")
    operator_factory(args=["--namespace", ns])
    with Audit(cluster, sts.lookup, [ns]) as audit:
        # The victims: a resource's own Secret, one forged to look managed, one another controller owns.
        cluster.apply_manifest(credential(rds, "owner", ns))
        wait_for("owner Ready", lambda: ready_reason(cluster, ns, "owner") == ("True", "TokenIssued"))
        now = time.time()
        # Forged: the labels and annotations of a managed Secret, no ownerReference (a dangling one would
        # be garbage-collected, as by cluster-controller-manager).
        forged = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {
            "name": "forged", "namespace": ns, "labels": {MANAGED_BY: "rdsiam", CREDENTIAL_LABEL: "thief-forged"},
            "annotations": {ISSUED_ANN: stamp(now), EXPIRES_ANN: stamp(now + 900)}},
            "data": {"password": base64.b64encode(b"the-real-app-password").decode()}}
        web = cluster.apply_manifest({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web",
                                   "namespace": ns}, "spec": {"selector": {"matchLabels": {"app": "web"}},
                                   "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                                       {"name": "web", "image": "web"}]}}}})[0]
        deploy = {"apiVersion": "v1", "kind": "Secret", "metadata": {
            "name": "app-config", "namespace": ns, "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": web["metadata"]["uid"],
                "controller": True}]}, "stringData": {"password": "hunter2"}}
        call(cluster, "POST", f"/api/v1/namespaces/{ns}/secrets", forged)
        call(cluster, "POST", f"/api/v1/namespaces/{ns}/secrets", deploy)
        victims = {n: (secret(cluster, ns, n) or {})["metadata"]["resourceVersion"] for n in ("owner", "forged",
                                                                                          "app-config")}
        started = time.time()
        cluster.apply_manifest([
            credential(rds, "thief", ns, target={"name": "owner"}),
            credential(rds, "thief-forged", ns, target={"name": "forged"}),
            credential(rds, "thief-deploy", ns, target={"name": "app-config"}),
            # Two resources racing for a Secret that does not exist yet.
            credential(rds, "racer-1", ns, target={"name": "shared"}),
            credential(rds, "racer-2", ns, target={"name": "shared"}),
        ])
        messages = {n: conflict(cluster, ns, n) for n in ("thief", "thief-forged", "thief-deploy")}
        assert f"{ns}/owner" in messages["thief"] and "RdsIamCredential/owner" in messages["thief"]
        assert f"{ns}/forged" in messages["thief-forged"]
        assert "Deployment/web" in messages["thief-deploy"]
        shared = wait_for("the shared Secret", lambda: secret(cluster, ns, "shared"))
        winner_uid = controller_uid(shared)
        winner = next(n for n in ("racer-1", "racer-2") if uid(cluster, ns, n) == winner_uid)
        loser = "racer-2" if winner == "racer-1" else "racer-1"
        assert f"{ns}/shared" in conflict(cluster, ns, loser)
        # The legitimate owners keep working; the thieves' refresh requests change nothing.
        requested = request_refresh(cluster, ns, ["owner", winner, "thief", loser, "thief-forged"], audit)
        wait_for("owner and winner rotated", lambda: all(
            rotated(audit, ns, s, requested) for s in ("owner", "shared")), timeout=15)
        # A resource retargeted onto another's Secret is refused too; its old Secret stays its own.
        cluster.apply_manifest(credential(rds, winner, ns, target={"name": "owner"}))
        assert "RdsIamCredential/owner" in conflict(cluster, ns, winner)
        time.sleep(1.5)  # time for a wrong write to show
        report = audit.report()
    # Booleans only in these assertions: a Secret the operator wrongly wrote would hold a token, and a
    # failing assertion prints the values it compares.
    for name in ("forged", "app-config"):
        written = bool(audit.writes(ns, name, since=started))
        assert not written, f"{name} was written"
        assert (secret(cluster, ns, name) or {})["metadata"]["resourceVersion"] == victims[name]
    forged_kept = decode(secret(cluster, ns, "forged") or {}) == {"password": "the-real-app-password"}
    assert forged_kept, "the forged Secret's data changed"
    deploy_kept = decode(secret(cluster, ns, "app-config") or {}) == {"password": "hunter2"}
    assert deploy_kept, "the Deployment's Secret's data changed"
    owner_uid = uid(cluster, ns, "owner")
    for name, expected in (("owner", owner_uid), ("shared", winner_uid)):
        changes = audit.writes(ns, name)
        same_owner = bool(changes) and all(controller_uid(c.obj) == expected for c in changes)
        assert same_owner, f"{name} changed hands"
        who = login(decode(secret(cluster, ns, name) or {}))  # out of the assertion: its argument holds the token
        assert who == app_user
    for name in ("thief", "thief-forged", "thief-deploy", loser):
        assert ready_reason(cluster, ns, name) == ("False", "SecretConflict")
    record("hostile targets", (
        "another resource's Secret, a Secret forged to look managed, one owned by a Deployment, a Secret two "
        f"resources raced for ({winner} won) and a retarget onto another's Secret: 5 refusals (SecretConflict "
        f"naming the Secret), 0 foreign Secrets written, owners unchanged over {report.versions} versions"))
    record_audit("hostile targets", report)
    report.assert_clean()
