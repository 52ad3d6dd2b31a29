"""Structural schema handling of the emulator: defaults, pruning, validation and CEL messages."""

from __future__ import annotations

from typing import Any

from rdsiam.testing.kube.example import EXAMPLE_CRD
from rdsiam.testing.kube.schema import Schema

BLOCKED = (
    "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
SCHEMA = Schema(EXAMPLE_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"], root=True)


def _obj(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.rdsiam.io/v1alpha1",
        "kind": "DbCredential",
        "metadata": {"name": "x", "namespace": "ns"},
        "spec": spec,
    }


def _messages(obj: dict[str, Any], old: Any = None) -> list[str]:
    prepared, _ = SCHEMA.default_and_prune(obj)
    return [str(e) for e in (SCHEMA.validate(prepared, old) if old is not None else SCHEMA.validate(prepared))]


def test_defaults_are_applied_and_unknown_fields_pruned_except_where_preserved() -> None:
    obj = _obj(host="h", bogus=1, extra={"anything": {"goes": True}}, target={"name": "t", "nope": 2})
    prepared, pruned = SCHEMA.default_and_prune(obj)
    assert prepared["spec"] == {
        "host": "h",
        "extra": {"anything": {"goes": True}},
        "target": {"name": "t"},
        "engine": "postgres",
        "refreshInterval": "10m",
    }
    assert sorted(pruned) == ["spec.bogus", "spec.target.nope"]
    assert prepared["metadata"] == {"name": "x", "namespace": "ns"}


def test_null_values_of_non_nullable_fields_are_dropped_then_defaulted() -> None:
    prepared, _ = SCHEMA.default_and_prune(_obj(host="h", engine=None, port=None))
    assert prepared["spec"] == {"host": "h", "engine": "postgres", "refreshInterval": "10m"}


def test_schema_errors_use_kube_openapi_wording() -> None:
    messages = _messages(
        _obj(
            host="",
            port=70000,
            database="1db",
            engine="oracle",
            target={"name": "n" * 64, "labels": {"a": "1", "b": "2", "c": "3", "d": "4"}},
        )
    )
    assert messages == [  # the real order varies (a Go map); the emulator sorts by key
        "spec.database: Invalid value: \"1db\": spec.database in body should match '^[A-Za-z_][A-Za-z0-9_$]*$'",
        'spec.engine: Unsupported value: "oracle": supported values: "postgres", "mysql"',
        'spec.host: Invalid value: "": spec.host in body should be at least 1 chars long',
        "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535",
        "spec.target.labels: Too many: 4: must have at most 3 items",
        "spec.target.name: Too long: may not be more than 63 bytes",
        BLOCKED,
    ]


def test_type_errors_block_cel_rules_like_the_real_server() -> None:
    assert _messages(_obj(port="5432")) == [
        'spec.port: Invalid value: "string": spec.port in body must be of type integer: "string"',
        BLOCKED,
    ]
    # A bound violation does not block the rules: both are reported.
    assert _messages(_obj(port=70000)) == [
        "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535",
        "spec: Invalid value: either dsn or host must be set",
    ]


def test_cel_rules_message_message_expression_and_field_path() -> None:
    assert _messages(_obj(port=5432)) == ["spec: Invalid value: either dsn or host must be set"]
    assert _messages(_obj(host="h", port=3306)) == ["spec.port: Invalid value: port 3306 is for mysql, not postgres"]
    assert _messages(_obj(host="h", port=3306, engine="mysql")) == []


def test_transition_rules_use_old_self_only_on_update() -> None:
    old = SCHEMA.default_and_prune(_obj(host="h", username="alice"))[0]
    assert _messages(_obj(host="h", username="bob")) == []  # create: no oldSelf, the rule is skipped
    assert _messages(_obj(host="h", username="bob"), old) == [
        'spec.username: Invalid value: "bob": username is immutable'
    ]
    assert _messages(_obj(host="h", username="alice"), old) == []


def test_unchanged_invalid_values_ratchet_on_update() -> None:
    old = {**_obj(host="h", port=70000), "status": {}}
    old["spec"].update(engine="postgres", refreshInterval="10m")
    assert _messages(_obj(host="h", port=70000), old) == []
    assert _messages(_obj(host="h", port=70001), old) == [
        "spec.port: Invalid value: 70001: spec.port in body should be less than or equal to 65535"
    ]
