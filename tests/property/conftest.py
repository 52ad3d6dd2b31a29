"""The property tier: pure properties, and a bounded sample end to end on the real kube-apiserver
(``real_cluster``, shared with tests/realapi and tests/fault; skipped with the reason where it is not
built), with the fault tier's fixtures (fresh namespaces deleted at teardown, the IAM database user)."""

from __future__ import annotations

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.realapi import RealCluster
from tests.fault.conftest import app_user, spaces  # noqa: F401

# Session fixtures that depend on `cluster` are redefined here, so they are not shared with the emulator
# tier's instances within one pytest session.


@pytest.fixture(scope="session")
def cluster(real_cluster: RealCluster) -> RealCluster:
    return real_cluster


@pytest.fixture(scope="session")
def kubectl(real_kubectl: Kubectl) -> Kubectl:
    return real_kubectl
