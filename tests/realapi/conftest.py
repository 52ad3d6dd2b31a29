"""The real-API tier: kube-apiserver + etcd + kube-controller-manager built from Go modules.

Every test here is marked ``realapi`` and uses the session fixture ``real_cluster``, which
skips with the reason when the binaries are not built (``scripts/build-realapi.sh``).
The project's CRDs (``crds/``) and this tier's fixture CRD are installed before the
controller manager starts, so its garbage collector watches those kinds from the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.realapi import RealCluster, kubectl_path

from ._helpers import DATA, HERE, project_crd_files


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.realapi)


@pytest.fixture(scope="session")
def real_cluster(real_cluster: RealCluster) -> RealCluster:
    """The session's shared RealCluster (rdsiam.testing's; tests/fault runs on it too), plus this tier's
    fixture CRD; the controller manager is restarted once so its garbage collector watches Widgets."""
    if real_cluster.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "widgets.fixtures.rdsiam.io") is None:
        real_cluster.apply_manifest([*project_crd_files(), DATA / "widgets-crd.yaml"])
        real_cluster.restart_controller_manager()
    return real_cluster


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def namespace(real_cluster: RealCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; deleted (not awaited) afterwards."""
    name = f"t{next(_counter)}-{request.node.name.lower().replace('_', '-')[:40].strip('-')}"
    status, body = real_cluster.request(
        "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    assert status == 201, body
    yield name
    real_cluster.request("DELETE", f"/api/v1/namespaces/{name}")


# ---- the operator-core scenarios (tests/scenarios) against the real API server ----------------
# Session fixtures that depend on `cluster` are redefined here, so they are not shared with the
# emulator tier's instances within one pytest session.

@pytest.fixture(scope="session")
def cluster(real_cluster: RealCluster) -> RealCluster:
    return real_cluster


@pytest.fixture(scope="session")
def kubectl(cluster: RealCluster) -> Kubectl:
    binary = kubectl_path()
    return Kubectl(cluster.kubeconfig, str(binary) if binary else None)
