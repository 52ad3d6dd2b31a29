"""Smoke tests of the real-API tier: what the operator relies on behaves as on a real cluster."""

from __future__ import annotations

import itertools
import json
import subprocess
from typing import Any

import pytest

from rdsiam.testing.realapi import RealCluster
from tests import _helm

from ._helpers import DATA, jwt_claims, kubectl, project_crd_files, wait_for

WIDGETS = "/apis/fixtures.rdsiam.io/v1/namespaces/{ns}/widgets"


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "fixtures.rdsiam.io/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def test_api_server_is_ready_and_reports_its_version(real_cluster: RealCluster) -> None:
    status, body = real_cluster.request("GET", "/readyz")
    assert (status, body) == (200, "ok")
    status, version = real_cluster.request("GET", "/version")
    assert status == 200
    assert version["gitVersion"].startswith("v1."), version
    assert real_cluster.url.startswith("https://127.0.0.1:")
    assert set(real_cluster.timings) >= {"pki", "etcd", "kube-apiserver", "kube-controller-manager"}


def test_unauthenticated_and_wrong_token_are_refused(real_cluster: RealCluster) -> None:
    status, body = real_cluster.request("GET", "/api/v1/namespaces/default/secrets", token="not-a-token")
    assert status == 401, body


def test_kubectl_server_side_applies_the_crd_and_objects(real_cluster: RealCluster, namespace: str) -> None:
    out = kubectl(real_cluster, "apply", "--server-side", "-f", str(DATA / "widgets-crd.yaml")).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/widgets.fixtures.rdsiam.io serverside-applied" in out
    out = kubectl(real_cluster, "apply", "--server-side", "-n", namespace, "-f", str(DATA / "widget.yaml")).stdout
    assert "widget.fixtures.rdsiam.io/small serverside-applied" in out

    table = kubectl(real_cluster, "get", "widgets", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "SIZE", "READY"]
    assert row.split()[:2] == ["small", "3"]

    obj = json.loads(
        kubectl(real_cluster, "get", "wdg/small", "-n", namespace, "-o", "json", "--show-managed-fields").stdout
    )
    assert obj["spec"] == {"size": 3, "maxSize": 10, "color": "green"}
    assert any(m["manager"] == "kubectl" and m["operation"] == "Apply" for m in obj["metadata"]["managedFields"])


def test_kubectl_apply_of_an_invalid_object_shows_the_validation_errors(
    real_cluster: RealCluster, namespace: str
) -> None:
    proc = kubectl(
        real_cluster,
        "apply",
        "--server-side",
        "-n",
        namespace,
        "-f",
        str(DATA / "widget-invalid.yaml"),
        check=False,
    )
    assert proc.returncode != 0
    assert "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in proc.stderr
    assert 'spec.color: Unsupported value: "purple"' in proc.stderr


@pytest.mark.skipif(not project_crd_files(), reason="crds/ holds no CRD yet")
def test_the_project_crd_applies_server_side(real_cluster: RealCluster) -> None:
    for path in project_crd_files():
        out = kubectl(real_cluster, "apply", "--server-side", "--force-conflicts", "-f", str(path)).stdout
        assert "serverside-applied" in out
    out = kubectl(real_cluster, "get", "crd", "rdsiamcredentials.rdsiam.io", "-o", "name").stdout
    assert out.strip() == "customresourcedefinition.apiextensions.k8s.io/rdsiamcredentials.rdsiam.io"


