"""SIGKILL at random points of a refresh, many times.

Each round asks for a refresh of some resources, slows one kind of call the refresh makes (Secret
write, status write, Event) so the kill lands inside it, SIGKILLs the operator after a random delay
and restarts it. After each restart:

- every Secret logs in through the IAM-checking PostgreSQL;
- a Secret whose refresh had completed before the kill is not written again (same resourceVersion);
  one whose refresh was cut short is written exactly once;
- status agrees with the Secret (Ready, expiresAt);
- and over the whole run the audit (:mod:`tests.fault._audit`) finds no Secret deleted, half-written,
  of two generations or holding a dead token.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from rdsiam.testing.kubefaults import KubeFaultProxy
from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import (
    ISSUED_ANN,
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

N = 8
ROUNDS = 8
SEED = 20240611


def issued_since(obj: dict[str, Any] | None, requested: float) -> bool:
    issued = ((obj or {}).get("metadata") or {}).get("annotations", {}).get(ISSUED_ANN)
    return bool(issued) and parse_time(issued).timestamp() >= requested


def served(cluster: RealCluster, ns: str, name: str, requested: float) -> bool:
    return issued_since(secret(cluster, ns, name), requested)


def status_matches(cluster: RealCluster, ns: str, name: str) -> bool:
    obj = cluster.get("rdsiam.io/v1alpha1", "RdsIamCredential", name, ns) or {}
    data = decode(secret(cluster, ns, name) or {})
    return (obj.get("status") or {}).get("expiresAt") == data.get("expires-at")


def lagging(cluster: RealCluster, ns: str, names: list[str], subset: list[str], requested: float) -> list[str]:
    """What is not yet as it should be (empty when all is well): a clear message when waiting fails."""
    out = [f"{n}: refresh not served" for n in subset if not served(cluster, ns, n, requested)]
    out += [f"{n}: not Ready" for n in names if not all_ready(cluster, ns, [n])]
    return out + [f"{n}: status.expiresAt is not the Secret's" for n in names if not status_matches(cluster, ns, n)]


@pytest.mark.slow
def test_sigkill_during_refreshes_loses_nothing_and_rewrites_nothing_fresh(
    cluster: RealCluster, kube_faults: KubeFaultProxy, sts: Any, rds: Any, spaces: Callable[[str], str],
    operator_factory: Any, app_user: str,
) -> None:
    rng = random.Random(SEED)
    ns = spaces("kill")
    names = [f"db{i}" for i in range(N)]
    slow_calls = {
        "Secret write": (rf"/namespaces/{ns}/secrets/", "PUT"),
        "status write": (rf"/namespaces/{ns}/rdsiamcredentials/[^/]+/status", "PATCH"),
        "Event": (rf"/namespaces/{ns}/events", "POST"),
    }
    stats: dict[str, Any] = {"cut": 0, "kept": 0, "rewritten_fresh": [], "restart": [], "catch_up": [], "logins": 0,
                             "points": {}}
    with Audit(cluster, sts.lookup, [ns]) as audit:
        op = operator_factory(args=["--namespace", ns])
        cluster.apply_manifest([credential(rds, n, ns) for n in names])
        wait_for("first tokens", lambda: all_ready(cluster, ns, names), timeout=20)
        for round_ in range(ROUNDS):
            point = rng.choice([*slow_calls, "no slowdown"])
            stats["points"][point] = stats["points"].get(point, 0) + 1
            fault = None
            if point in slow_calls:
                path, method = slow_calls[point]
                fault = kube_faults.inject(path, method=method, latency=rng.uniform(0.1, 0.5), times=None)
            subset = rng.sample(names, rng.randint(2, N))
            requested = request_refresh(cluster, ns, subset, audit)
            time.sleep(rng.uniform(0.0, 0.6))
            op.kill()
            if fault is not None:
                fault.remove()
            # One read of each Secret says both what was done and from which version on a write is new
            # (a slowed write may still land after the kill: then it is the one write after this read).
            after_kill = {n: secret(cluster, ns, n) or {} for n in names}
            versions = {n: after_kill[n]["metadata"]["resourceVersion"] for n in names}
            done = {n for n in names if n not in subset or issued_since(after_kill[n], requested)}
            stats["cut"] += len(set(names) - done)
            stats["kept"] += len(done & set(subset))
            t0 = time.monotonic()
            op.start()
            stats["restart"].append(time.monotonic() - t0)
            wait_settled("every requested refresh served after the restart",
                         lambda r=requested, s=subset: lagging(cluster, ns, names, s, r), timeout=20)
            stats["catch_up"].append(time.monotonic() - t0)
            time.sleep(1.0)  # time for a needless write to show
            audit.sync()
            for name in names:
                writes = audit.writes(ns, name, after=int(versions[name]))
                if name in done and writes:
                    stats["rewritten_fresh"].append(f"round {round_}: {name}")
                if name not in done:
                    assert len(writes) == 1, f"round {round_}: {name} written {len(writes)} times after the restart"
                if name in done:
                    assert (secret(cluster, ns, name) or {})["metadata"]["resourceVersion"] == versions[name]
                assert login(decode(secret(cluster, ns, name) or {})) == app_user
                stats["logins"] += 1
        report = audit.report()
    record("SIGKILL during refresh", (
        f"{ROUNDS} kills (slowed at kill time: {stats['points']}); refreshes cut short by the kill: {stats['cut']}, "
        f"completed before it: {stats['kept']}; restart to healthy {min(stats['restart']):.1f}-"
        f"{max(stats['restart']):.1f} s, to every refresh served and status in line {max(stats['catch_up']):.1f} s "
        f"at most; fresh Secrets rewritten after a restart: {len(stats['rewritten_fresh'])}; logins after restarts: "
        f"{stats['logins']}, all accepted"))
    record_audit("SIGKILL during refresh", report)
    assert not stats["rewritten_fresh"], stats["rewritten_fresh"]
    report.assert_clean()
