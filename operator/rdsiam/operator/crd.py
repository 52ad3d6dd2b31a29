"""Generate the CustomResourceDefinition from the spec model (``rdsiam crd``; ``crds/`` holds its output)."""

from __future__ import annotations

from typing import Any

import yaml

from rdsiam.operator import spec as specmod

_DROP = {"title", "$defs", "discriminator"}


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn pydantic's JSON schema into a Kubernetes structural schema (no $ref, no null unions)."""
    if "$ref" in schema:
        ref = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**ref, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            return _structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "default" and value == {}:
            out[key] = {}
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def spec_schema() -> dict[str, Any]:
    raw = specmod.CredentialSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema = _structural(raw, defs)
    schema["x-kubernetes-validations"] = specmod.CEL_RULES
    return schema


_CONDITION = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "observedGeneration": {"type": "integer"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "conditions": {
            "type": "array", "items": _CONDITION,
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
        },
        "observedGeneration": {"type": "integer"},
        "lastRefreshTime": {"type": "string", "format": "date-time"},
        "expiresAt": {"type": "string", "format": "date-time"},
        "secretName": {"type": "string"},
        "identity": {"type": "string", "description": "ARN of the AWS principal that signed the token."},
        "endpoint": {"type": "string", "description": "The host:port the token is signed for."},
    },
}

PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Secret", "type": "string", "jsonPath": ".status.secretName"},
    # A string, not a date: kubectl prints future dates as "<invalid>".
    {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{specmod.PLURAL}.{specmod.GROUP}",
            "labels": {"app.kubernetes.io/name": "rdsiam", "app.kubernetes.io/component": "crd"},
        },
        "spec": {
            "group": specmod.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": specmod.KIND, "listKind": f"{specmod.KIND}List", "plural": specmod.PLURAL,
                "singular": specmod.SINGULAR, "shortNames": specmod.SHORT_NAMES,
                "categories": specmod.CATEGORIES,
            },
            "versions": [{
                "name": specmod.VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "RdsIamCredential keeps a Secret holding a fresh RDS IAM auth token and DSN.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": STATUS_SCHEMA,
                    },
                }},
            }],
        },
    }


def render() -> str:
    header = "# Generated by `rdsiam crd` from rdsiam.operator.spec; do not edit by hand.\n"
    return header + str(yaml.safe_dump(crd(), sort_keys=False, width=120))
