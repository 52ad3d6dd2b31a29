"""The operator's life on the node, run after every other e2e test (it ends with `helm uninstall`):
two replicas and a leader that dies, `helm upgrade` with changed values, and `helm uninstall`. The apps
started by test_node_apps keep logging in throughout; what the front door saw of them is the record.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.rds import IamPostgres

from ._node import CGROUP_ROOT
from .conftest import RELEASE_NS, Release, app_logins, on_node

pytestmark = [on_node, pytest.mark.last]

LEASE = "rdsiam-operator"  # the chart's leaderElection.leaseName


def holder(kubectl: Kubectl) -> str | None:
    lease = kubectl.get("lease", LEASE, RELEASE_NS)
    return ((lease or {}).get("spec") or {}).get("holderIdentity") or None


def refresh(kubectl: Kubectl, namespace: str, what: str, timeout: float) -> None:
    """Ask for a refresh of examples/basic's orders-db (the annotation) and wait for the new token."""
    before = kubectl.secret_data("orders-db", namespace)
    assert before is not None
    time.sleep(1.1)  # X-Amz-Date has one-second resolution
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kubectl.run("annotate", "-n", namespace, "rdsiamcredential", "orders-db",
                f"rdsiam.io/refresh-requested-at={stamp}", "--overwrite")
    kubectl.wait(what, lambda: (d := kubectl.secret_data("orders-db", namespace)) and
                 d["password"] != before["password"], timeout=timeout, interval=0.5)


def kill_container(pod: dict[str, Any]) -> int:
    """SIGKILL every process of the pod's container, found through its cgroup; returns how many."""
    uid = pod["metadata"]["uid"]
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    killed = 0
    pattern = f"{CGROUP_ROOT.strip('/')}/kubepods/**/pod{uid}/{container}/cgroup.procs"
    for procs in Path("/sys/fs/cgroup/pids").glob(pattern):
        for pid in procs.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
    return killed


def test_two_replicas_fail_over_when_the_leader_pod_is_deleted(
    shop: str, release: Release, kubectl: Kubectl, doors: list[IamPostgres]
) -> None:
    # helm upgrade with a changed value: two replicas turn leader election on.
    release.run_helm("upgrade", release.name, str(release.chart), "-n", release.namespace, "--reuse-values",
                     "--set", "replicaCount=2", "--wait", "--timeout", "3m")
    pods = release.wait_ready(replicas=2)
    names = {p["metadata"]["name"] for p in pods}
    leader = kubectl.wait("a leader", lambda: (h := holder(kubectl)) in names and h, timeout=60, interval=1)
    standby = (names - {leader}).pop()

    release.archive_logs()
    began, since = time.monotonic(), datetime.now(UTC)
    kubectl.run("delete", "pod", "-n", release.namespace, leader, "--wait=false")
    successor = kubectl.wait("the other replica to lead", lambda: (h := holder(kubectl)) and h != leader and h,
                           timeout=90, interval=0.2)
    failover = time.monotonic() - began  # the standby or the Deployment's replacement pod: whichever is first

    # The new leader refreshes: a requested refresh is carried out.
    refresh(kubectl, shop, "a token from the new leader", timeout=30)
    refreshed = time.monotonic() - began
    role = "the standby" if successor == standby else "the replacement pod"
    print(f"failover: leader deleted -> {role} holds the Lease after {failover:.1f} s; "
          f"requested refresh done {refreshed:.1f} s after the delete")

    # A crash: the leader's process SIGKILLed (no Lease released); the kubelet restarts the container.
    pod = next(p for p in release.pods() if p["metadata"]["name"] == successor)
    began = time.monotonic()
    killed = kill_container(pod)
    assert killed, "no process found in the leader container's cgroup"
    refresh(kubectl, shop, "a token after the crash", timeout=90)
    print(f"crash: leader's process killed -> requested refresh done {time.monotonic() - began:.1f} s later "
          f"(Lease held by {'the same pod' if holder(kubectl) == successor else 'the other pod'})")

    # The apps noticed nothing: no failed login while the leader changed, and no Secret expired.
    time.sleep(15)  # a kubelet sync period and more
    seen = app_logins(kubectl, doors, since=since)
    assert seen, "no app logged in during the failover"
    failed = {app: v["failed"][:3] for app, v in seen.items() if v["failed"]}
    assert not failed, failed
    for secret in kubectl.list("secrets", shop, selector="app.kubernetes.io/managed-by=rdsiam"):
        # The annotation, kept by every mergePolicy (a Replace template's Secret has no expires-at key).
        expires = datetime.fromisoformat(secret["metadata"]["annotations"]["rdsiam.io/expires-at"])
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
    kubectl.wait("the operator pods gone", lambda: not release.pods(), timeout=60, interval=1)
    assert kubectl.get("crd", "rdsiamcredentials.rdsiam.io") is not None  # crds.keep
    assert {c["metadata"]["name"] for c in kubectl.list("rdsiamcredentials", shop)} == creds
    time.sleep(5)  # the garbage collector would act by now
    after = {s["metadata"]["name"]: s["metadata"]["uid"]
             for s in kubectl.list("secrets", shop, selector="app.kubernetes.io/managed-by=rdsiam")}
    assert after == secrets

    # Each resource keeps kopf's finalizer: deleting one now waits, until the finalizer is removed as the
    # README says; then the resource goes, and the garbage collector takes its Secret.
    name = sorted(creds)[0]
    obj = kubectl.get("rdsiamcredential", name, shop)
    assert obj is not None and "rdsiam.io/finalizer" in obj["metadata"].get("finalizers", [])
    owned = [s["metadata"]["name"] for s in kubectl.list("secrets", shop)
             if any(r.get("uid") == obj["metadata"]["uid"] for r in s["metadata"].get("ownerReferences", []))]
    assert owned
    kubectl.run("delete", "rdsiamcredential", name, "-n", shop, "--wait=false")
    time.sleep(2)
    held = kubectl.get("rdsiamcredential", name, shop)
    assert held is not None and held["metadata"].get("deletionTimestamp")
    kubectl.run("patch", "rdsiamcredential", name, "-n", shop, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}')
    kubectl.wait("the resource gone", lambda: kubectl.get("rdsiamcredential", name, shop) is None, timeout=30)
    kubectl.wait("its Secret collected", lambda: all(kubectl.get("secret", s, shop) is None for s in owned),
                 timeout=60)
