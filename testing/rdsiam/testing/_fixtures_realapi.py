"""pytest fixtures of the real control plane (:class:`~rdsiam.testing.realapi.RealCluster`).

- ``real_cluster`` (session): etcd + kube-apiserver + kube-controller-manager with the project's CRDs
  (``crds/*.yaml``), one for the whole session, so every tier that runs on it (tests/realapi,
  tests/fault) shares one start. Skipped with the reason when the binaries are not built
  (``scripts/build-realapi.sh``), as the real-API tier always has been.
- ``real_kubectl`` (session): kubectl on it.
- ``kube_faults`` (function): a :class:`~rdsiam.testing.kubefaults.KubeFaultProxy` in front of it, its
  faults and counters fresh for each test; ``kube_faults.kubeconfig`` reaches the API server through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rdsiam.testing._fixtures_operator import ROOT
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.kubefaults import KubeFaultProxy
from rdsiam.testing.realapi import RealCluster, kubectl_path

__all__ = ["kube_faults", "real_cluster", "real_kubectl"]


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealCluster]:
    """A started RealCluster with the project's CRDs, shared by the test session."""
    ok, reason = RealCluster.available()
    if not ok:
        pytest.skip(reason)
    with RealCluster(crds=sorted((ROOT / "crds").glob("*.yaml"))) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def real_kubectl(real_cluster: RealCluster) -> Kubectl:
    """kubectl on ``real_cluster``: the one built with it when there is one, else the one on PATH."""
    binary = kubectl_path()
    return Kubectl(real_cluster.kubeconfig, str(binary) if binary else None)


@pytest.fixture
def kube_faults(real_cluster: RealCluster, tmp_path: Path) -> Iterator[KubeFaultProxy]:
    """A fault-injecting proxy in front of ``real_cluster``; ``.kubeconfig``: the admin's, through it."""
    proxy = KubeFaultProxy(real_cluster.url, real_cluster.ssl_context())
    with proxy:
        proxy.write_kubeconfig(tmp_path / "kube-faults.kubeconfig", real_cluster.token)
        yield proxy
