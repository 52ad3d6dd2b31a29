"""Operator-core scenarios against the Kubernetes API emulator (see tests/scenarios)."""

from typing import Any

from rdsiam.testing.kubectl import Kubectl
from tests.scenarios.operator_core import *  # noqa: F401,F403
from tests.scenarios.operator_core import credential


def test_secrets_are_listed_whole_and_watched_as_metadata_only(
    kube: Any, kubectl: Kubectl, rds: Any, operator: Any, ns: str, app_user: str,
) -> None:
    """Emulator only (it records request headers): the echo of every Secret write carries no token."""
    kubectl.apply(credential(rds, "meta", ns))
    kubectl.wait("the Secret", lambda: kubectl.secret_data("meta", ns))
    mine = [r for r in kube.requests if r.resource == "secrets" and "rdsiam-operator" in r.user_agent
            and r.method == "GET" and not r.name]
    watches = [r for r in mine if r.query.get("watch") == "true"]
    lists = [r for r in mine if r.query.get("watch") != "true"]
    assert watches and all("as=PartialObjectMetadata;" in r.accept for r in watches)
    assert lists and not any("PartialObjectMetadata" in r.accept for r in lists)  # the keys of each Secret
