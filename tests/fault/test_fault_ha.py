"""Two replicas with Lease-based leader election: the leader is SIGKILLed in the middle of refreshes.

- While one replica leads, the other refreshes nothing (its metrics count no refresh).
- The leader is killed with Secret writes in flight and replaced at once by a new pod (new identity),
  as a Deployment does; the old Lease still names the dead leader, so nobody acts until it expires.
  Then exactly one of the survivors takes over within the Lease duration plus one renew period, and
  serves the refreshes the dead leader left undone.
- The Lease API then stalls longer than the client waits (both replicas' Lease reads time out): the
  election keeps running and refreshes are served again by exactly one replica.
- Throughout, the audit (:mod:`tests.fault._audit`) finds every Secret version complete, of one
  generation, with a live token, and no Secret deleted; every Secret logs in at the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from rdsiam.testing.kubefaults import KubeFaultProxy
from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import (
    Audit,
    all_ready,
    credential,
    decode,
    login,
    parse_time,
    request_refresh,
    secret,
    wait_for,
    wait_settled,
)
from tests.fault._figures import record, record_audit

N = 6
LEASE = "rdsiam-operator"
LEASE_SECONDS, RENEW_EVERY = 15, 2  # rdsiam.operator.election (client-go defaults)


def refreshes(op: Any) -> float:
    """Successful refreshes this replica made (its own metrics page)."""
    text = op.metrics()
    return sum(float(m.group(1)) for m in re.finditer(r'^rdsiam_refreshes_total\{reason="[^"]*",result="ok"\} (\S+)$',
                                                      text, re.M))


def leading(op: Any) -> bool:
    return bool(re.search(r"^rdsiam_leader 1\.0$", op.metrics(), re.M))


def holder(cluster: RealCluster, ns: str) -> str | None:
    lease = cluster.get("coordination.k8s.io/v1", "Lease", LEASE, ns)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def unserved(cluster: RealCluster, ns: str, names: list[str], requested: float) -> list[str]:
    out = []
    for name in names:
        issued = (((secret(cluster, ns, name) or {}).get("metadata") or {}).get("annotations") or {}).get(
            "rdsiam.io/issued-at")
        if not issued or parse_time(issued).timestamp() < requested:
            out.append(f"{name}: refresh not served")
    return out + ([] if all_ready(cluster, ns, names) else ["not all Ready"])


@pytest.mark.slow
def test_leader_killed_mid_refresh_hands_over_to_exactly_one_replica(
    cluster: RealCluster, kube_faults: KubeFaultProxy, sts: Any, rds: Any, spaces: Callable[[str], str],
    operator_factory: Any, app_user: str,
) -> None:
    ns = spaces("ha")
    names = [f"db{i}" for i in range(N)]

    def replica(identity: str) -> Any:
        return operator_factory(args=["--namespace", ns, "--leader-election", "--lease-namespace", ns],
                                env={"POD_NAME": identity})

    with Audit(cluster, sts.lookup, [ns]) as audit:
        a = replica("replica-a")
        wait_for("replica-a leading", lambda: holder(cluster, ns) == "replica-a" and leading(a), timeout=15)
        b = replica("replica-b")
        cluster.apply_manifest([credential(rds, n, ns) for n in names])
        wait_for("first tokens", lambda: all_ready(cluster, ns, names), timeout=15)
        assert refreshes(a) == N and refreshes(b) == 0 and not leading(b)

        # Kill the leader with Secret writes in flight; its replacement pod starts at once.
        slow = kube_faults.inject(rf"/namespaces/{ns}/secrets/", method="PUT", latency=0.5, times=None)
        requested = request_refresh(cluster, ns, names, audit)
        time.sleep(0.3)
        a.kill()
        killed = time.time()
        slow.remove()
        cut = len(unserved(cluster, ns, names, requested)) - (0 if all_ready(cluster, ns, names) else 1)
        a.env["POD_NAME"] = "replica-a2"
        a.start()
        assert holder(cluster, ns) == "replica-a"  # the dead leader's Lease is still valid: nobody acts yet
        new = wait_for("a new leader", lambda: holder(cluster, ns) in ("replica-a2", "replica-b")
                       and holder(cluster, ns), timeout=LEASE_SECONDS + RENEW_EVERY + 5)
        takeover = time.time() - killed
        wait_settled("the cut refreshes served by the new leader", lambda: unserved(cluster, ns, names, requested))
        served = time.time() - killed
        leader, follower = (a, b) if new == "replica-a2" else (b, a)
        assert leading(leader) and not leading(follower)
        assert refreshes(follower) == 0, "the follower refreshed tokens"
        assert refreshes(leader) >= cut

        # The Lease API stalls past the client timeout (10 s): both replicas' Lease reads fail; the
        # election goes on, and the next refreshes are made by exactly one replica.
        stall = kube_faults.inject(rf"/namespaces/{ns}/leases/{LEASE}$", method="GET", latency=11.0, times=2)
        wait_for("both Lease reads stalled", lambda: stall.hits == 2, timeout=RENEW_EVERY + 2)
        stalled = time.time()
        before = {id(op): refreshes(op) for op in (a, b)}
        renewed = wait_for("the Lease renewed after the stall", lambda: (lease := cluster.get(
            "coordination.k8s.io/v1", "Lease", LEASE, ns)) and parse_time(lease["spec"]["renewTime"]).timestamp()
            > stalled + 5 and lease, timeout=LEASE_SECONDS + 2 * RENEW_EVERY + 10)
        after_stall = time.time() - stalled
        requested = request_refresh(cluster, ns, names, audit)
        wait_settled("refreshes served after the stall", lambda: unserved(cluster, ns, names, requested), timeout=25)
        acted = [op for op in (a, b) if refreshes(op) > before[id(op)]]
        assert len(acted) == 1, "both replicas refreshed tokens after the stall"
        assert leading(acted[0]) and renewed["spec"]["holderIdentity"] == acted[0].env["POD_NAME"]
        for op in (a, b):
            assert "Lease" in op.log() and op.proc.poll() is None
        for name in names:
            assert login(decode(secret(cluster, ns, name) or {})) == app_user
        report = audit.report()
    record("HA failover", (
        f"leader SIGKILLed with {cut} of {N} refreshes in flight; a new pod started at once; {new} took over "
        f"{takeover:.1f} s after the kill (Lease {LEASE_SECONDS} s + renew {RENEW_EVERY} s) and served the cut "
        f"refreshes {served:.1f} s after it; the follower made 0 refreshes"))
    record("HA Lease API stall", (
        f"Lease reads hung 11 s on both replicas (client timeout 10 s); the Lease was renewed again "
        f"{after_stall:.1f} s after the stall began; the next refreshes came from exactly one replica"))
    record_audit("HA", report)
    report.assert_clean()
