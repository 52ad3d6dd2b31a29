"""The emulator answers create/get/list/replace/patch/delete the way kube-apiserver does."""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterator

import pytest

from rdsiam.testing.kube import KubeApiError, KubeClient, KubeEmulator
from rdsiam.testing.kube.example import EXAMPLE_CRD, GROUP, PLURAL, VERSION, example_object

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        emulator.apply_manifest(EXAMPLE_CRD)
        yield emulator


@pytest.fixture
def client(emu: KubeEmulator) -> Iterator[KubeClient]:
    client = emu.client()
    yield client
    client.close()


@pytest.fixture
def ns(emu: KubeEmulator, client: KubeClient) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.create("/api/v1/namespaces", {"metadata": {"name": name}})
    return name


def creds(ns: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
    return f"{path}/{name}" + (f"/{sub}" if sub else "") if name else path


def secrets(ns: str, name: str | None = None) -> str:
    return f"/api/v1/namespaces/{ns}/secrets" + (f"/{name}" if name else "")


def error_of(call: object) -> KubeApiError:
    assert callable(call)
    with pytest.raises(KubeApiError) as exc:
        call()
    return exc.value


def test_server_sets_metadata_with_one_global_resource_version(client: KubeClient, ns: str) -> None:
    secret = client.create(secrets(ns), {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    cred = client.create(creds(ns), example_object("c", ns))

    for obj in (secret, cred):
        meta = obj["metadata"]
        assert uuid.UUID(meta["uid"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
        datetime.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    assert int(cred["metadata"]["resourceVersion"]) > int(secret["metadata"]["resourceVersion"])
    assert cred["metadata"]["generation"] == 1
    assert "generation" not in secret["metadata"]  # built-ins without a spec have none
    assert secret["data"] == {"k": "dg=="} and secret["type"] == "Opaque"  # stringData folded into data


def test_resource_version_changes_only_on_real_changes(client: KubeClient, ns: str) -> None:
    created = client.create(secrets(ns), {"metadata": {"name": "s", "labels": {"a": "1"}}})
    same = client.patch(secrets(ns, "s"), {"metadata": {"labels": {"a": "1"}}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    changed = client.patch(secrets(ns, "s"), {"metadata": {"labels": {"a": "2"}}})
    assert int(changed["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def test_generation_bumps_only_when_the_spec_changes(client: KubeClient, ns: str) -> None:
    client.create(creds(ns), example_object("c", ns))
    labelled = client.patch(creds(ns, "c"), {"metadata": {"labels": {"x": "y"}}})
    with_status = client.patch(creds(ns, "c", "status"), {"status": {"secretName": "s"}})
    assert labelled["metadata"]["generation"] == with_status["metadata"]["generation"] == 1
    respecced = client.patch(creds(ns, "c"), {"spec": {"port": 6432}})
    assert respecced["metadata"]["generation"] == 2


def test_create_twice_is_409_already_exists(client: KubeClient, ns: str) -> None:
    client.create(secrets(ns), {"metadata": {"name": "dup"}})
    error = error_of(lambda: client.create(secrets(ns), {"metadata": {"name": "dup"}}))
    assert error.code == 409
    assert error.status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "dup" already exists',
        "reason": "AlreadyExists",
        "details": {"name": "dup", "kind": "secrets"},
        "code": 409,
    }


def test_missing_objects_are_404_not_found(client: KubeClient, ns: str) -> None:
    error = error_of(lambda: client.get(creds(ns, "nope")))
    assert (error.code, error.reason, error.message) == (
        404,
        "NotFound",
        f'{PLURAL}.{GROUP} "nope" not found',
    )
    assert error.status["details"] == {"name": "nope", "group": GROUP, "kind": PLURAL}


def test_put_replaces_with_a_resource_version_precondition(client: KubeClient, ns: str) -> None:
    created = client.create(creds(ns), example_object("c", ns))
    body = {**created, "spec": {"host": "other", "port": 1}}
    replaced = client.replace(creds(ns, "c"), body)
    assert replaced["spec"] == {"host": "other", "port": 1, "engine": "postgres", "refreshInterval": "10m"}

    stale = error_of(lambda: client.replace(creds(ns, "c"), body))  # still carries the old resourceVersion
    assert (stale.code, stale.reason) == (409, "Conflict")
    assert stale.message == (
        f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "c": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    unconditional = {**replaced, "metadata": {**replaced["metadata"], "resourceVersion": ""}}
    error = error_of(lambda: client.replace(creds(ns, "c"), unconditional))
    assert error.code == 422
    assert error.message == (
        f'{PLURAL}.{GROUP} "c" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update'
    )
    assert error_of(lambda: client.replace(creds(ns, "gone"), body)).code == 404


def test_merge_patch_with_a_stale_resource_version_is_a_conflict(client: KubeClient, ns: str) -> None:
    client.create(secrets(ns), {"metadata": {"name": "s"}})
    error = error_of(lambda: client.patch(secrets(ns, "s"), {"metadata": {"resourceVersion": "1", "labels": {}}}))
    assert (error.code, error.reason) == (409, "Conflict")


def test_json_patch_test_operation_failure_is_422_as_kopf_expects(client: KubeClient, ns: str) -> None:
    created = client.create(creds(ns), example_object("c", ns))
    rv = created["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example/finalizer"]},
    ]
    patched = client.patch(creds(ns, "c"), ops, type="json")
    assert patched["metadata"]["finalizers"] == ["example/finalizer"]

    error = error_of(lambda: client.patch(creds(ns, "c"), ops, type="json"))  # rv moved on
    assert (error.code, error.reason) == (422, "Invalid")
    assert error.message == "the server rejected our request due to an error in our request"


def test_strategic_merge_patch_applies_to_builtins_not_to_custom_resources(client: KubeClient, ns: str) -> None:
    client.create(secrets(ns), {"metadata": {"name": "s", "labels": {"a": "1"}}, "data": {"x": "eA=="}})
    patched = client.patch(
        secrets(ns, "s"), {"metadata": {"labels": {"b": "2"}}, "data": {"x": None}}, type="strategic"
    )
    assert patched["metadata"]["labels"] == {"a": "1", "b": "2"} and patched["data"] == {}
    client.create(creds(ns), example_object("c", ns))
    error = error_of(lambda: client.patch(creds(ns, "c"), {"spec": {"port": 2}}, type="strategic"))
    assert (error.code, error.reason) == (415, "UnsupportedMediaType")


def test_status_subresource_splits_spec_and_status_writes(client: KubeClient, ns: str) -> None:
    created = client.create(creds(ns), {**example_object("c", ns), "status": {"ignored": True}})
    assert "status" not in created  # status is dropped on create

    main = client.patch(creds(ns, "c"), {"spec": {"port": 1000}, "status": {"secretName": "nope"}})
    assert main["spec"]["port"] == 1000 and "status" not in main

    status = client.patch(
        creds(ns, "c", "status"),
        {"spec": {"port": 2000}, "metadata": {"labels": {"l": "v"}}, "status": {"secretName": "s"}},
    )
    assert status["status"] == {"secretName": "s"}
    assert status["spec"]["port"] == 1000 and "labels" not in status["metadata"]
    assert client.get(creds(ns, "c", "status"))["status"] == {"secretName": "s"}


def test_generate_name_gives_every_event_its_own_name(client: KubeClient, ns: str) -> None:
    event = {
        "metadata": {"generateName": "kopf-event-"},
        "involvedObject": {"kind": "Secret", "name": "s"},
        "reason": "Test",
        "message": "m",
        "type": "Normal",
    }
    names = {client.create(f"/api/v1/namespaces/{ns}/events", event)["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5 and all(re.fullmatch(r"kopf-event-[a-z0-9]{5}", name) for name in names)
    error = error_of(lambda: client.create(secrets(ns), {"metadata": {}}))
    assert error.code == 422 and "metadata.name: Required value: name or generateName is required" in error.message


def test_names_are_validated_as_dns_subdomains(client: KubeClient, ns: str) -> None:
    error = error_of(lambda: client.create(secrets(ns), {"metadata": {"name": "Bad_Name"}}))
    assert error.code == 422
    assert error.message.startswith(
        'Secret "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": '
        "a lowercase RFC 1123 subdomain must consist of"
    )


def test_namespaces_list_get_and_guard_their_content(client: KubeClient, ns: str) -> None:
    names = [item["metadata"]["name"] for item in client.list("/api/v1/namespaces")["items"]]
    assert {"default", "kube-system", ns} <= set(names)
    namespace = client.get(f"/api/v1/namespaces/{ns}")
    assert namespace["status"] == {"phase": "Active"} and namespace["spec"] == {"finalizers": ["kubernetes"]}
    error = error_of(lambda: client.create(secrets("no-such-ns"), {"metadata": {"name": "s"}}))
    assert (error.code, error.message) == (404, 'namespaces "no-such-ns" not found')


def test_lists_carry_kind_api_version_and_resource_version(client: KubeClient, ns: str) -> None:
    client.create(creds(ns), example_object("c", ns))
    listing = client.list(creds(ns))
    assert listing["kind"] == "DbCredentialList" and listing["apiVersion"] == f"{GROUP}/{VERSION}"
    assert int(listing["metadata"]["resourceVersion"]) >= int(listing["items"][0]["metadata"]["resourceVersion"])
    core = client.list(secrets(ns))
    assert (core["kind"], core["apiVersion"]) == ("SecretList", "v1")



def test_label_and_field_selectors_filter_lists(client: KubeClient, ns: str) -> None:
    client.create(secrets(ns), {"metadata": {"name": "a", "labels": {"app": "x", "tier": "db"}}})
    client.create(secrets(ns), {"metadata": {"name": "b", "labels": {"app": "y"}}})
    client.create(
        secrets(ns),
        {"metadata": {"name": "c"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}},
    )

    def names(**query: str) -> list[str]:
        return [o["metadata"]["name"] for o in client.list(secrets(ns), **query)["items"]]

    assert names(labelSelector="app=x") == ["a"]
    assert names(labelSelector="app!=x") == ["b", "c"]
    assert names(labelSelector="app in (x,y),!tier") == ["b"]
    assert names(labelSelector="tier") == ["a"]
    assert names(fieldSelector="metadata.name=b") == ["b"]
    assert names(fieldSelector="type=kubernetes.io/tls") == ["c"]
    assert names(fieldSelector="metadata.name!=b", labelSelector="app") == ["a"]
    error = error_of(lambda: client.list(secrets(ns), fieldSelector="spec.nope=1"))
    assert (error.code, error.message) == (400, "field label not supported: spec.nope")


def test_events_can_be_selected_by_involved_object(client: KubeClient, ns: str) -> None:
    for name, uid in (("one", "u1"), ("two", "u2")):
        client.create(
            f"/api/v1/namespaces/{ns}/events",
            {
                "metadata": {"generateName": "e-"},
                "reason": "R",
                "message": name,
                "type": "Normal",
                "involvedObject": {"kind": "DbCredential", "name": name, "namespace": ns, "uid": uid},
            },
        )
    selector = (
        f"involvedObject.name=one,involvedObject.namespace={ns},involvedObject.uid=u1,involvedObject.kind=DbCredential"
    )
    found = client.list(f"/api/v1/namespaces/{ns}/events", fieldSelector=selector)["items"]
    assert [e["message"] for e in found] == ["one"]




def test_discovery_serves_core_and_groups_for_kubectl(client: KubeClient) -> None:
    assert client.get("/api")["versions"] == ["v1"]
    core = client.get("/api/v1")
    assert core["groupVersion"] == "v1"
    secret = next(r for r in core["resources"] if r["name"] == "secrets")
    assert secret["kind"] == "Secret" and secret["namespaced"] is True and "watch" in secret["verbs"]
    token = next(r for r in core["resources"] if r["name"] == "serviceaccounts/token")
    assert token["kind"] == "TokenRequest" and token["group"] == "authentication.k8s.io"
    group = next(g for g in client.get("/apis")["groups"] if g["name"] == GROUP)
    assert group["preferredVersion"] == {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}
    resources = client.get(f"/apis/{GROUP}/{VERSION}")["resources"]
    assert {r["name"] for r in resources} == {PLURAL, f"{PLURAL}/status"}
    assert resources[0]["shortNames"] == ["dbc"] and resources[0]["categories"] == ["rdsiam"]
    assert client.get("/version")["major"] == "1"
    assert error_of(lambda: client.get("/apis/nope.example.com/v1")).code == 404


def test_tables_print_crd_columns_and_builtin_columns(client: KubeClient, ns: str) -> None:
    client.create(creds(ns), example_object("c", ns))
    client.patch(
        creds(ns, "c", "status"),
        {
            "status": {
                "secretName": "c-secret",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Rotated"}],
            }
        },
    )
    tab = client.request("GET", creds(ns), accept=TABLE)
    assert tab["kind"] == "Table"
    assert [c["name"] for c in tab["columnDefinitions"]] == [
        "Name",
        "Ready",
        "Reason",
        "Secret",
        "Port",
        "Age",
    ]
    cells = tab["rows"][0]["cells"]
    assert cells[:5] == ["c", "True", "Rotated", "c-secret", 5432] and re.fullmatch(r"\d+s", cells[5])
    assert tab["rows"][0]["object"]["kind"] == "PartialObjectMetadata"

    client.create(secrets(ns), {"metadata": {"name": "s"}, "data": {"a": "", "b": ""}})
    one = client.request("GET", secrets(ns, "s"), accept=TABLE)
    assert [c["name"] for c in one["columnDefinitions"]] == ["Name", "Age"]  # built-ins but Events
    assert one["rows"][0]["cells"][0] == "s"

    event = {
        "metadata": {"name": "e"},
        "involvedObject": {"kind": "DbCredential", "name": "c"},
        "reason": "TokenIssued",
        "message": "m",
        "type": "Normal",
    }
    client.create(f"/api/v1/namespaces/{ns}/events", event)
    events = client.request("GET", f"/api/v1/namespaces/{ns}/events", accept=TABLE)
    shown = [(c["name"], cell) for c, cell in zip(events["columnDefinitions"], events["rows"][0]["cells"], strict=True)
             if c["priority"] == 0]
    assert [name for name, _ in shown] == ["Last Seen", "Type", "Reason", "Object", "Message"]
    assert [cell for _, cell in shown][1:] == ["Normal", "TokenIssued", "dbcredential/c", "m"]
