"""The operator's life on the node, run after every other e2e test (it ends with `helm uninstall`):
two replicas and a leader that dies, `helm upgrade` with changed values, and `helm uninstall`. The apps
started by test_node_apps keep logging in throughout; what the front door saw of them is the record.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.rds import IamPostgres

from .conftest import RELEASE_NS, Release, app_logins, on_node, wait_until

pytestmark = [on_node, pytest.mark.last]

LEASE = "rdsiam-operator"  # the chart's leaderElection.leaseName


def holder(kubectl: Kubectl) -> str | None:
    lease = kubectl.get("lease", LEASE, RELEASE_NS)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


def test_two_replicas_fail_over_when_the_leader_pod_is_deleted(
    shop: str, release: Release, kubectl: Kubectl, rds: IamPostgres
) -> None:
    # helm upgrade with a changed value: two replicas turn leader election on.
    release.run_helm("upgrade", release.name, str(release.chart), "-n", release.namespace, "--reuse-values",
                     "--set", "replicaCount=2", "--wait", "--timeout", "3m")
    pods = release.wait_ready(replicas=2)
    names = {p["metadata"]["name"] for p in pods}
    leader = wait_until("a leader", lambda: (h := holder(kubectl)) in names and h, timeout=60)
    standby = (names - {leader}).pop()

    release.archive_logs()
    began, since = time.monotonic(), datetime.now(UTC)
    kubectl.run("delete", "pod", "-n", release.namespace, leader, "--wait=false")
    successor = wait_until("the other replica to lead", lambda: (h := holder(kubectl)) and h != leader and h,
                           timeout=90, interval=0.2)
    failover = time.monotonic() - began  # the standby or the Deployment's replacement pod: whichever is first

    # The new leader refreshes: a requested refresh is carried out.
    before = kubectl.secret_data("orders-db", shop)
    assert before is not None
    time.sleep(1.1)  # X-Amz-Date has one-second resolution
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kubectl.run("annotate", "-n", shop, "rdsiamcredential", "orders-db", f"rdsiam.io/refresh-requested-at={stamp}",
                "--overwrite")
    kubectl.wait("a token from the new leader", lambda: (d := kubectl.secret_data("orders-db", shop)) and
                 d["password"] != before["password"], timeout=30, interval=0.5)
    refreshed = time.monotonic() - began
    role = "the standby" if successor == standby else "the replacement pod"
    print(f"failover: leader deleted -> {role} holds the Lease after {failover:.1f} s; "
          f"requested refresh done {refreshed:.1f} s after the delete")

    # The apps noticed nothing: no failed login while the leader changed, and no Secret expired.
    time.sleep(15)  # a kubelet sync period and more
    seen = app_logins(kubectl, rds, since=since)
    assert seen, "no app logged in during the failover"
    failed = {app: v["failed"][:3] for app, v in seen.items() if v["failed"]}
    assert not failed, failed
    for secret in kubectl.list("secrets", shop, selector="app.kubernetes.io/managed-by=rdsiam"):
        expires = datetime.fromisoformat(base64.b64decode(secret["data"]["expires-at"]).decode())
        assert expires > datetime.now(UTC), secret["metadata"]["name"]


def test_helm_uninstall_keeps_the_crd_the_resources_and_their_secrets(
    shop: str, release: Release, kubectl: Kubectl
) -> None:
    creds = {c["metadata"]["name"] for c in kubectl.list("rdsiamcredentials", shop)}
    secrets = {s["metadata"]["name"]: s["metadata"]["uid"]
               for s in kubectl.list("secrets", shop, selector="app.kubernetes.io/managed-by=rdsiam")}
    assert creds and secrets
    release.archive_logs()
    release.run_helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "2m")
    wait_until("the operator pods gone", lambda: not release.pods(), timeout=60)
    assert kubectl.get("crd", "rdsiamcredentials.rdsiam.io") is not None  # crds.keep
    assert {c["metadata"]["name"] for c in kubectl.list("rdsiamcredentials", shop)} == creds
    time.sleep(5)  # the garbage collector would act by now
    after = {s["metadata"]["name"]: s["metadata"]["uid"]
             for s in kubectl.list("secrets", shop, selector="app.kubernetes.io/managed-by=rdsiam")}
    assert after == secrets
