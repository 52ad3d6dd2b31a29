"""Minimal OpenAPI v3 documents: just enough for kubectl's default ``--validate=strict``.

kubectl checks in ``/openapi/v3/<group-version>`` whether the PATCH operation of a kind
accepts the ``fieldValidation`` query parameter; if so it leaves validation to the server
(without ``/openapi/v3``, ``kubectl apply`` fails: it cannot download ``/openapi/v2`` either).
The emulator then ignores ``fieldValidation`` (unknown fields of custom resources are pruned).
The documents carry paths and operations but no schemas: no ``kubectl explain``, no
client-side validation.
"""

from __future__ import annotations

import hashlib
from typing import Any

from rdsiam.testing.kube.paths import resource_url
from rdsiam.testing.kube.resources import Registry, ResourceType

__all__ = ["OpenAPI"]

_QUERY_PARAMS = ("fieldValidation",)


def _operation(rtype: ResourceType, action: str) -> dict[str, Any]:
    return {
        "operationId": f"{action}{rtype.kind}",
        "parameters": [{"name": name, "in": "query", "schema": {"type": "string"}} for name in _QUERY_PARAMS],
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": rtype.group,
            "version": rtype.version,
            "kind": rtype.kind,
        },
    }


class OpenAPI:
    """Builds (and caches per registry change) the ``/openapi/v3`` index and per-group-version documents."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._generation = -1
        self._docs: dict[str, dict[str, Any]] = {}

    def _refresh(self) -> None:
        if self._generation == self.registry.generation:
            return
        docs: dict[str, dict[str, Any]] = {}
        for rtype in self.registry:
            key = f"apis/{rtype.group}/{rtype.version}" if rtype.group else f"api/{rtype.version}"
            doc = docs.setdefault(
                key,
                {
                    "openapi": "3.0.0",
                    "info": {"title": "Kubernetes", "version": "v1.32.0"},
                    "paths": {},
                    "components": {"schemas": {}},
                },
            )
            namespace = "{namespace}" if rtype.namespaced else None
            item = resource_url(rtype.group, rtype.version, rtype.plural, namespace, "{name}")
            collection = resource_url(rtype.group, rtype.version, rtype.plural, namespace)
            doc["paths"][item] = {
                "get": _operation(rtype, "get"),
                "put": _operation(rtype, "put"),
                "patch": _operation(rtype, "patch"),
                "delete": _operation(rtype, "delete"),
            }
            doc["paths"][collection] = {"get": _operation(rtype, "list"), "post": _operation(rtype, "post")}
            if rtype.has_status:
                doc["paths"][f"{item}/status"] = {"patch": _operation(rtype, "patch")}
        self._docs = docs
        self._generation = self.registry.generation

    def index(self) -> dict[str, Any]:
        self._refresh()
        digest = hashlib.sha256(str(self._generation).encode()).hexdigest()[:16].upper()
        return {"paths": {key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"} for key in sorted(self._docs)}}

    def document(self, key: str) -> dict[str, Any] | None:
        self._refresh()
        return self._docs.get(key.strip("/"))
