"""Pure pieces of the Kubernetes API emulator: selectors, patches, errors, JSONPath, protobuf."""

from __future__ import annotations

import base64

import pytest

from rdsiam.testing.kube.errors import ApiError, FieldError, invalid
from rdsiam.testing.kube.jsonpath import find
from rdsiam.testing.kube.patching import PatchError, json_patch, merge_patch, strategic_merge_patch
from rdsiam.testing.kube.paths import ResourcePath, parse_resource_path, resource_url
from rdsiam.testing.kube.protobuf import decode
from rdsiam.testing.kube.selectors import FieldSelector, LabelSelector
from rdsiam.testing.kube.tables import human_duration


def _obj(labels: dict[str, str] | None = None, **top: object) -> dict[str, object]:
    return {"metadata": {"name": "n", "namespace": "ns", "labels": labels or {}}, **top}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),  # != matches objects without the label, like the real server
        ("app!=web", {"app": "web"}, False),
        ("tier in (a, b)", {"tier": "b"}, True),
        ("tier in (a,b)", {}, False),
        ("tier notin (a,b)", {}, True),
        ("tier notin (a,b)", {"tier": "a"}, False),
        ("tier", {"tier": ""}, True),
        ("!tier", {"tier": "x"}, False),
        ("app=web,tier in (a,b),!legacy", {"app": "web", "tier": "a"}, True),
        ("app.kubernetes.io/managed-by=rdsiam", {"app.kubernetes.io/managed-by": "rdsiam"}, True),
    ],
)
def test_label_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector(selector).matches(_obj(labels)) is expected


def test_label_selector_rejects_garbage_with_400() -> None:
    with pytest.raises(ApiError) as exc:
        LabelSelector("app=(")
    assert exc.value.code == 400


def test_field_selector_supports_declared_fields_only() -> None:
    supported = {"metadata.name", "metadata.namespace", "involvedObject.uid"}
    event = {"metadata": {"name": "e", "namespace": "ns"}, "involvedObject": {"uid": "u1"}}
    assert FieldSelector("involvedObject.uid=u1,metadata.namespace==ns", supported).matches(event)
    assert not FieldSelector("metadata.name!=e", supported).matches(event)
    with pytest.raises(ApiError) as exc:
        FieldSelector("spec.foo=bar", supported)
    assert (exc.value.code, exc.value.message) == (400, "field label not supported: spec.foo")


def test_merge_patch_is_rfc7386() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "k": "v"}
    assert merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3], "k": None}) == {
        "a": {"c": 2, "d": 3},
        "l": [3],
    }
    assert target == {"a": {"b": 1, "c": 2}, "l": [1, 2], "k": "v"}  # the original is untouched


def test_json_patch_operations_and_failed_test_is_422() -> None:
    doc = {"metadata": {"resourceVersion": "5", "finalizers": ["a"]}, "spec": {"x": 1}}
    patched = json_patch(
        doc,
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "b"},
            {"op": "replace", "path": "/spec/x", "value": 2},
            {"op": "copy", "from": "/spec/x", "path": "/spec/y"},
            {"op": "move", "from": "/spec/y", "path": "/spec/z"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ],
    )
    assert patched == {"metadata": {"resourceVersion": "5", "finalizers": ["b"]}, "spec": {"x": 2, "z": 2}}
    with pytest.raises(PatchError) as exc:
        json_patch(doc, [{"op": "test", "path": "/metadata/resourceVersion", "value": "4"}])
    assert exc.value.code == 422
    assert exc.value.status()["message"] == "the server rejected our request due to an error in our request"
    assert exc.value.cause == "testing value /metadata/resourceVersion failed: test failed"


