"""The chart's RBAC under real RBAC: the operator runs as the chart's ServiceAccount on kube-apiserver.

The emulator tier cross-checks the rules against the operator's requests (tests/integration/test_chart_rbac.py);
here the real authorizer decides. The operator, authenticated with a TokenRequest token for the chart's
ServiceAccount and nothing else, issues, rotates and explains; a 403 anywhere fails the test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from rdsiam.testing._fixtures_operator import find_leaks, leak_guard
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess
from tests import _helm as helm
from tests.scenarios.operator_core import credential, login

RELEASE_NS = "rdsiam-system"


def rbac_objects() -> list[dict[str, Any]]:
    values = {"identity": {"serviceAccountMode": True}}
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    return [o for o in helm.template(namespace=RELEASE_NS, values=values, kube_version="1.36.0") if o["kind"] in kinds]


def test_operator_works_with_exactly_the_charts_rbac(
    real_cluster: Any, kubectl: Kubectl, rds: Any, postgres: Any, operator_env: dict[str, str], tmp_path: Path,
    ns: str,
) -> None:
    postgres.create_user("rbac_user", rds_iam=True)
    objects = rbac_objects()
    assert any(o["kind"] == "ClusterRole" for o in objects)
    if kubectl.get("namespace", RELEASE_NS) is None:
        kubectl.create_namespace(RELEASE_NS)
    kubectl.apply(objects)
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = real_cluster.service_account_kubeconfig(RELEASE_NS, account)
    as_operator = Kubectl(kubeconfig, kubectl.binary)
    # The ServiceAccount really is limited: it may not read Secrets' neighbours like ConfigMaps.
    denied = as_operator.run("get", "configmaps", "-n", ns, check=False)
    assert "forbidden" in denied.lower()

    operator = OperatorProcess(kubeconfig, operator_env, log_dir=str(tmp_path / "op")).start()
    first: list[str] = []  # the token rotated away: no longer in the cluster when the guard looks
    try:
        kubectl.apply(credential(rds, "rbac-db", ns, user="rbac_user"))
        data = kubectl.wait("the Secret", lambda: kubectl.secret_data("rbac-db", ns), timeout=30)
        first.append(data["password"])
        with login(data["dsn"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("rbac_user",)
        time.sleep(1.1)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        kubectl.run("annotate", "-n", ns, "rdsiamcredential", "rbac-db", f"rdsiam.io/refresh-requested-at={stamp}",
                    "--overwrite")
        kubectl.wait("a rotation", lambda: (d := kubectl.secret_data("rbac-db", ns)) and
                     d["password"] != data["password"], timeout=30)
        ready = kubectl.wait("Ready", lambda: (c := kubectl.condition("rbac-db", ns)) and c["status"] == "True"
                             and c, timeout=30)
        assert ready["reason"] == "TokenIssued"
        events = kubectl.run("get", "events", "-n", ns, "--field-selector", "involvedObject.name=rbac-db")
        assert "TokenIssued" in events
    finally:
        # operator_factory's guard, also when the test failed: it stops the operator, then searches its
        # DEBUG log, metrics page, Events and status for every managed Secret's token (and the first one).
        leaks = leak_guard([operator], kubectl) + find_leaks({"log0": operator.log()}, first)
        assert not leaks, f"secrets leaked into: {leaks}"
    # The guard found no token in the log: its lines may be shown.
    log = operator.log()
    assert " 403" not in log and "forbidden" not in log.lower(), yaml.safe_dump(log.splitlines()[-20:])
