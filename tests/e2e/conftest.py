"""The e2e tier: the operator-core scenarios against a real cluster (kind, EKS, ...).

Set ``RDSIAM_E2E_KUBECONFIG`` to a kubeconfig whose current context may create namespaces, CRDs and
Secrets. The operator runs on this machine (``rdsiam run``) against that cluster, with the local STS and
IAM-checking PostgreSQL, so no AWS account is needed. Without the variable every test here is skipped
with the reason (this machine has no Docker engine, so no kind cluster can be started here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl

ROOT = Path(__file__).resolve().parents[2]


class _Cluster:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig


@pytest.fixture(scope="session")
def cluster() -> Any:
    path = os.environ.get("RDSIAM_E2E_KUBECONFIG")
    if not path:
        reason = "RDSIAM_E2E_KUBECONFIG is not set: no real cluster to test against"
        if not shutil.which("kind") or not shutil.which("docker"):
            reason += " (and kind/Docker are not available here to create one)"
        pytest.skip(reason)
    # Asked for a cluster: one that is missing or unreachable is a failure, not a skip (a green run would
    # claim the e2e tier ran).
    if not Path(path).is_file():
        pytest.fail(f"RDSIAM_E2E_KUBECONFIG={path} does not exist", pytrace=False)
    kubectl = Kubectl(path)
    try:
        kubectl.run("version", "--request-timeout=5s")
    except Exception as exc:
        pytest.fail(f"the cluster in RDSIAM_E2E_KUBECONFIG is not reachable: {exc}", pytrace=False)
    kubectl.apply_crds(str(ROOT / "crds"))
    return _Cluster(path)


@pytest.fixture(scope="session")
def kubectl(cluster: Any) -> Kubectl:
    return Kubectl(cluster.kubeconfig)
