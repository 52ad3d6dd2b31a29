"""The chart's RBAC is exactly what the operator uses: no missing and no unused permission.

The operator runs with the flags the chart's Deployment passes (rendered from the chart) against the
API emulator, through the scenarios that reach every API call it makes: apply, rotation on request,
a Secret conflict, a ServiceAccount-mode resource, the tenancy policy reading namespaces, a deleted
resource and a deleted Secret, a restart, and leader election (create, read, take over an expired
Lease). The emulator logs every request with its RBAC attributes; each request of the operator process
(its own client, User-Agent ``rdsiam-operator``, and kopf's, ``kopf/...``) must be allowed by a rule the
chart grants to its ServiceAccount in that namespace, and every granted (group, resource, verb) must
have been used.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rdsiam.testing.kube import RequestRecord
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess
from tests import _helm as helm
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture

pytestmark = pytest.mark.slow  # two operator runs through the scenarios (about 5 s each)

RELEASE = "rdsiam"


@dataclass(frozen=True)
class Grant:
    namespace: str | None  # None: cluster-wide (a ClusterRole bound by a ClusterRoleBinding)
    rule: dict[str, Any]

    def allows(self, r: RequestRecord) -> bool:
        if self.namespace is not None and r.namespace != self.namespace:
            return False
        resource = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
        names = self.rule.get("resourceNames")
        return (
            r.group in self.rule["apiGroups"]
            and resource in self.rule["resources"]
            and r.verb in self.rule["verbs"]
            and (not names or r.name in names)
        )

    def triples(self) -> set[tuple[str, str, str]]:
        return {
            (g, res, v) for g in self.rule["apiGroups"] for res in self.rule["resources"] for v in self.rule["verbs"]
        }


@pytest.fixture
def more_namespaces(kube: Any, kubectl: Kubectl) -> Iterator[Callable[[], str]]:
    """Make more namespaces for one test; deleted with their content afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"t-{uuid.uuid4().hex[:8]}")
        kubectl.create_namespace(made[-1])
        return made[-1]

    yield make
    for name in made:
        kube.delete_namespace(name)


def chart_objects(namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    return helm.template(release=RELEASE, namespace=namespace, values=values)


def grants(objects: list[dict[str, Any]]) -> list[Grant]:
    """The rules bound to the chart's ServiceAccount, with the namespace each applies in."""
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    sa = (deployment["spec"]["template"]["spec"]["serviceAccountName"], deployment["metadata"]["namespace"])
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
    }
    found = []
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any((s["kind"], s["name"], s["namespace"]) == ("ServiceAccount", *sa) for s in binding["subjects"]):
            continue
        scope = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"])]
        found += [Grant(scope, rule) for rule in role["rules"]]
    return found


def operator_args(objects: list[dict[str, Any]]) -> list[str]:
    """The Deployment's `rdsiam run` flags, minus the ports the test runner chooses itself."""
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a for a in args if not a.startswith(("--liveness=", "--metrics-port="))]


def operator_requests(kube: Any) -> list[RequestRecord]:
    return [r for r in kube.requests if r.user_agent == "rdsiam-operator" or r.user_agent.startswith("kopf/")]


def check(everything: Iterable[RequestRecord], granted: list[Grant]) -> None:
    everything = list(everything)
    # Non-resource requests: only discovery and /version, which every authenticated client may read
    # (the system:discovery ClusterRole); nothing the chart needs to grant.
    other = sorted({r.path for r in everything if not r.verb})
    assert all(p == "/version" or p in ("/api", "/apis") or p.startswith(("/api/", "/apis/")) for p in other), other
    requests = [r for r in everything if r.verb]
    denied = sorted({(r.method, r.path, r.rbac) for r in requests if not any(g.allows(r) for g in granted)})
    assert not denied, f"the chart's RBAC does not allow these calls of the operator: {denied}"
    # Checked by admission, not called: blockOwnerDeletion in the Secret's ownerReference needs update on the
    # owner's finalizers where the OwnerReferencesPermissionEnforcement plugin runs (OpenShift); the emulator
    # has no admission plugins, the real-API tier runs it (tests/realapi/test_chart_rbac_real.py).
    used = {r.rbac for r in requests} | {("rdsiam.io", "rdsiamcredentials/finalizers", "update")}
    unused = sorted(set().union(*(g.triples() for g in granted)) - used)
    assert not unused, f"the chart grants permissions the operator never used: {unused}"


def wait_secret(kubectl: Kubectl, name: str, ns: str, differs_from: str | None = None) -> dict[str, str]:
    return kubectl.wait(
        f"Secret {ns}/{name}",
        lambda: (d := kubectl.secret_data(name, ns)) and d.get("password") != differs_from and d,
        timeout=15,
    )