def test_strategic_merge_patch_interprets_directives_and_replaces_lists() -> None:
    target = {"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}, "data": {"k": "v"}}
    patch = {
        "$setElementOrder/finalizers": ["a"],
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["b"], "labels": {"$patch": "replace", "z": "3"}},
        "data": {"$patch": "delete"},
    }
    assert strategic_merge_patch(target, patch) == {"metadata": {"finalizers": ["a"], "labels": {"z": "3"}}}


def test_field_errors_and_invalid_status_are_worded_like_kube_apiserver() -> None:
    errors = [
        FieldError.invalid("spec.port", 70000, "spec.port in body should be less than or equal to 65535"),
        FieldError.required("spec.host"),
        FieldError.not_supported("spec.engine", "oracle", ["postgres", "mysql"]),
        FieldError.too_long("spec.target.name", "x" * 70, 63),
        FieldError.too_many("spec.target.labels", 4, 3),
    ]
    error = invalid("rdsiam.io", "RdsIamCredential", "x", errors)
    status = error.status()
    assert status["code"] == 422 and status["reason"] == "Invalid" and status["kind"] == "Status"
    assert status["message"] == (
        'RdsIamCredential.rdsiam.io "x" is invalid: ['
        "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535, "
        "spec.host: Required value, "
        'spec.engine: Unsupported value: "oracle": supported values: "postgres", "mysql", '
        "spec.target.name: Too long: may not be more than 63 bytes, "
        "spec.target.labels: Too many: 4: must have at most 3 items]"
    )
    assert status["details"]["causes"][0] == {
        "reason": "FieldValueInvalid",
        "message": "Invalid value: 70000: spec.port in body should be less than or equal to 65535",
        "field": "spec.port",
    }


def test_paths_parse_namespaces_and_subresources() -> None:
    assert parse_resource_path("/api/v1/namespaces") == ResourcePath("", "v1", "namespaces")
    assert parse_resource_path("/api/v1/namespaces/ns1") == ResourcePath("", "v1", "namespaces", None, "ns1")
    assert parse_resource_path("/api/v1/namespaces/ns1/status") == ResourcePath(
        "", "v1", "namespaces", None, "ns1", "status"
    )
    assert parse_resource_path("/api/v1/namespaces/ns/serviceaccounts/sa/token") == ResourcePath(
        "", "v1", "serviceaccounts", "ns", "sa", "token"
    )
    assert parse_resource_path("/apis/rdsiam.io/v1alpha1/rdsiamcredentials") == ResourcePath(
        "rdsiam.io", "v1alpha1", "rdsiamcredentials"
    )
    assert parse_resource_path("/apis/rdsiam.io") is None
    assert (
        resource_url("rdsiam.io", "v1", "creds", "ns", "n", "status")
        == "/apis/rdsiam.io/v1/namespaces/ns/creds/n/status"
    )


def test_jsonpath_printer_column_expressions() -> None:
    obj = {
        "status": {"conditions": [{"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]},
        "spec": {"ports": [1, 2]},
    }
    assert find(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert find(obj, "{.spec.ports[-1]}") == [2]
    assert find(obj, ".spec.ports[*]") == [1, 2]
    assert find(obj, ".spec.missing") == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (30 * 3600, "30h"),
        (50 * 3600, "2d2h"),
    ],
)
def test_ages_print_like_kubectl(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_protobuf_secret_from_kubectl_create_is_decoded() -> None:
    # The body `kubectl create secret generic abc --from-literal=a=b` sends (captured from kubectl 1.32).
    body = (
        b'k8s\x00\n\x0c\n\x02v1\x12\x06Secret\x12\x1f\n\x13\n\x03abc\x12\x00\x1a\x00"\x00*\x002\x008\x00B\x00'
        b'\x12\x06\n\x01a\x12\x01b\x1a\x00\x1a\x00"\x00'
    )
    secret = decode(body)
    assert secret["apiVersion"] == "v1" and secret["kind"] == "Secret"
    assert secret["metadata"] == {"name": "abc"}
    assert base64.b64decode(secret["data"]["a"]) == b"b"
