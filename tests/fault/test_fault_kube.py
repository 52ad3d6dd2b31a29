"""Kubernetes API faults: 409 conflicts, 5xx, dropped watches, 410 Gone on resume, slow responses.

The operator keeps going through each: every resource ends Ready with a fresh Secret, and the audit
(:mod:`tests.fault._audit`) finds no Secret version that is half-written, mixes two generations,
holds a dead token, lost its owner or has a twin. The faults are injected by a proxy between the operator
and kube-apiserver (``kube_faults``); each operator watches only its test's namespace, so the faults
(injected on that namespace's paths) hit nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from rdsiam.testing.kubefaults import KubeFaultProxy
from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import (
    Audit,
    all_ready,
    call,
    credential,
    decode,
    login,
    request_refresh,
    secret,
    wait_for,
)
from tests.fault._figures import record, record_audit

N = 6


def converge(
    cluster: RealCluster, audit: Audit, ns: str, names: list[str], since: float, timeout: float = 30.0,
) -> float:
    """Wait until every resource has a Secret written after ``since`` and is Ready; return the time."""
    wait_for("every Secret rewritten and Ready", lambda: all(audit.writes(ns, n, since=since) for n in names)
             and all_ready(cluster, ns, names), timeout=timeout)
    return time.time()


def start(cluster: RealCluster, rds: Any, ns: str, operator_factory: Any, audit: Audit, names: list[str]) -> Any:
    op = operator_factory(args=["--namespace", ns])
    t0 = time.time()
    cluster.apply_manifest([credential(rds, n, ns) for n in names])
    converge(cluster, audit, ns, names, t0)
    return op


def unexpected_errors(op: Any) -> list[str]:
    return [line for line in op.log().splitlines() if "Unexpected error" in line]


def test_conflicts_and_server_errors_on_every_call(
    cluster: RealCluster, kube_faults: KubeFaultProxy, sts: Any, rds: Any, spaces: Callable[[str], str],
    operator_factory: Any, app_user: str,
) -> None:
    ns = spaces("cluster-5xx")
    names = [f"db{i}" for i in range(N)]
    with Audit(cluster, sts.lookup, [ns]) as audit:
        op = start(cluster, rds, ns, operator_factory, audit, names)
        secrets_path, status_path = rf"/namespaces/{ns}/secrets/", rf"/namespaces/{ns}/rdsiamcredentials/[^/]+/status"
        faults = [
            kube_faults.inject(secrets_path, method="PUT", status=409, times=4),
            kube_faults.inject(status_path, method="PATCH", status=409, times=3),
            kube_faults.inject(secrets_path, method="PUT", status=500, times=3),
            kube_faults.inject(secrets_path, method="GET", status=503, times=3),
            kube_faults.inject(rf"/namespaces/{ns}/events", method="POST", status=500, times=4),
            kube_faults.inject(status_path, method="PATCH", status=503, times=3),
        ]
        requested = request_refresh(cluster, ns, names, audit)
        done = converge(cluster, audit, ns, names, requested, timeout=40)
        report = audit.report()
    hits = sum(f.hits for f in faults)
    assert hits >= 10, f"only {hits} faults fired"
    for name in names:
        # One committed write per refresh: failed writes leave nothing behind, nothing is written twice.
        assert len(audit.writes(ns, name, since=requested)) == 1, name
        assert login(decode(secret(cluster, ns, name) or {})) == app_user
    reasons = {r for n in names for _, s, r in audit.ready(ns, n, since=requested) if s == "False"}
    assert reasons <= {"KubernetesError"}, reasons
    record("Kubernetes 409/5xx", f"{hits} faults injected (409 and 500 on Secret PUT, 503 on Secret GET, 409 and 503 "
           f"on status PATCH, 500 on Event POST) during one refresh of {N} resources; all Ready with fresh "
           f"Secrets {done - requested:.1f} s after the request; Ready=False reasons seen: {sorted(reasons)}; "
           f"unexpected errors logged: {len(unexpected_errors(op))}")
    record_audit("Kubernetes 409/5xx", report)
    report.assert_clean()


def test_dropped_watches_and_410_gone_on_resume_miss_nothing(
    cluster: RealCluster, kube_faults: KubeFaultProxy, sts: Any, rds: Any, spaces: Callable[[str], str],
    operator_factory: Any, app_user: str,
) -> None:
    ns = spaces("cluster-watch")
    names = [f"db{i}" for i in range(4)]
    watches = rf"^(/api/v1/namespaces/{ns}/secrets|/apis/rdsiam.io/v1alpha1/namespaces/{ns}/rdsiamcredentials)$"
    with Audit(cluster, sts.lookup, [ns]) as audit:
        op = start(cluster, rds, ns, operator_factory, audit, names)
        dropped, recoveries = 0, []
        # Dropped connections: the operator re-lists and re-watches; a Secret deleted meanwhile comes back.
        for round_ in range(4):
            victim = names[round_ % len(names)]
            dropped += kube_faults.drop_watches(watches)
            audit.expect_deletion(ns, victim)
            t0 = time.time()
            call(cluster, "DELETE", f"/api/v1/namespaces/{ns}/secrets/{victim}")
            wait_for(f"{victim} recreated", lambda v=victim: secret(cluster, ns, v), timeout=15)
            recoveries.append(time.time() - t0)
        # 410 Gone on resume: the streams end normally and the operator re-watches from its last
        # resourceVersion; that request takes 1.5 s, and meanwhile a Secret is deleted, a resource added and
        # the history compacted (etcd compaction and an API server restart, which also cuts every
        # connection). The API server answers 410 Gone: the operator must re-list.
        for path in watches.strip("^$()").split("|"):
            kube_faults.inject(rf"^{path}$", method="GET", latency=1.5, times=1, watch=True)
        ended = kube_faults.end_watches(watches)
        audit.expect_deletion(ns, names[0])
        t0 = time.time()
        call(cluster, "DELETE", f"/api/v1/namespaces/{ns}/secrets/{names[0]}")
        cluster.apply_manifest(credential(rds, "late", ns))
        audit.sync()  # the audit's own watches expire too: nothing may be in flight
        cluster.compact()
        wait_for("the deleted Secret back and the new resource served",
                 lambda: secret(cluster, ns, names[0]) and secret(cluster, ns, "late"), timeout=20)
        gone_recovery = time.time() - t0
        # ...and a 410 Gone answered to the very first watch after a listing (a list older than the history).
        for path in watches.strip("^$()").split("|"):
            kube_faults.inject(rf"^{path}$", method="GET", status=410, times=1, watch=True)
        dropped += kube_faults.drop_watches(watches)
        cluster.apply_manifest(credential(rds, "later", ns))
        wait_for("the resource added meanwhile served", lambda: secret(cluster, ns, "later"), timeout=20)
        names += ["late", "later"]
        wait_for("all Ready", lambda: all_ready(cluster, ns, names), timeout=10)
        report = audit.report()
    relists = [line for line in op.log().splitlines() if "Restarting the watch-stream" in line]  # kopf, on 410
    assert relists, "the operator never saw 410 Gone"
    assert audit.resyncs >= 2, "the compaction did not expire the audit's own watches"  # so it was real
    for name in names:
        assert login(decode(secret(cluster, ns, name) or {})) == app_user
    assert not unexpected_errors(op)
    record("Kubernetes dropped watches", (
        f"{dropped} watch connections dropped in 5 rounds (the last re-watch answered 410 Gone); a Secret deleted "
        f"meanwhile was recreated after {min(recoveries):.2f}-{max(recoveries):.2f} s"))
    record("Kubernetes 410 Gone on resume", (
        f"{ended} watches ended normally and resumed 1.5 s later; meanwhile a Secret was deleted, a resource added "
        f"and the history compacted: {len(relists)} re-lists after 410 Gone; the Secret was back and the new "
        f"resource served {gone_recovery:.1f} s later; the audit re-listed {audit.resyncs} times with "
        f"{len(report.gaps)} gaps"))
    record_audit("Kubernetes watches", report)
    report.assert_clean()


@pytest.mark.slow
def test_slow_api_and_client_timeouts(
    cluster: RealCluster, kube_faults: KubeFaultProxy, sts: Any, rds: Any, spaces: Callable[[str], str],
    operator_factory: Any, app_user: str,
) -> None:
    ns = spaces("cluster-slow")
    names = [f"db{i}" for i in range(N)]
    with Audit(cluster, sts.lookup, [ns]) as audit:
        op = start(cluster, rds, ns, operator_factory, audit, names)
        # Every call in the namespace takes 0.5 s; two Secret writes hang longer than the client waits (10 s).
        timeouts = kube_faults.inject(rf"/namespaces/{ns}/secrets/", method="PUT", latency=11.0, times=2)
        slow = kube_faults.inject(rf"/namespaces/{ns}/", latency=0.5, times=None, watch=False)
        requested = request_refresh(cluster, ns, names, audit)
        try:
            done = converge(cluster, audit, ns, names, requested, timeout=60)
        finally:
            slow.remove()
        report = audit.report()
    assert timeouts.hits == 2
    for name in names:
        assert len(audit.writes(ns, name, since=requested)) == 1, name
        assert login(decode(secret(cluster, ns, name) or {})) == app_user
    reasons = {r for n in names for _, s, r in audit.ready(ns, n, since=requested) if s == "False"}
    record("Kubernetes slow responses", f"0.5 s added to every call, 2 Secret writes hung 11 s (client timeout 10 s): "
           f"{N} resources Ready with fresh Secrets {done - requested:.1f} s after the request; Ready=False reasons "
           f"seen: {sorted(reasons)}; unexpected errors logged: {len(unexpected_errors(op))}")
    record_audit("Kubernetes slow responses", report)
    report.assert_clean()
    assert not unexpected_errors(op)
