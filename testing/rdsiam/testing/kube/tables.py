"""Server-side printing: ``application/json;as=Table;v=v1;g=meta.k8s.io`` responses.

kubectl asks for tables on ``get``; custom resources use their CRD's
``additionalPrinterColumns`` (cells computed as the CRD table convertor does: dates become
ages like ``5m``), Events kubectl's Last Seen/Type/Reason/Object/Message, every other built-in
Name/Age.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable
from typing import Any

from rdsiam.testing.kube.jsonpath import find
from rdsiam.testing.kube.resources import ResourceType

__all__ = ["human_duration", "table"]

_NAME_DESC = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically. "
    "Name is primarily intended for creation idempotence and configuration definition. Cannot be "
    "updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_AGE_DESC = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is "
    "not guaranteed to be set in happens-before order across separate operations. Clients may not set "
    "this value. It is represented in RFC3339 form and is in UTC."
)


def human_duration(seconds: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(timestamp: Any) -> str:
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_duration((datetime.datetime.now(datetime.UTC) - then).total_seconds())


def _col(name: str, type_: str = "string", fmt: str = "", desc: str = "", priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": type_, "format": fmt, "description": desc, "priority": priority}


Column = tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]


def _name(obj: dict[str, Any]) -> Any:
    return obj["metadata"]["name"]


def _created(obj: dict[str, Any]) -> Any:
    return _age(obj["metadata"].get("creationTimestamp"))


_NAME_COL: Column = (_col("Name", fmt="name", desc=_NAME_DESC), _name)
_AGE_COL: Column = (_col("Age", desc=_AGE_DESC), _created)


def _event_object(obj: dict[str, Any]) -> str:
    involved = obj.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


def _event_last_seen(obj: dict[str, Any]) -> str:
    return _age(obj.get("lastTimestamp") or obj.get("eventTime") or obj["metadata"].get("creationTimestamp"))


# Built-ins print NAME and AGE, except Events (``kubectl get events`` in the scenarios).
_BUILTIN: dict[tuple[str, str], list[Column]] = {
    ("", "events"): [
        (_col("Last Seen"), _event_last_seen),
        (_col("Type"), lambda o: o.get("type", "")),
        (_col("Reason"), lambda o: o.get("reason", "")),
        (_col("Object"), _event_object),
        (_col("Subobject", priority=1), lambda o: (o.get("involvedObject") or {}).get("fieldPath", "")),
        (
            _col("Source", priority=1),
            lambda o: (o.get("source") or {}).get("component", "") or o.get("reportingComponent", ""),
        ),
        (_col("Message"), lambda o: o.get("message", "")),
        (_col("First Seen", priority=1), lambda o: _age(o.get("firstTimestamp"))),
        (_col("Count", "integer", priority=1), lambda o: o.get("count", 1)),
        (_col("Name", priority=1), _name),
    ],
}


def _crd_cell(column: dict[str, Any], obj: dict[str, Any]) -> Any:
    try:
        results = find(obj, column.get("jsonPath", ""))
    except ValueError:
        return None
    if not results:
        return None
    value = results[0]
    kind = column.get("type", "string")
    if kind == "date":
        return _age(value)
    if kind == "string":
        return value if isinstance(value, str) else _to_text(value)
    return value


def _to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _columns(rtype: ResourceType) -> list[Column]:
    if rtype.crd is not None:
        printer = rtype.printer_columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        columns: list[Column] = [_NAME_COL]
        for column in printer:
            definition = _col(
                column["name"],
                column.get("type", "string"),
                column.get("format", ""),
                column.get("description", ""),
                int(column.get("priority", 0)),
            )
            columns.append((definition, functools.partial(_crd_cell, column)))
        return columns
    return _BUILTIN.get((rtype.group, rtype.plural), [_NAME_COL, _AGE_COL])


def _row_object(obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(
    rtype: ResourceType,
    objects: list[dict[str, Any]],
    *,
    resource_version: str | None = None,
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``objects``."""
    columns = _columns(rtype)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [getter(obj) for _, getter in columns]}
        attached = _row_object(obj, include_object)
        if attached is not None:
            row["object"] = attached
        rows.append(row)
    metadata: dict[str, Any] = {}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [definition for definition, _ in columns],
        "rows": rows,
    }
