"""Parsing of Kubernetes API URL paths.

Replaces ``kmock``'s ``parse_path``, which crashes on ``/api/v1/namespaces`` and reads
``/api/v1/namespaces/NAME`` as a namespace without a resource.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ResourcePath", "parse_resource_path", "resource_url"]


@dataclass(frozen=True)
class ResourcePath:
    """A request path addressing a resource collection, an object, or a subresource."""

    group: str
    version: str
    plural: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_resource_path(path: str) -> ResourcePath | None:
    """Parse ``/api/v1/...`` or ``/apis/GROUP/VERSION/...``; ``None`` for non-resource paths.

    Handles the namespace special cases: ``/api/v1/namespaces`` (the collection),
    ``/api/v1/namespaces/NAME`` (an object), ``/api/v1/namespaces/NAME/status|finalize``
    (its subresources) versus ``/api/v1/namespaces/NS/PLURAL[/NAME[/SUB]]``.
    """
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None

    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if len(rest) > 3:
        return None
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    return ResourcePath(group, version, plural, namespace, name, subresource)


def resource_url(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """Build the path of a collection, an object or a subresource."""
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
    return base
