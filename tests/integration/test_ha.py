"""Two replicas with ``--leader-election`` (what the chart runs with replicaCount > 1): exactly one,
the holder of the Lease, refreshes tokens; when it is SIGKILLed (no cleanup, the Lease is not released)
the standby takes over once the Lease expires (15 s) and refreshes again."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture

pytestmark = pytest.mark.slow  # waits for a 15 s Lease to expire

LEASE_SECONDS, RENEW_SECONDS = 15, 2  # rdsiam.operator.election (client-go defaults)


def refreshes(operator: OperatorProcess, ns: str) -> list[str]:
    return re.findall(rf"Refreshing {ns}/([a-z0-9-]+)", operator.log())


def holder(kubectl: Kubectl, ns: str) -> str | None:
    lease = kubectl.get("lease", "rdsiam-operator", ns)
    return (lease or {}).get("spec", {}).get("holderIdentity")


def request_refresh(kubectl: Kubectl, name: str, ns: str) -> str:
    before = kubectl.secret_data(name, ns)
    assert before is not None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    kubectl.run("annotate", "-n", ns, "rdsiam", name, f"rdsiam.io/refresh-requested-at={stamp}", "--overwrite")
    return before["password"]


def test_one_leader_refreshes_and_the_standby_takes_over_after_sigkill(
    kubectl: Kubectl,
    rds: Any,
    namespace: str,
    app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    ns = namespace  # deleted with its content afterwards, so later operators never see it
    args = ["--leader-election", f"--lease-namespace={ns}"]
    replicas = {name: operator_factory(args=args, env={"POD_NAME": name}) for name in ("rdsiam-a", "rdsiam-b")}
    kubectl.apply([credential(rds, f"c{i}", ns) for i in range(3)])
    for i in range(3):
        kubectl.wait("the Secret", lambda i=i: kubectl.secret_data(f"c{i}", ns))

    leader_name = holder(kubectl, ns)
    assert leader_name in replicas
    leader = replicas[leader_name]
    standby_name, standby = next((n, p) for n, p in replicas.items() if n != leader_name)
    assert sorted(set(refreshes(leader, ns))) == ["c0", "c1", "c2"]
    assert refreshes(standby, ns) == []  # it watches and keeps its caches warm, but writes nothing
    assert "rdsiam_leader 1.0" in leader.metrics() and "rdsiam_leader 0.0" in standby.metrics()

    leader.kill()
    killed = time.monotonic()
    old = request_refresh(kubectl, "c0", ns)  # pending until a leader acts on it
    kubectl.wait(
        "the standby to hold the Lease",
        lambda: holder(kubectl, ns) == standby_name,
        timeout=LEASE_SECONDS + 2 * RENEW_SECONDS,
        interval=0.2,
    )
    takeover = time.monotonic() - killed
    kubectl.wait(
        "the requested rotation",
        lambda: (d := kubectl.secret_data("c0", ns)) and d["password"] != old,
        timeout=10,
        interval=0.1,
    )
    first_refresh = time.monotonic() - killed
    print(f"\nHA: standby holds the Lease {takeover:.1f} s after SIGKILL; first refresh at {first_refresh:.1f} s")
    # The standby saw the Lease change at most RENEW_SECONDS before the kill, takes it LEASE_SECONDS after
    # that, and looks every RENEW_SECONDS.
    assert LEASE_SECONDS - RENEW_SECONDS - 1 <= takeover <= LEASE_SECONDS + 2 * RENEW_SECONDS + 1
    assert "c0" in refreshes(standby, ns)
    event = max(
        (e for e in kubectl.list("events", ns) if e["involvedObject"]["name"] == "c0"),
        key=lambda e: e["metadata"]["resourceVersion"].zfill(20),
    )
    assert event.get("reportingInstance") == standby_name
    lease = kubectl.get("lease", "rdsiam-operator", ns)
    assert lease is not None and lease["spec"]["holderIdentity"] == standby_name
