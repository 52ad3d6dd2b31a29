"""The operator's watching (kopf's) against the Kubernetes API emulator: several watched namespaces, a
watch that ends with 410 Gone, and a resource in foreground deletion."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture


@pytest.fixture
def two_namespaces(kubectl: Kubectl, ns: str) -> Iterator[tuple[str, str]]:
    other = f"{ns}-b"
    kubectl.create_namespace(other)
    yield ns, other
    kubectl.run("delete", "namespace", other, "--wait=false", check=False)


def test_every_watched_namespace_is_served_and_a_watch_ended_by_410_keeps_serving(
    kube: Any, kubectl: Kubectl, rds: Any, two_namespaces: tuple[str, str], app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    a, b = two_namespaces
    kubectl.apply([credential(rds, "db", a), credential(rds, "db", b)])  # before the operator starts
    operator_factory(args=["--namespace", a, "--namespace", b])
    for space in (a, b):
        kubectl.wait(f"the Secret in {space}", lambda s=space: kubectl.secret_data("db", s), timeout=15)
        ready = kubectl.wait(f"Ready in {space}", lambda s=space: kubectl.condition("db", s))
        assert (ready["status"], ready["reason"]) == ("True", "TokenIssued")

    # Namespace a's watches end and their resume answers 410 Gone (kopf lists again); b's keep watching.
    paths = [f"/apis/rdsiam.io/v1alpha1/namespaces/{a}/rdsiamcredentials", f"/api/v1/namespaces/{a}/secrets"]
    faults = [kube.inject(rf"^{path}$", method="GET", status=410, times=1, watch=True) for path in paths]
    assert kube.end_watches("|".join(rf"^{p}$" for p in paths)) == 2
    kubectl.wait("a's watches to resume and get 410 Gone", lambda: all(f.exhausted for f in faults), timeout=15)
    # Both resources are still served and their Secrets known: deleted, each comes back at once.
    for space in (b, a):
        before = kubectl.get("secret", "db", space)
        assert before is not None
        kubectl.delete("secret", "db", space)
        kubectl.wait(f"the Secret in {space} back",
                     lambda s=space, uid=before["metadata"]["uid"]:
                     (x := kubectl.get("secret", "db", s)) is not None and x["metadata"]["uid"] != uid, timeout=10)


def test_a_resource_in_foreground_deletion_does_not_get_its_secret_back(
    kubectl: Kubectl, rds: Any, ns: str, app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    """``kubectl delete --cascade=foreground``: the resource stays, with deletionTimestamp set, until the
    garbage collector has deleted its Secret (here longer: another finalizer holds it). The operator must
    not write that Secret again meanwhile."""
    op = operator_factory(args=["--namespace", ns])
    held = credential(rds, "db", ns)
    held["metadata"]["finalizers"] = ["example.com/hold"]
    kubectl.apply(held)
    kubectl.wait("the Secret", lambda: kubectl.secret_data("db", ns))
    refreshes = op.log().count(f"Refreshing {ns}/db")
    try:
        kubectl.run("delete", "rdsiamcredential", "db", "-n", ns, "--cascade=foreground", "--wait=false")
        kubectl.wait("the Secret deleted by the garbage collector", lambda: kubectl.get("secret", "db", ns) is None)
        time.sleep(2.0)  # time for a refresh to bring it back, if there were one
        obj = kubectl.get("rdsiamcredential", "db", ns)
        assert obj is not None and obj["metadata"].get("deletionTimestamp")  # still being deleted
        assert kubectl.get("secret", "db", ns) is None
        assert op.log().count(f"Refreshing {ns}/db") == refreshes
    finally:
        kubectl.run("patch", "rdsiamcredential", "db", "-n", ns, "--type=merge",
                    "-p", '{"metadata": {"finalizers": null}}', check=False)
