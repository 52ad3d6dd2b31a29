"""Applying a CRD serves its resource; custom objects are defaulted, pruned and validated as upstream."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator

import pytest

from rdsiam.testing.kube import KubeApiError, KubeClient, KubeEmulator
from rdsiam.testing.kube.example import EXAMPLE_CRD, GROUP, PLURAL, VERSION, example_object

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu: KubeEmulator) -> Iterator[KubeClient]:
    client = emu.client()
    yield client
    client.close()


@pytest.fixture
def crd(client: KubeClient) -> Iterator[str]:
    if not client.exists(f"{CRDS}/{PLURAL}.{GROUP}"):
        client.create(CRDS, EXAMPLE_CRD)
    yield f"{PLURAL}.{GROUP}"


@pytest.fixture
def ns(client: KubeClient) -> str:
    name = f"c-{uuid.uuid4().hex[:8]}"
    client.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def creds(ns: str, name: str | None = None) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}" + (f"/{name}" if name else "")


def rejected(client: KubeClient, path: str, body: dict[str, object], method: str = "POST") -> KubeApiError:
    with pytest.raises(KubeApiError) as exc:
        kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
        client.request(method, path, body=body, content_type=kind)
    return exc.value


def test_creating_a_crd_establishes_and_serves_its_resource(client: KubeClient, crd: str) -> None:
    stored = client.get(f"{CRDS}/{crd}")
    conditions = {c["type"]: c for c in stored["status"]["conditions"]}
    assert conditions["Established"]["status"] == conditions["NamesAccepted"]["status"] == "True"
    assert stored["status"]["acceptedNames"]["kind"] == "DbCredential"
    assert stored["status"]["storedVersions"] == [VERSION]
    assert stored["spec"]["names"]["listKind"] == "DbCredentialList"
    assert any(r["name"] == PLURAL for r in client.get(f"/apis/{GROUP}/{VERSION}")["resources"])
    assert client.list(f"/apis/{GROUP}/{VERSION}/{PLURAL}")["items"] == []


def test_schema_violations_are_422_with_field_paths(client: KubeClient, crd: str, ns: str) -> None:
    error = rejected(client, creds(ns), example_object("x", ns, host="h", port=70000))
    assert (error.code, error.reason) == (422, "Invalid")
    assert error.message == (
        'DbCredential.example.rdsiam.io "x" is invalid: '
        "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535"
    )
    assert error.status["details"] == {
        "name": "x",
        "group": GROUP,
        "kind": "DbCredential",
        "causes": [
            {
                "reason": "FieldValueInvalid",
                "field": "spec.port",
                "message": "Invalid value: 70000: spec.port in body should be less than or equal to 65535",
            }
        ],
    }
    error = rejected(client, creds(ns), example_object("x", ns, host="h", engine="oracle"))
    assert error.message == (
        'DbCredential.example.rdsiam.io "x" is invalid: ['
        'spec.engine: Unsupported value: "oracle": supported values: "postgres", "mysql", '
        "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
        "correct the existing errors to complete validation]"
    )


def test_cel_rules_reject_with_their_messages(client: KubeClient, crd: str, ns: str) -> None:
    error = rejected(client, creds(ns), example_object("x", ns, port=5432))
    assert (
        error.message == 'DbCredential.example.rdsiam.io "x" is invalid: spec: Invalid value: either dsn or '
        "host must be set"
    )
    error = rejected(client, creds(ns), example_object("x", ns, host="h", port=3306))
    assert error.message.endswith("spec.port: Invalid value: port 3306 is for mysql, not postgres")

    client.create(creds(ns), example_object("x", ns, host="h", username="alice"))
    error = rejected(client, creds(ns, "x"), {"spec": {"username": "bob"}}, method="PATCH")
    assert error.message.endswith('spec.username: Invalid value: "bob": username is immutable')


def test_defaults_are_applied_and_unknown_fields_dropped(client: KubeClient, crd: str, ns: str) -> None:
    body = example_object("x", ns, host="h", bogus=1, extra={"free": {"form": True}})
    created = client.create(creds(ns), body)
    assert created["spec"] == {
        "host": "h",
        "extra": {"free": {"form": True}},
        "engine": "postgres",
        "refreshInterval": "10m",
    }


def test_selectable_fields_filter_custom_objects(client: KubeClient, crd: str, ns: str) -> None:
    client.create(creds(ns), example_object("pg", ns, host="h"))
    client.create(creds(ns), example_object("my", ns, host="h", engine="mysql"))
    found = client.list(creds(ns), fieldSelector="spec.engine=mysql")["items"]
    assert [o["metadata"]["name"] for o in found] == ["my"]


def test_deleting_the_crd_removes_its_objects_and_resource(client: KubeClient, ns: str) -> None:
    crd = copy.deepcopy(EXAMPLE_CRD)
    crd["metadata"]["name"] = f"gadgets.{GROUP}"
    crd["spec"]["names"] = {"kind": "Gadget", "plural": "gadgets"}
    client.create(CRDS, crd)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/gadgets"
    client.create(
        path,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Gadget",
            "metadata": {"name": "g"},
            "spec": {"host": "h"},
        },
    )
    client.delete(f"{CRDS}/gadgets.{GROUP}")
    assert not client.exists(f"{CRDS}/gadgets.{GROUP}")
    with pytest.raises(KubeApiError) as exc:
        client.list(path)
    assert exc.value.code == 404
    assert not any(r["name"] == "gadgets" for r in client.get(f"/apis/{GROUP}/{VERSION}")["resources"])
