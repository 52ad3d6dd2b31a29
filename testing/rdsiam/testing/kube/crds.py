"""CustomResourceDefinitions: turning a CRD object into served resource types and its status."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from rdsiam.testing.kube.meta import now_rfc3339
from rdsiam.testing.kube.resources import ResourceType
from rdsiam.testing.kube.schema import Schema

__all__ = ["crd_defaults", "crd_established_status", "crd_resource_types"]


def crd_defaults(crd: dict[str, Any]) -> None:
    """Defaults the real server fills into a CRD's spec."""
    spec = crd.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})
    for version in spec.get("versions") or []:
        version.setdefault("served", True)
        version.setdefault("storage", False)


def crd_resource_types(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of the CRD."""
    spec = crd["spec"]
    names = spec["names"]
    group = spec["group"]
    storage = next((v["name"] for v in spec["versions"] if v.get("storage")), spec["versions"][0]["name"])
    digest = hashlib.sha256(f"{group}/{storage}/{names['plural']}".encode()).digest()
    storage_hash = base64.b64encode(digest[:8]).decode()
    types = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        raw_schema = (version.get("schema") or {}).get("openAPIV3Schema") or {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
        subresources = sorted((version.get("subresources") or spec.get("subresources") or {}).keys() & {"status"})
        columns = version.get("additionalPrinterColumns") or spec.get("additionalPrinterColumns") or []
        selectable = [f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or []]
        types.append(
            ResourceType(
                group=group,
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs=["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
                shortnames=list(names.get("shortNames") or []),
                categories=list(names.get("categories") or []),
                subresources=subresources,
                crd=crd,
                schema=Schema(raw_schema, root=True),
                printer_columns=list(columns),
                selectable_fields=selectable,
                storage_version=storage_hash,
            )
        )
    return types


def crd_established_status(crd: dict[str, Any]) -> dict[str, Any]:
    """The status the apiextensions controllers write once names are accepted and the CRD is served."""
    spec = crd["spec"]
    previous = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
    now = now_rfc3339()

    def condition(kind: str, reason: str, message: str) -> dict[str, Any]:
        old = previous.get(kind)
        since = old["lastTransitionTime"] if old and old.get("status") == "True" else now
        return {
            "type": kind,
            "status": "True",
            "lastTransitionTime": since,
            "reason": reason,
            "message": message,
        }

    storage = [v["name"] for v in spec["versions"] if v.get("storage")]
    stored = list((crd.get("status") or {}).get("storedVersions") or [])
    for version in storage:
        if version not in stored:
            stored.append(version)
    return {
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": dict(spec["names"]),
        "storedVersions": stored,
    }
