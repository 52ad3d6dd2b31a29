"""RealCluster offers the emulator's helper surface, so a scenario can run against either."""

from __future__ import annotations

import pytest

from rdsiam.testing.kube.client import KubeApiError
from rdsiam.testing.realapi import RealCluster

from ._helpers import DATA, kubectl, wait_for


def test_the_project_kube_client_works_against_the_real_api_server(real_cluster: RealCluster, namespace: str) -> None:
    client = real_cluster.client()
    path = f"/api/v1/namespaces/{namespace}/secrets"
    client.create(path, {"metadata": {"name": "s"}, "stringData": {"password": "p"}})
    client.patch(f"{path}/s", {"metadata": {"labels": {"a": "b"}}})
    secret = client.get(f"{path}/s")
    assert secret["metadata"]["labels"] == {"a": "b"}
    assert secret["data"] == {"password": "cA=="}  # stringData is written into data, base64
    with pytest.raises(KubeApiError) as caught:
        client.create(path, {"metadata": {"name": "s"}})
    assert (caught.value.code, caught.value.reason) == (409, "AlreadyExists")


def test_apply_manifest_get_and_delete_namespace(real_cluster: RealCluster) -> None:
    ns = "parity-apply"
    real_cluster.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    (applied,) = real_cluster.apply_manifest(
        "apiVersion: fixtures.rdsiam.io/v1\n"
        "kind: Widget\n"
        f"metadata: {{name: m, namespace: {ns}}}\n"
        "spec: {size: 4}\n"
        "status: {conditions: [{type: Ready, status: 'True'}]}\n"
    )
    assert applied["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    got = real_cluster.get("fixtures.rdsiam.io/v1", "Widget", "m", ns)
    assert got is not None and got["spec"] == {"size": 4}
    assert real_cluster.get("fixtures.rdsiam.io/v1", "Widget", "absent", ns) is None
    (crd,) = real_cluster.apply_manifest(DATA / "widgets-crd.yaml")
    assert crd["metadata"]["name"] == "widgets.fixtures.rdsiam.io"
    real_cluster.delete_namespace(ns)
    real_cluster.delete_namespace(ns)  # already terminating: no error


def test_verify_token_checks_signature_audience_and_issuer(real_cluster: RealCluster, namespace: str) -> None:
    client = real_cluster.client()
    client.create(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "app"}})
    answer = client.create(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/app/token",
        {"spec": {"audiences": ["sts.amazonaws.com"], "expirationSeconds": 600}},
    )
    token = answer["status"]["token"]
    claims = real_cluster.verify_token(token, "sts.amazonaws.com")
    assert claims["sub"] == f"system:serviceaccount:{namespace}:app"
    assert claims["iss"] == real_cluster.issuer
    import jwt

    with pytest.raises(jwt.InvalidAudienceError):
        real_cluster.verify_token(token, "something-else")
    with pytest.raises(jwt.InvalidSignatureError):
        real_cluster.verify_token(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))


@pytest.mark.slow
def test_compact_makes_older_resource_versions_expire(real_cluster: RealCluster, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    client = real_cluster.client()
    client.create(path, {"metadata": {"name": "before"}})
    old_rv = client.list(path)["metadata"]["resourceVersion"]
    client.create(path, {"metadata": {"name": "between"}})

    current = real_cluster.compact()
    assert current >= int(old_rv)

    ((code, event),) = list(real_cluster.watch(f"{path}?watch=1&resourceVersion={old_rv}&timeoutSeconds=5"))
    assert (code, event["type"], event["object"]["code"]) == (200, "ERROR", 410)
    # Resuming from the returned resourceVersion works, and the cluster is fully usable.
    # (A fresh client: the restart closed the old one's keep-alive TLS connection.)
    client = real_cluster.client()
    client.create(path, {"metadata": {"name": "after"}})
    events = real_cluster.watch(f"{path}?watch=1&resourceVersion={current}&timeoutSeconds=5")
    code, event = next(events)
    events.close()
    assert (code, event["type"], event["object"]["metadata"]["name"]) == (200, "ADDED", "after")


def test_a_service_account_kubeconfig_is_bound_by_rbac(real_cluster: RealCluster, namespace: str) -> None:
    kubeconfig = real_cluster.service_account_kubeconfig(namespace, "operator")

    def can_list_secrets() -> str:
        args = ("--kubeconfig", kubeconfig, "auth", "can-i", "list", "secrets", "-n", namespace)
        return kubectl(real_cluster, *args, check=False).stdout.strip()

    assert can_list_secrets() == "no"
    kubectl(
        real_cluster,
        *("create", "rolebinding", "edit", "--clusterrole=edit", f"--serviceaccount={namespace}:operator"),
        *("-n", namespace),
    )
    wait_for(lambda: can_list_secrets() == "yes", 10, "the RoleBinding to take effect")
    whoami = kubectl(
        real_cluster, "--kubeconfig", kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"
    )
    assert whoami.stdout == f"system:serviceaccount:{namespace}:operator"
