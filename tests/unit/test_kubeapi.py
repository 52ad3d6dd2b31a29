"""Pure helpers of the operator's Kubernetes client."""

from __future__ import annotations

import json

import pytest

from rdsiam.operator.kubeapi import OWN_WRITES_LIMIT, KubeApi, metadata_of

META = {"name": "orders-db", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
        "annotations": {"metadata": "a key named like the field", "x": '{"metadata":{"name":"not me"}}'}}
DATA = {"password": "dG9rZW4=", "dsn": "cG9zdGdyZXNxbDovLw=="}


@pytest.mark.parametrize("obj", [
    {"kind": "Secret", "apiVersion": "v1", "metadata": META, "data": DATA, "type": "Opaque"},  # kube-apiserver
    {"apiVersion": "v1", "kind": "Secret", "metadata": META, "data": DATA},  # the emulator
    {"metadata": META, "data": DATA},
], ids=["kube-apiserver", "emulator", "metadata-first"])
@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "indented"])
def test_metadata_of_decodes_the_objects_own_metadata(obj: dict[str, object], indent: int | None) -> None:
    raw = json.dumps(obj, indent=indent).encode()
    assert metadata_of(raw) == {"metadata": META}


def test_metadata_of_stops_after_the_metadata() -> None:
    raw = json.dumps({"kind": "Secret", "apiVersion": "v1", "metadata": META}).encode()[:-1] + b',"data":{"pass'
    assert metadata_of(raw) == {"metadata": META}  # the rest (cut short here) was never decoded


@pytest.mark.parametrize("obj", [
    {"data": {"note": '"metadata":{"name":"not me"}'}, "metadata": META},  # another field first
    {"kind": 'Se"cret', "metadata": META},
    {"status": {"metadata": {"name": "not me"}}, "apiVersion": "v1", "metadata": META},
])
def test_metadata_of_decodes_any_other_shape_whole(obj: dict[str, object]) -> None:
    assert metadata_of(json.dumps(obj).encode()) == {"metadata": META}


def test_metadata_of_without_metadata_or_not_an_object() -> None:
    assert metadata_of(b'{"kind":"Status"}') == {"metadata": {}}
    assert metadata_of(b'["metadata"]') == {"metadata": {}}
    assert metadata_of(b'{"kind":"Secret","metadata":"odd"}') == {"metadata": {}}
    with pytest.raises(ValueError):
        metadata_of(b'{"kind":"Secret","metadata":{"name":')


def event(kind: str, meta: dict[str, object]) -> bytes:
    obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode()


def test_own_echo_knows_the_event_of_an_own_write_once() -> None:
    kube = KubeApi("http://127.0.0.1:1")
    line = event("MODIFIED", {"name": "s", "resourceVersion": "42", "annotations": {"a": '"resourceVersion":"9"'}})
    assert kube.own_echo(line) is None  # nothing written yet
    kube._written({"metadata": {"resourceVersion": "42"}})
    assert kube.own_echo(event("MODIFIED", {"name": "s", "resourceVersion": "43"})) is None  # another write
    assert kube.own_echo(line) == "42"  # the escaped quotes in the annotation are no key
    assert kube.own_echo(line) is None  # forgotten once seen


@pytest.mark.parametrize("line", [
    event("DELETED", {"name": "s", "resourceVersion": "42"}),
    event("BOOKMARK", {"resourceVersion": "42"}),
    event("MODIFIED", {"name": "s", "resourceVersion": "42", "annotations": {"resourceVersion": "42"}}),
    event("MODIFIED", {"name": "s", "resourceVersion": "42", "labels": {"resourceVersion": "7"}}),
    json.dumps({"type": "MODIFIED", "object": {"metadata": {"resourceVersion": "42"}}}).encode(),  # not compact
], ids=["deleted", "bookmark", "ambiguous", "ambiguous-label", "spaced"])
def test_own_echo_decodes_anything_else(line: bytes) -> None:
    kube = KubeApi("http://127.0.0.1:1")
    kube._written({"metadata": {"resourceVersion": "42"}})
    assert kube.own_echo(line) is None


def test_own_writes_are_bounded() -> None:
    kube = KubeApi("http://127.0.0.1:1")
    for version in range(OWN_WRITES_LIMIT + 5):  # events that came before their answers are never seen
        kube._written({"metadata": {"resourceVersion": str(version)}})
    assert kube.own_echo(event("MODIFIED", {"resourceVersion": "4"})) is None  # the oldest went first
    assert kube.own_echo(event("MODIFIED", {"resourceVersion": "5"})) == "5"


def test_a_write_that_changed_nothing_is_not_remembered() -> None:
    kube = KubeApi("http://127.0.0.1:1")
    kube._written({"metadata": {"resourceVersion": "42"}}, before="42")  # answered with the version it had
    assert kube.own_echo(event("MODIFIED", {"name": "s", "resourceVersion": "42"})) is None
    kube._written({"metadata": {"resourceVersion": "43"}}, before="42")
    assert kube.own_echo(event("MODIFIED", {"name": "s", "resourceVersion": "43"})) == "43"