def refresh(kubectl: Kubectl, name: str, ns: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    kubectl.run("annotate", "-n", ns, "rdsiam", name, f"rdsiam.io/refresh-requested-at={stamp}", "--overwrite")


def test_cluster_wide_rbac_matches_the_operators_calls(
    kube: Any,
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    namespace: str,
    app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    ns = namespace  # deleted with its content afterwards, so later operators never see it
    # The release lives in `ns` (the Lease goes there); ServiceAccount mode and the namespace policy on,
    # two replicas so that the chart turns leader election on.
    values = {"replicaCount": 2, "identity": {"serviceAccountMode": True}, "tenancy": {"namespacePolicy": True}}
    objects = chart_objects(ns, values)
    args = operator_args(objects)
    assert "--leader-election" in args and f"--lease-namespace={ns}" in args and "--namespace-policy" in args
    kube.requests.clear()
    operator = operator_factory(args=args)

    kubectl.apply(credential(rds, "plain", ns))  # Secret create, status patch, Event, namespace get
    first = wait_secret(kubectl, "plain", ns)
    time.sleep(1.1)  # a new X-Amz-Date
    refresh(kubectl, "plain", ns)  # rotation: Secret update
    wait_secret(kubectl, "plain", ns, differs_from=first["password"])

    kubectl.run("create", "secret", "generic", "taken", "-n", ns, "--from-literal=password=mine")
    kubectl.apply(credential(rds, "conflicted", ns, target={"name": "taken"}))
    kubectl.wait(
        "SecretConflict", lambda: (c := kubectl.condition("conflicted", ns)) and c["reason"] == "SecretConflict"
    )  # create answers 409: Secret get (whose is it?)

    role = sts.create_role(f"rbac-sa-{uuid.uuid4().hex[:6]}")
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "app", "namespace": ns, "annotations": {"eks.amazonaws.com/role-arn": role}},
        }
    )
    kubectl.apply(credential(rds, "as-sa", ns, serviceAccountName="app"))  # ServiceAccount get + TokenRequest
    wait_secret(kubectl, "as-sa", ns)

    kubectl.delete("rdsiamcredential", "plain", ns)
    kubectl.wait("garbage collection", lambda: kubectl.get("secret", "plain", ns) is None, timeout=30)
    kubectl.wait("the Events", lambda: len(kubectl.list("events", ns)) >= 3)

    # Restart as another pod while the Lease is still held: expire it (as if the old pod died 20 s ago)
    # so that the new replica takes it over at once (Lease update), re-lists, and recreates a lost Secret.
    operator.stop()
    kubectl.run(
        "patch",
        "lease",
        "rdsiam-operator",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        '{"spec":{"renewTime":"2000-01-01T00:00:00.000000Z"}}',
    )
    operator.start()
    kubectl.delete("secret", "as-sa", ns)
    wait_secret(kubectl, "as-sa", ns)
    lease = kubectl.get("lease", "rdsiam-operator", ns)
    assert lease is not None and lease["spec"]["holderIdentity"].endswith("-1")  # the second start holds it
    operator.stop()

    check(operator_requests(kube), grants(objects))


def test_namespaced_rbac_matches_the_operators_calls(
    kube: Any,
    kubectl: Kubectl,
    rds: Any,
    namespace: str,
    more_namespaces: Callable[[], str],
    app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    ns = namespace  # deleted with its content afterwards, so later operators never see it
    # Two watched namespaces, Roles only; the namespace policy reads just these two namespaces.
    other, unwatched = more_namespaces(), more_namespaces()
    values = {
        "watchNamespaces": [ns, other],
        "identity": {"serviceAccountMode": False},
        "tenancy": {"namespacePolicy": True},
    }
    objects = chart_objects("rdsiam-system", values)
    args = operator_args(objects)
    assert f"--namespace={ns}" in args and f"--namespace={other}" in args
    kube.requests.clear()
    operator_factory(args=args)

    kubectl.apply(credential(rds, "plain", ns))
    first = wait_secret(kubectl, "plain", ns)
    time.sleep(1.1)
    refresh(kubectl, "plain", ns)
    wait_secret(kubectl, "plain", ns, differs_from=first["password"])
    kubectl.apply(credential(rds, "elsewhere", other))
    wait_secret(kubectl, "elsewhere", other)
    kubectl.run("create", "secret", "generic", "taken", "-n", other, "--from-literal=password=mine")
    kubectl.apply(credential(rds, "conflicted", other, target={"name": "taken"}))  # 409, then Secret get
    kubectl.wait(
        "SecretConflict", lambda: (c := kubectl.condition("conflicted", other)) and c["reason"] == "SecretConflict"
    )
    kubectl.wait("the Events", lambda: kubectl.list("events", ns) and kubectl.list("events", other))

    # A resource outside the watched namespaces is not the operator's business (and not allowed to it).
    kubectl.apply(credential(rds, "ignored", unwatched))
    time.sleep(1.0)
    assert kubectl.get("secret", "ignored", unwatched) is None

    requests = operator_requests(kube)
    assert not [r.path for r in requests if r.resource == "secrets" and not r.namespace], (
        "a namespaced operator must not list or watch Secrets cluster-wide"
    )
    check(requests, grants(objects))
