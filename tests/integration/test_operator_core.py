"""Operator-core scenarios against the Kubernetes API emulator (see tests/scenarios)."""

from typing import Any

from rdsiam.testing.kubectl import Kubectl
from tests.scenarios.operator_core import *  # noqa: F401,F403
from tests.scenarios.operator_core import credential


def test_only_the_managed_secrets_are_listed_and_watched(
    kube: Any, kubectl: Kubectl, rds: Any, operator: Any, ns: str, app_user: str,
) -> None:
    """Emulator only (it records requests): kopf lists and watches Secrets with the managed-by label
    selector, so the operator never reads the cluster's other Secrets."""
    kubectl.apply(credential(rds, "meta", ns))
    kubectl.wait("the Secret", lambda: kubectl.secret_data("meta", ns))
    mine = [r for r in kube.requests if r.resource == "secrets" and r.method == "GET" and not r.name
            and "kopf" in r.user_agent]
    assert {r.query.get("watch") == "true" for r in mine} == {True, False}  # a listing and a watch
    assert all(r.query.get("labelSelector") == "app.kubernetes.io/managed-by=rdsiam" for r in mine)
