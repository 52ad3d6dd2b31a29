"""Load: 1,000 RdsIamCredentials, 20% of them broken, one operator; the healthy 80% stay on schedule.

The broken fifth is a third each: a host that is no RDS endpoint (InvalidSpec, never retried), a role
STS refuses to let the operator assume (AccessDenied, retried with backoff, through a FaultProxy), and
a target Secret that already exists and is not the operator's (SecretConflict). The healthy ones (half
on the operator's own identity, half on an assumed role) refresh every minute. Resources are created
straight through the real kube-apiserver (``cluster.apply_manifest``); the operator talks to it directly
(no fault proxy) and watches only their namespace.

Measured, for every healthy Secret over the observation window: the time between consecutive tokens
and the age of the last one at the end, against ``refreshInterval + 30 s``; every version is audited
(:mod:`tests.fault._audit`). The broken ones end with their reasons and write nothing.

CI runs N=1000 with a 72 s window: every healthy Secret must be refreshed within it (at most 72 s after its
first token, stricter than the 90 s deadline a longer window checks). The long version:
``RDSIAM_LOAD_SECONDS=600 pytest tests/fault/test_fault_load.py`` (``RDSIAM_LOAD_N`` sets N).
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import Audit, credential, decode, login, parse_time, ready_reason, secret, unique, wait_for
from tests.fault._figures import record, record_audit

N = int(os.environ.get("RDSIAM_LOAD_N", "1000"))
OBSERVE = float(os.environ.get("RDSIAM_LOAD_SECONDS", "72"))
INTERVAL, SLACK = 60.0, 30.0
BROKEN = ("bad host", "AccessDenied", "conflict")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def operator_kubeconfig(cluster: RealCluster) -> str:
    """No fault proxy here: its own CPU would be measured against the operator's."""
    return str(cluster.kubeconfig)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.slow
