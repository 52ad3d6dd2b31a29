"""A 10-minute soak on the node (opt-in: ``RDSIAM_E2E_SOAK=1 make e2e``; too long for CI's budget).

The apps started by test_node_apps log in once a second at ``refreshInterval: 1m`` while the operator
pod is deleted three times and kube-apiserver is restarted once. Not one login may fail, and every app
keeps getting new tokens.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.rds import IamPostgres

from .conftest import InClusterOperator, Release, app_logins, on_node

SOAK_SECONDS = float(os.environ.get("RDSIAM_E2E_SOAK_SECONDS", "600"))
pytestmark = [
    on_node,
    pytest.mark.skipif(not os.environ.get("RDSIAM_E2E_SOAK"),
                       reason="a 10-minute soak: RDSIAM_E2E_SOAK=1 make e2e (longer than CI's time budget allows)"),
]


@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_soak_operator_deleted_three_times_and_apiserver_restarted(
    shop: str, release: Release, kubectl: Kubectl, doors: list[IamPostgres], node: Any
) -> None:
    since, began = datetime.now(UTC), time.monotonic()
    operator = InClusterOperator(release)
    # (second of the soak, what happens)
    plan = [(0.15, "delete the operator pod"), (0.35, "restart kube-apiserver"),
            (0.55, "delete the operator pod"), (0.8, "delete the operator pod")]
    done = []
    for fraction, action in plan:
        time.sleep(max(0.0, began + fraction * SOAK_SECONDS - time.monotonic()))
        if action == "restart kube-apiserver":
            node.restart_apiserver()
        else:
            operator.restart()
        done.append(f"{time.monotonic() - began:.0f} s: {action}")
    time.sleep(max(0.0, began + SOAK_SECONDS - time.monotonic()))

    seen = app_logins(kubectl, doors, since=since)
    logins = sum(v["ok"] for v in seen.values())
    failed = {app: v["failed"][:3] for app, v in seen.items() if v["failed"]}
    rotations = {app: len(v["generations"]) - 1 for app, v in seen.items()}
    print(f"soak {SOAK_SECONDS:.0f} s: {'; '.join(done)}; {len(seen)} apps, {logins} logins, "
          f"{sum(len(v['failed']) for v in seen.values())} failed; rotations seen per app {sorted(rotations.values())}")
    assert not failed, failed
    expected = int(SOAK_SECONDS // 60) - 2  # at 1m, less the restarts' slack
    assert all(n >= expected for n in rotations.values()), rotations
