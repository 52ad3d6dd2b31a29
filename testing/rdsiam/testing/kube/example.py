"""An example CRD shaped like rdsiam's, used by the emulator's own tests.

It exercises what the emulator implements for custom resources: a status subresource,
printer columns, defaults, enums, bounds, patterns, CEL rules (including a transition
rule with ``oldSelf``, a ``messageExpression`` and a ``fieldPath``), ``selectableFields``
and ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXAMPLE_CRD", "GROUP", "KIND", "PLURAL", "VERSION", "example_object"]

GROUP = "example.rdsiam.io"
VERSION = "v1alpha1"
PLURAL = "dbcredentials"
KIND = "DbCredential"

_RULES = [
    {"rule": "has(self.dsn) || has(self.host)", "message": "either dsn or host must be set"},
    {
        "rule": "!has(self.port) || self.port != 3306 || self.engine == 'mysql'",
        "messageExpression": "'port 3306 is for mysql, not ' + self.engine",
        "fieldPath": ".port",
    },
]

_SPEC: dict[str, Any] = {
    "type": "object",
    "x-kubernetes-validations": _RULES,
    "properties": {
        "dsn": {"type": "string"},
        "host": {"type": "string", "minLength": 1, "maxLength": 253},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "database": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_$]*$"},
        "engine": {"type": "string", "enum": ["postgres", "mysql"], "default": "postgres", "maxLength": 8},
        "refreshInterval": {"type": "string", "default": "10m"},
        "username": {
            "type": "string",
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "username is immutable"}],
        },
        "target": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 63},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 3},
            },
        },
        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}

_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Secret", "type": "string", "jsonPath": ".status.secretName"},
    {"name": "Port", "type": "integer", "jsonPath": ".spec.port", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

EXAMPLE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": KIND,
            "plural": PLURAL,
            "singular": "dbcredential",
            "shortNames": ["dbc"],
            "categories": ["rdsiam"],
        },
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _COLUMNS,
                "selectableFields": [{"jsonPath": ".spec.engine"}],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": _SPEC,
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def example_object(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A DbCredential object (``spec`` defaults to a valid host/port)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec or {"host": "db.example.com", "port": 5432},
    }
