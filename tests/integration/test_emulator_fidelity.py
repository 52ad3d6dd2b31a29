"""The emulator answers like a real kube-apiserver: the same requests, compared side by side.

Needs kube-apiserver and etcd built by ``scripts/build-realapi.sh`` (skipped otherwise).
Each scenario runs against both servers; the answers are compared after dropping what
legitimately differs (uids, resourceVersions, timestamps, managedFields).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from rdsiam.testing.kube import KubeApiError, KubeClient, KubeEmulator
from rdsiam.testing.kube.example import EXAMPLE_CRD, GROUP, PLURAL, VERSION, example_object

realapi = pytest.importorskip("rdsiam.testing.realapi")
AVAILABLE, WHY = realapi.RealCluster.available()
pytestmark = [pytest.mark.realapi, pytest.mark.slow, pytest.mark.skipif(not AVAILABLE, reason=WHY)]

VOLATILE = {
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "lastTransitionTime",
    "storageVersionHash",
    "deletionTimestamp",
    "time",
    "expirationTimestamp",
    "token",
}


def normalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def normalize_status(status: dict[str, Any]) -> dict[str, Any]:
    """Field errors come in Go map order (and sometimes twice) on a real server: compare them sorted."""
    causes = (status.get("details") or {}).get("causes")
    if not causes or status.get("reason") != "Invalid":
        return normalize(status)
    items = sorted({f"{c.get('field')}: {c.get('message')}" for c in causes})
    prefix = status["message"].split(" is invalid: ", 1)[0]
    message = f"{prefix} is invalid: " + (items[0] if len(items) == 1 else "[" + ", ".join(items) + "]")
    unique = {(c.get("field"), c.get("message"), c.get("reason")): c for c in causes}
    details = {**status["details"], "causes": [unique[key] for key in sorted(unique)]}
    return normalize({**status, "message": message, "details": details})


def answer(call: Callable[[], Any]) -> Any:
    """The normalized response, or the normalized error Status."""
    try:
        return ("ok", normalize(call()))
    except KubeApiError as exc:
        return ("error", exc.code, normalize_status(exc.status))


@pytest.fixture(scope="module")
def real() -> Iterator[Any]:
    with realapi.RealCluster(controllers=()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def servers(real: Any) -> Iterator[dict[str, KubeClient]]:
    with KubeEmulator() as emu:
        clients = {"emulator": emu.client(), "real": KubeClient(real.url, token=real.token, ca_file=real.ca_file)}
        for client in clients.values():
            client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", EXAMPLE_CRD)
        deadline = time.monotonic() + 30
        crd = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}"
        while not any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (clients["real"].get(crd).get("status") or {}).get("conditions") or []
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1)  # discovery of the new resource settles
        yield clients
        for client in clients.values():
            client.close()


def both(servers: dict[str, KubeClient], scenario: Callable[[KubeClient, str], Any]) -> None:
    results = {}
    ns = f"f-{uuid.uuid4().hex[:8]}"
    for name, client in servers.items():
        client.create("/api/v1/namespaces", {"metadata": {"name": ns}})
        results[name] = scenario(client, ns)
    for index, (emulated, real) in enumerate(zip(results["emulator"], results["real"], strict=True)):
        assert emulated == real, f"step {index}:\n{emulated}\n{real}"


def creds(ns: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
    return f"{path}/{name}" + (f"/{sub}" if sub else "") if name else path


def test_schema_and_cel_errors(servers: dict[str, KubeClient]) -> None:
    bodies = [
        {"host": "h", "port": 70000},
        {"host": "h", "port": "5432"},
        {"host": "", "engine": "oracle", "database": "1db"},
        {"host": "h", "target": {"name": "n" * 64, "labels": {"a": "1", "b": "2", "c": "3", "d": "4"}}},
        {"port": 5432},
        {"host": "h", "port": 3306},
    ]

    def scenario(c: KubeClient, ns: str) -> Any:
        return [answer(lambda spec=spec: c.create(creds(ns), example_object("x", ns, **spec))) for spec in bodies]

    both(servers, scenario)


def test_defaults_and_pruning(servers: dict[str, KubeClient]) -> None:
    def scenario(c: KubeClient, ns: str) -> Any:
        body = example_object("x", ns, host="h", bogus=1, extra={"free": 1})
        return [answer(lambda: c.create(creds(ns), body, fieldValidation="Ignore"))]  # the emulator's only mode

    both(servers, scenario)


def test_updates_conflicts_patches_and_transition_rules(servers: dict[str, KubeClient]) -> None:
    def scenario(c: KubeClient, ns: str) -> Any:
        created = c.create(creds(ns), example_object("x", ns, host="h", username="alice"))
        rv = created["metadata"]["resourceVersion"]
        steps = [
            answer(lambda: c.patch(creds(ns, "x"), {"spec": {"username": "bob"}})),
            answer(lambda: c.patch(creds(ns, "x"), {"metadata": {"labels": {"a": "b"}}})),
            answer(lambda: c.replace(creds(ns, "x"), created)),  # stale resourceVersion
            answer(
                lambda: c.replace(
                    creds(ns, "x"), {**created, "metadata": {**created["metadata"], "resourceVersion": ""}}
                )
            ),
            answer(
                lambda: c.patch(
                    creds(ns, "x"), [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}], type="json"
                )
            ),
            answer(lambda: c.patch(creds(ns, "x"), {"spec": {"port": 1}}, type="strategic")),
            answer(lambda: c.patch(creds(ns, "x"), {"status": {"a": 1}, "spec": {"port": 2}})),
            answer(lambda: c.patch(creds(ns, "x", "status"), {"status": {"a": 1}, "spec": {"port": 3}})),
            answer(lambda: c.create(creds(ns), example_object("x", ns, host="h"))),
            answer(lambda: c.get(creds(ns, "nope"))),
            answer(lambda: c.delete(creds(ns, "x"))),
        ]
        same = c.create(f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "s", "labels": {"a": "1"}}})
        again = c.patch(f"/api/v1/namespaces/{ns}/secrets/s", {"metadata": {"labels": {"a": "1"}}})
        steps.append(same["metadata"]["resourceVersion"] == again["metadata"]["resourceVersion"])
        return steps

    both(servers, scenario)


def test_names_namespaces_selectors_and_finalizers(servers: dict[str, KubeClient]) -> None:
    def scenario(c: KubeClient, ns: str) -> Any:
        cms = f"/api/v1/namespaces/{ns}/configmaps"
        c.create(cms, {"metadata": {"name": "fin", "finalizers": ["example.com/hold"]}})
        c.delete(f"{cms}/fin")
        steps = [
            answer(lambda: c.create(cms, {"metadata": {"name": "Bad_Name"}})),
            answer(lambda: c.create(cms, {"metadata": {}})),
            answer(lambda: c.create("/api/v1/namespaces/no-such-namespace/configmaps", {"metadata": {"name": "a"}})),
            answer(lambda: c.list(cms, fieldSelector="spec.nope=1")),
            answer(lambda: c.list(f"/api/v1/namespaces/{ns}/secrets", fieldSelector="spec.nope=1")),
            answer(lambda: c.list(creds(ns), fieldSelector="spec.nope=1")),
            answer(lambda: c.patch(f"{cms}/fin", {"metadata": {"finalizers": ["example.com/hold", "x.io/y"]}})),
            bool(c.get(f"{cms}/fin")["metadata"].get("deletionTimestamp")),
        ]
        c.patch(f"{cms}/fin", {"metadata": {"finalizers": None}})
        steps.append(c.exists(f"{cms}/fin"))
        listing = c.list(cms)
        steps.append((listing["kind"], listing["apiVersion"], sorted(listing["metadata"])))
        return steps

    both(servers, scenario)


def test_token_requests(servers: dict[str, KubeClient]) -> None:
    def scenario(c: KubeClient, ns: str) -> Any:
        c.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "app"}})
        token = f"/api/v1/namespaces/{ns}/serviceaccounts/{{}}/token"
        issued = c.create(
            token.format("app"), {"spec": {"audiences": ["sts.amazonaws.com"], "expirationSeconds": 3600}}
        )
        claims = jwt.decode(issued["status"]["token"], options={"verify_signature": False})
        return [
            answer(lambda: c.create(token.format("nobody"), {"spec": {"audiences": ["x"]}})),
            answer(lambda: c.create(token.format("app"), {"spec": {"audiences": ["x"], "expirationSeconds": 60}})),
            normalize(issued),
            sorted(claims),
            claims["sub"],
            claims["aud"],
            claims["exp"] - claims["iat"],
            normalize(claims["kubernetes.io"]),
        ]

    both(servers, scenario)


def test_watch_resume_and_selector_transitions(servers: dict[str, KubeClient]) -> None:
    def scenario(c: KubeClient, ns: str) -> Any:
        cms = f"/api/v1/namespaces/{ns}/configmaps"
        rv = c.create(cms, {"metadata": {"name": "a", "labels": {"app": "x"}}})["metadata"]["resourceVersion"]
        c.patch(f"{cms}/a", {"metadata": {"labels": {"app": "y"}}})
        c.patch(f"{cms}/a", {"data": {"k": "v"}})
        c.create(cms, {"metadata": {"name": "b"}})
        c.patch(f"{cms}/a", {"metadata": {"labels": {"app": "z"}}})
        c.delete(f"{cms}/b")
        everything = c.watch(cms, resource_version=rv, timeout_seconds=1)
        selected = c.watch(cms, resource_version=rv, timeout_seconds=1, label_selector="app=y")
        return [[(e["type"], e["object"]["metadata"]["name"]) for e in stream] for stream in (everything, selected)]

    both(servers, scenario)


def test_discovery_and_crd_status(servers: dict[str, KubeClient]) -> None:
    def scenario(c: KubeClient, ns: str) -> Any:
        crd = c.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}")
        group = next(g for g in c.get("/apis")["groups"] if g["name"] == GROUP)
        return [normalize(crd["status"]), normalize(c.get(f"/apis/{GROUP}/{VERSION}")), group]

    both(servers, scenario)


def test_the_client_speaks_tls_with_tokens_kubeconfigs_and_client_certificates(real: Any) -> None:
    with KubeClient(real.url, ca_file=real.ca_file, client_cert=real.client_cert) as by_cert:
        assert by_cert.get("/api/v1/namespaces/default")["metadata"]["name"] == "default"
    with KubeClient.from_kubeconfig(real.kubeconfig) as by_config:
        assert by_config.list("/api/v1/namespaces")["kind"] == "NamespaceList"
    with KubeClient(real.url, ca_file=real.ca_file) as anonymous, pytest.raises(KubeApiError) as exc:
        anonymous.list("/api/v1/secrets")
    assert exc.value.code in (401, 403)


def test_metadata_validation(servers: dict[str, KubeClient]) -> None:
    def scenario(c: KubeClient, ns: str) -> Any:
        cms = f"/api/v1/namespaces/{ns}/configmaps"
        owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-1", "controller": True}
        bad = [
            {"labels": {"ok": "bad value!"}},
            {"labels": {"ok": "x" * 64}},
            {"labels": {"bad key!": "v"}},
            {"labels": {"Bad_Prefix.com/name": "v"}},
            {"annotations": {"bad key!": "v"}},
            {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o"}]},
            {"ownerReferences": [{"uid": "u"}]},
            {"ownerReferences": [owner, {**owner, "name": "p"}]},
        ]
        answers = [answer(lambda meta=meta: c.create(cms, {"metadata": {"name": "x", **meta}})) for meta in bad]
        answers.append(answer(lambda: c.create(cms, {"metadata": {"name": "n" * 254}})))
        answers.append(answer(lambda: c.create("/api/v1/namespaces", {"metadata": {"name": "n" * 64}})))
        answers.append(answer(lambda: c.create(cms, {"metadata": {"name": "x", "labels": {"a/" + "n" * 64: ""}}})))
        return answers

    both(servers, scenario)