def test_create_get_patch_and_conflicts(real_cluster: RealCluster, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    status, created = real_cluster.request("POST", path, {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    assert status == 201, created
    status, body = real_cluster.request("POST", path, {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    assert (status, body["reason"]) == (409, "AlreadyExists")

    status, merged = real_cluster.request(
        "PATCH", f"{path}/cfg", {"data": {"b": "2"}}, content_type="application/merge-patch+json"
    )
    assert status == 200 and merged["data"] == {"a": "1", "b": "2"}
    assert int(merged["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    status, patched = real_cluster.request(
        "PATCH",
        f"{path}/cfg",
        [{"op": "remove", "path": "/data/a"}],
        content_type="application/json-patch+json",
    )
    assert status == 200 and patched["data"] == {"b": "2"}

    # An update carrying a stale resourceVersion is refused.
    stale = dict(created, data={"c": "3"})
    status, body = real_cluster.request("PUT", f"{path}/cfg", stale)
    assert (status, body["reason"]) == (409, "Conflict")

    status, got = real_cluster.request("GET", f"{path}/cfg")
    assert status == 200 and got["data"] == {"b": "2"}
    status, body = real_cluster.request("GET", f"{path}/missing")
    assert (status, body["reason"]) == (404, "NotFound")


def test_invalid_custom_object_is_422_naming_the_fields(real_cluster: RealCluster, namespace: str) -> None:
    path = WIDGETS.format(ns=namespace)
    status, body = real_cluster.request("POST", path, widget("w", size=0))
    assert (status, body["reason"]) == (422, "Invalid"), body
    assert [c["field"] for c in body["details"]["causes"]] == ["spec.size"]

    status, body = real_cluster.request("POST", path, widget("w", size=5, maxSize=2))  # CEL rule
    assert status == 422, body
    assert "size must not exceed maxSize" in body["message"]

    status, body = real_cluster.request("POST", path, widget("w", color="red"))  # required field
    assert status == 422 and "spec.size: Required value" in body["message"]

    status, ok = real_cluster.request("POST", path, widget("w", size=2, maxSize=2))
    assert status == 201, ok


def test_status_subresource_ignores_spec_and_main_resource_ignores_status(
    real_cluster: RealCluster, namespace: str
) -> None:
    path = WIDGETS.format(ns=namespace)
    status, _ = real_cluster.request("POST", path, dict(widget("s", size=1), status={"conditions": []}))
    assert status == 201
    status, body = real_cluster.request(
        "PATCH",
        f"{path}/s/status",
        {"spec": {"size": 9}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        content_type="application/merge-patch+json",
    )
    assert status == 200, body
    assert body["spec"]["size"] == 1
    assert body["status"]["conditions"] == [{"type": "Ready", "status": "True"}]


def test_token_request_returns_a_signed_jwt_for_the_service_account(real_cluster: RealCluster, namespace: str) -> None:
    import jwt  # pyjwt

    status, _ = real_cluster.request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": "orders-app"}}
    )
    assert status == 201
    status, body = real_cluster.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/orders-app/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": ["sts.amazonaws.com"], "expirationSeconds": 3600},
        },
    )
    assert status == 201, body
    token = body["status"]["token"]
    claims = jwt_claims(token)
    assert claims["sub"] == f"system:serviceaccount:{namespace}:orders-app"
    assert claims["aud"] == ["sts.amazonaws.com"]
    assert claims["iss"] == real_cluster.url
    assert claims["exp"] - claims["iat"] == 3600

    # The signature verifies against the issuer's published JWKS, as STS would check it.
    status, discovery = real_cluster.request("GET", "/.well-known/openid-configuration")
    assert status == 200 and discovery["issuer"] == real_cluster.url
    status, jwks = real_cluster.request("GET", "/openid/v1/jwks", accept="application/jwk-set+json")
    assert status == 200
    (key,) = jwks["keys"]
    verified = jwt.decode(
        token,
        key=jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience="sts.amazonaws.com",
        issuer=real_cluster.url,
    )
    assert verified["sub"] == claims["sub"]

    status, body = real_cluster.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/nobody/token",
        {"spec": {"audiences": ["sts.amazonaws.com"]}},
    )
    assert (status, body["reason"]) == (404, "NotFound")


def test_rbac_is_enforced_for_service_account_tokens(real_cluster: RealCluster, namespace: str) -> None:
    sa_path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    assert real_cluster.request("POST", sa_path, {"metadata": {"name": "reader"}})[0] == 201
    status, body = real_cluster.request("POST", f"{sa_path}/reader/token", {"spec": {}})  # default audience
    assert status == 201, body
    token = body["status"]["token"]

    secrets = f"/api/v1/namespaces/{namespace}/secrets"
    status, body = real_cluster.request("GET", secrets, token=token)
    assert status == 403, body
    assert f'"system:serviceaccount:{namespace}:reader" cannot list resource "secrets"' in body["message"]

    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    role = {
        "metadata": {"name": "secret-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}],
    }
    binding = {
        "metadata": {"name": "secret-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }
    assert real_cluster.request("POST", f"{rbac}/roles", role)[0] == 201
    assert real_cluster.request("POST", f"{rbac}/rolebindings", binding)[0] == 201
    wait_for(lambda: real_cluster.request("GET", secrets, token=token)[0] == 200, 10, "the RoleBinding to apply")
    status, _ = real_cluster.request("DELETE", f"{secrets}/x", token=token)
    assert status == 403


def test_new_namespaces_get_default_service_account_and_root_ca(real_cluster: RealCluster, namespace: str) -> None:
    wait_for(
        lambda: real_cluster.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default")[0] == 200,
        20,
        "the serviceaccount controller to create the default ServiceAccount",
    )
    status, cm = wait_for(
        lambda: (
            (r := real_cluster.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/kube-root-ca.crt"))
            and r[0] == 200
            and r
        ),
        20,
        "the root CA publisher",
    )
    with open(real_cluster.ca_file) as handle:
        assert cm["data"]["ca.crt"].strip() == handle.read().strip()


def _owned_secret(namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "owned",
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "type": "Opaque",
        "stringData": {"password": "x"},
    }


def _assert_collected(real_cluster: RealCluster, secret_path: str) -> None:
    wait_for(
        lambda: real_cluster.request("GET", secret_path)[0] == 404,
        45,
        "the garbage collector to delete the owned Secret",
    )


def test_garbage_collector_deletes_a_secret_owned_by_a_configmap(real_cluster: RealCluster, namespace: str) -> None:
    status, owner = real_cluster.request(
        "POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "owner"}}
    )
    assert status == 201
    owner.update(apiVersion="v1", kind="ConfigMap")
    secrets = f"/api/v1/namespaces/{namespace}/secrets"
    assert real_cluster.request("POST", secrets, _owned_secret(namespace, owner))[0] == 201
    assert real_cluster.request("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/owner")[0] == 200
    _assert_collected(real_cluster, f"{secrets}/owned")


def test_garbage_collector_deletes_a_secret_owned_by_a_custom_resource(
    real_cluster: RealCluster, namespace: str
) -> None:
    path = WIDGETS.format(ns=namespace)
    status, owner = real_cluster.request("POST", path, widget("owner", size=1))
    assert status == 201, owner
    secrets = f"/api/v1/namespaces/{namespace}/secrets"
    assert real_cluster.request("POST", secrets, _owned_secret(namespace, owner))[0] == 201
    # Foreground deletion: the owner stays (with a finalizer) until the GC removed the Secret.
    status, body = real_cluster.request("DELETE", f"{path}/owner", {"propagationPolicy": "Foreground"})
    assert status == 200, body
    assert body["metadata"].get("deletionTimestamp"), body
    assert "foregroundDeletion" in body["metadata"].get("finalizers", []), body
    _assert_collected(real_cluster, f"{secrets}/owned")
    wait_for(
        lambda: real_cluster.request("GET", f"{path}/owner")[0] == 404,
        20,
        "the owner to go after its dependents",
    )


def test_watch_streams_changes_and_an_expired_resource_version_is_410(
    real_cluster: RealCluster, namespace: str
) -> None:
    path = WIDGETS.format(ns=namespace)
    status, listing = real_cluster.request("GET", path)
    rv = listing["metadata"]["resourceVersion"]
    assert real_cluster.request("POST", path, widget("watched", size=1))[0] == 201
    assert (
        real_cluster.request(
            "PATCH", f"{path}/watched", {"spec": {"size": 2}}, content_type="application/merge-patch+json"
        )[0]
        == 200
    )

    events = real_cluster.watch(f"{path}?watch=1&resourceVersion={rv}&timeoutSeconds=5")
    seen = [(code, e["type"], e["object"]["spec"]["size"]) for code, e in itertools.islice(events, 2)]
    assert seen == [(200, "ADDED", 1), (200, "MODIFIED", 2)]

    # The watch cache of the Widget kind began when its CRD was installed, long after
    # resourceVersion 1: the server answers 410 Gone as an ERROR event (kopf then relists).
    ((code, event),) = list(real_cluster.watch(f"{path}?watch=1&resourceVersion=1&timeoutSeconds=5"))
    assert (code, event["type"]) == (200, "ERROR"), event
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    assert event["object"]["message"].startswith("too old resource version: 1 (")


@pytest.mark.slow
def test_deleting_a_namespace_deletes_its_content(real_cluster: RealCluster) -> None:
    ns = "doomed"
    assert real_cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})[0] == 201
    assert real_cluster.request("POST", WIDGETS.format(ns=ns), widget("w", size=1))[0] == 201
    assert real_cluster.request("DELETE", f"/api/v1/namespaces/{ns}")[0] == 200
    wait_for(lambda: real_cluster.request("GET", f"/api/v1/namespaces/{ns}")[0] == 404, 60, "namespace deletion")


def test_helm_is_built_and_installs_a_chart(real_cluster: RealCluster, namespace: str) -> None:
    helm = _helm.binary()  # skips without helm (fails under CI=true)
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v3."), version.stdout

    env = real_cluster.env()
    env["HELM_CACHE_HOME"] = env["HELM_CONFIG_HOME"] = env["HELM_DATA_HOME"] = str(
        real_cluster.directory / "helm"  # type: ignore[operator]
    )
    proc = subprocess.run(
        [
            str(helm),
            "install",
            "probe",
            str(DATA / "chart"),
            "-n",
            namespace,
            "--set",
            "greeting=hi",
            "--wait",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    status, cm = real_cluster.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/probe-probe")
    assert status == 200 and cm["data"]["greeting"] == "hi"
    assert cm["data"]["kubeVersion"].startswith("v1.")
    listing = subprocess.run(
        [str(helm), "list", "-n", namespace, "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert [(r["name"], r["status"]) for r in json.loads(listing.stdout)] == [("probe", "deployed")]
    subprocess.run([str(helm), "uninstall", "probe", "-n", namespace], env=env, check=True, capture_output=True)
    assert real_cluster.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/probe-probe")[0] == 404
