"""STS faults for a bounded period: throttling, 5xx, timeouts and AccessDenied.

Each fault kind gets its own operator (scoped to its own namespace) behind its own FaultProxy, so the
four run side by side on one timeline. The resources assume a role whose credentials STS issues for
only ``LIFETIME`` seconds (``sts.set_credential_duration``): the operator must call STS again at half
their life, and every token dies with the credentials that signed it. The fault starts 5 s before that
refresh is due and lasts ``WINDOW`` seconds, shorter than the remaining life of the tokens in the
Secrets. Then, for every kind:

- Ready turns False with the reason that names the fault, and back to True once STS answers again;
- every Secret is refreshed within one refresh cycle (``LIFETIME / 2``) after the fault ends;
- no Secret ever holds an expired token, and every version written is complete and of one
  generation (:mod:`tests.fault._audit`); at the end each Secret logs in through the IAM-checking
  PostgreSQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdsiam.testing.faults import FaultProxy
from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import Audit, all_ready, credential, decode, login, secret, unique, wait_for
from tests.fault._figures import record, record_audit

LIFETIME = 48  # seconds AssumeRole credentials live (and so the tokens they sign)
WINDOW = 10.0  # seconds each fault lasts
PER_KIND = 3  # resources per fault kind (sharing one role: one STS session)


@dataclasses.dataclass
class Kind:
    name: str
    reason: str  # the Ready reason users must see
    says: str  # a phrase the condition message must contain
    env: dict[str, str]
    proxy: Any = None
    namespace: str = ""
    role: str = ""
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def start(self) -> None:
        p = self.proxy
        {"throttle": lambda: p.throttle(10**6), "5xx": lambda: p.fail(10**6, status=503),
         "timeout": lambda: p.delay(6.0, n=10**6), "deny": lambda: p.deny(self.role)}[self.name]()

    def stop(self) -> None:
        p = self.proxy
        self.counts = {"requests": sum(p.counts.values()), "faulted": sum(p.injected.values())}
        {"throttle": lambda: p.throttle(0), "5xx": lambda: p.fail(0), "timeout": lambda: p.delay(0.0, n=0),
         "deny": p.clear}[self.name]()


KINDS = [
    Kind("throttle", "Throttled", "throttled", {}),
    Kind("5xx", "CredentialsUnavailable", "ServiceUnavailable", {}),
    # One attempt per call (AWS_MAX_ATTEMPTS, as any AWS SDK honours it): botocore's three attempts of 5 s
    # each would otherwise outlast the window and hide the fault.
    Kind("timeout", "CredentialsUnavailable", "ReadTimeoutError", {"AWS_MAX_ATTEMPTS": "1"}),
    Kind("deny", "AccessDenied", "sts:AssumeRole", {}),
]


@pytest.fixture
def short_credentials(sts: Any) -> Iterator[int]:
    sts.set_credential_duration(LIFETIME, actions=("AssumeRole",))
    yield LIFETIME
    sts.set_credential_duration(None)


@pytest.mark.slow
def test_sts_faults_for_a_bounded_period_never_leave_an_expired_token(
    cluster: RealCluster, sts: Any, rds: Any, spaces: Callable[[str], str], operator_factory: Any, app_user: str,
    short_credentials: int,
) -> None:
    kinds = [dataclasses.replace(k, env=dict(k.env)) for k in KINDS]
    with contextlib.ExitStack() as stack:
        for kind in kinds:
            kind.proxy = stack.enter_context(FaultProxy(sts.url, identify=sts.arn_of))
            kind.namespace = spaces(f"sts-{kind.name}")
            kind.role = sts.create_role(unique(f"fault-{kind.name}"))
            operator_factory(args=["--namespace", kind.namespace],
                             env={"AWS_ENDPOINT_URL_STS": kind.proxy.url, **kind.env})
        audit = stack.enter_context(Audit(cluster, sts.lookup, [k.namespace for k in kinds]))
        names = [f"db{i}" for i in range(PER_KIND)]
        cluster.apply_manifest([credential(rds, n, k.namespace, assumeRoleArn=k.role) for k in kinds for n in names])
        wait_for("every first token", lambda: all(all_ready(cluster, k.namespace, names) for k in kinds), timeout=20)

        # The refresh is due at half the credentials' life: start each fault 5 s before it.
        latest = {(v.namespace, v.name): v for v in audit.versions()}
        dues = [v.issued + (v.claimed_expiry - v.issued) / 2 for v in latest.values()
                if v.issued is not None and v.claimed_expiry is not None]
        assert len(dues) == len(kinds) * PER_KIND
        fault_start = min(dues) - 5.0
        time.sleep(max(0.0, fault_start - time.time()))
        fault_start = time.time()
        for kind in kinds:
            kind.start()
        time.sleep(max(0.0, fault_start + WINDOW - time.time()))
        fault_end = time.time()
        for kind in kinds:
            kind.stop()

        cycle = LIFETIME / 2
        deadline = fault_end + cycle

        def refreshed_after_fault() -> bool:
            return all(audit.writes(k.namespace, n, since=fault_end) and all_ready(cluster, k.namespace, names)
                       for k in kinds for n in names)

        wait_for("a refresh of every Secret after the fault", refreshed_after_fault,
                 timeout=max(1.0, deadline - time.time()) + 2.0)
        end = time.time()
        report = audit.report(end)

    failures = []
    for kind in kinds:
        down, up, first_write = [], [], []
        for name in names:
            timeline = audit.ready(kind.namespace, name, since=fault_start)
            falses = [(t, r) for t, s, r in timeline if s == "False"]
            trues = [t for t, s, _ in timeline if s == "True" and t >= fault_end]
            writes = audit.writes(kind.namespace, name, since=fault_end)
            if not falses:
                failures.append(f"{kind.name}: {name} never turned Ready=False")
                continue
            if {r for _, r in falses} != {kind.reason}:
                failures.append(f"{kind.name}: {name} reasons {sorted({r for _, r in falses})}, not {kind.reason}")
            down.append(falses[0][0] - fault_start)
            if trues:
                up.append(trues[0] - fault_end)
            if writes:
                first_write.append(writes[0].at - fault_end)
            if not writes or writes[0].at > deadline:
                failures.append(f"{kind.name}: {name} not refreshed within one cycle ({cycle:.0f} s) after the fault")
        cond = next(c for c in (cluster.get("rdsiam.io/v1alpha1", "RdsIamCredential", names[0], kind.namespace)
                                or {})["status"]["conditions"] if c["type"] == "Ready")
        assert cond["status"] == "True"
        messages = [c.obj for c in audit.writes(kind.namespace, names[0], "RdsIamCredential", since=fault_start)]
        said = [c["message"] for o in messages for c in (o.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready" and c.get("reason") == kind.reason]
        if not any(kind.says in m for m in said):
            failures.append(f"{kind.name}: the {kind.reason} message does not mention {kind.says!r}")
        for name in names:
            data = decode(secret(cluster, kind.namespace, name) or {})
            assert login(data) == app_user
        nan = float("nan")
        record(f"STS {kind.name} for {WINDOW:.0f} s", (
            f"Ready=False ({kind.reason}) {min(down, default=nan):.1f}-{max(down, default=nan):.1f} s "
            f"after the fault began; Ready=True again {max(up, default=nan):.1f} s after it ended; Secrets "
            f"rewritten {max(first_write, default=nan):.1f} s after it ended (cycle {cycle:.0f} s); "
            f"{kind.counts.get('requests', 0)} STS requests, {kind.counts.get('faulted', 0)} faulted"))
    record_audit("STS faults", report)
    assert not failures, failures
    report.assert_clean()
    assert report.min_margin is not None and report.min_margin > 0
