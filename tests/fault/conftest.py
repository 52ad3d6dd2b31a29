"""Fixtures of the fault tier; the figures each scenario measured are printed at the end of the run.

The tier runs on the real control plane (``real_cluster``: etcd + kube-apiserver + kube-controller-manager
built from Go modules, shared with tests/realapi) and skips with the reason where it is not built, as
that tier does. Each test's operators reach the API server through ``kube_faults``, a proxy that injects
the faults (errors, delays, dropped and ended watches); the audit and the tests' own calls go to the API
server directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.kubefaults import KubeFaultProxy
from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import create_namespace
from tests.fault._figures import FIGURES, TOTALS

# Session fixtures that depend on `cluster` are redefined here, so they are not shared with the emulator
# tier's instances within one pytest session.


@pytest.fixture(scope="session")
def cluster(real_cluster: RealCluster) -> RealCluster:
    return real_cluster


@pytest.fixture(scope="session")
def kubectl(real_kubectl: Kubectl) -> Kubectl:
    return real_kubectl


@pytest.fixture
def operator_kubeconfig(kube_faults: KubeFaultProxy) -> str:
    """Operators go through the fault proxy."""
    return kube_faults.kubeconfig


@pytest.fixture(scope="session")
def app_user(postgres: Any) -> str:
    postgres.create_user("app_user", rds_iam=True)
    return "app_user"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("rdsiam: figures measured under faults and load")
        for scenario, text in FIGURES:
            terminalreporter.write_line(f"{scenario}: {text}")
    if TOTALS:
        terminalreporter.write_line("totals: " + ", ".join(f"{n} {what}" for what, n in TOTALS.items()))


@pytest.fixture
def spaces(cluster: RealCluster) -> Iterator[Callable[[str], str]]:
    """``spaces(prefix)`` makes a fresh namespace; all are deleted, with their content, at teardown.

    List it before ``operator_factory`` in a test's arguments: fixtures tear down in reverse order, so
    the operators stop and the leak guard reads their Secrets before the namespaces go away.
    """
    made: list[str] = []

    def make(prefix: str = "f") -> str:
        made.append(create_namespace(cluster, prefix))
        return made[-1]

    yield make
    for name in made:
        cluster.delete_namespace(name)