@pytest.mark.timeout(OBSERVE + 300)  # the long version outlasts the suite's 300 s per test
def test_a_thousand_resources_a_fifth_broken_the_rest_on_schedule(
    cluster: RealCluster, sts: Any, sts_faults: Any, rds: Any, spaces: Callable[[str], str],
    operator_factory: Any, app_user: str,
) -> None:
    kube = cluster
    ns = spaces("load")
    ok_role = sts.create_role(unique("load-ok"))
    denied = [sts.create_role(f"load-denied-{i}-{unique('r')}") for i in range(4)]
    sts_faults.deny("arn:aws:iam::*:role/load-denied-*")
    kinds: dict[str, str] = {}
    docs: list[dict[str, Any]] = []
    for i in range(N):
        name = f"db-{i:04d}"
        if i % 5 == 0:
            kind = BROKEN[(i // 5) % 3]
            if kind == "bad host":
                doc = {**credential(rds, name, ns), "spec": {"host": "orders.db.internal.example.com",
                                                             "username": app_user, "refreshInterval": "1m"}}
            elif kind == "AccessDenied":
                doc = credential(rds, name, ns, assumeRoleArn=denied[i % 4], refreshInterval="1m")
            else:
                docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"taken-{i:04d}",
                             "namespace": ns}, "stringData": {"password": "not-yours"}})
                doc = credential(rds, name, ns, target={"name": f"taken-{i:04d}"}, refreshInterval="1m")
        else:
            kind = "healthy"
            extra = {"assumeRoleArn": ok_role} if i % 2 else {}
            doc = credential(rds, name, ns, refreshInterval="1m", **extra)
        kinds[name] = kind
        docs.append(doc)
    healthy = [n for n, k in kinds.items() if k == "healthy"]
    op = operator_factory(args=["--namespace", ns], env={"AWS_ENDPOINT_URL_STS": sts_faults.url})
    with Audit(kube, sts.lookup, [ns]) as audit:
        t0 = time.time()
        # The foreign Secrets first, so each exists before its resource; then the rest 8 at a time.
        kube.apply_manifest([d for d in docs if d["kind"] == "Secret"])
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(kube.apply_manifest, [d for d in docs if d["kind"] != "Secret"]))
        created = time.time() - t0
        cpu0 = cpu_seconds(op.proc.pid)

        def missing() -> int:
            current = audit.current()
            return sum((ns, n) not in current for n in healthy)

        wait_for("every healthy Secret", lambda: missing() == 0, timeout=180, interval=0.5)
        first_issue = time.time() - t0
        cpu1 = cpu_seconds(op.proc.pid)
        time.sleep(OBSERVE)
        end = time.time()
        cpu2 = cpu_seconds(op.proc.pid)
        report = audit.report(end)

    gaps: list[float] = []
    ages: list[float] = []
    late: list[str] = []
    refreshes = 0
    by_name: dict[str, list[float]] = {}
    for v in audit.versions(end):
        if v.issued is not None:
            by_name.setdefault(v.name, []).append(v.issued)
    for name in healthy:
        issued = sorted(by_name.get(name, []))
        assert issued, f"{name}: no token"
        steps = [b - a for a, b in zip(issued, issued[1:], strict=False)]
        age = end - issued[-1]
        gaps += steps
        ages.append(age)
        refreshes += len(steps)
        if not steps or max([*steps, age]) > INTERVAL + SLACK:
            late.append(f"{name}: {max([*steps, age]):.0f} s")
    outcomes: Counter[str] = Counter()
    wrong: list[str] = []
    expected = {"bad host": "InvalidSpec", "AccessDenied": "AccessDenied", "conflict": "SecretConflict"}
    for name, kind in kinds.items():
        if kind == "healthy":
            continue
        reason = ready_reason(kube, ns, name)
        outcomes[f"{kind}: {reason and reason[1]}"] += 1
        if reason != ("False", expected[kind]):
            wrong.append(f"{name} ({kind}): {reason}")
    foreign_writes = [c for c in audit.snapshot() if c.kind == "Secret" and c.key[1].startswith("taken-")
                      and c.type != "ADDED"]
    for name in healthy[:: max(1, len(healthy) // 20)]:
        assert login(decode(secret(kube, ns, name) or {})) == app_user
    first_ok = [parse_time(v.annotations["rdsiam.io/issued-at"]).timestamp() for v in audit.versions(end)
                if v.name in kinds and kinds[v.name] == "healthy"]
    record(f"load: {N} resources, {N - len(healthy)} broken", (
        f"created in {created:.1f} s; all {len(healthy)} healthy Secrets issued {first_issue:.1f} s after creation "
        f"({len(healthy) / max(first_issue, 0.001):.0f}/s); observed {OBSERVE:.0f} s more: {refreshes} refreshes, "
        f"time between tokens p50 {statistics.median(gaps) if gaps else float('nan'):.1f} s, "
        f"p95 {pct(gaps, 0.95) if gaps else float('nan'):.1f} s, max {max(gaps, default=float('nan')):.1f} s "
        f"(interval {INTERVAL:.0f} s, deadline {INTERVAL + SLACK:.0f} s); oldest token at the end "
        f"{max(ages):.1f} s; late Secrets: {len(late)}"))
    record("load: broken resources", f"{dict(outcomes)}; foreign Secrets written: {len(foreign_writes)}; "
           f"STS AssumeRole calls through the proxy: {sts_faults.counts['AssumeRole']} "
           f"({sts_faults.injected['deny']} denied)")
    record("load: operator CPU", f"{cpu1 - cpu0:.1f} s during the first issue, {cpu2 - cpu1:.1f} s over the "
           f"{OBSERVE:.0f} s window ({(cpu2 - cpu1) / OBSERVE * 100:.0f}% of a core)")
    record_audit("load", report)
    assert len(first_ok) >= len(healthy)
    assert not wrong, wrong[:10]
    assert not foreign_writes
    assert not late, late[:10]
    report.assert_clean()
