"""Discovery documents: ``/api``, ``/api/v1``, ``/apis``, ``/apis/G``, ``/apis/G/V``, ``/version``.

Replaces kmock's discovery, which reports the core group version as ``/v1`` (kubectl then
fails to find Secrets) and guesses kinds from plurals. Served unaggregated
(``application/json``): kubectl and client-go fall back to it when they asked for the
aggregated ``apidiscovery.k8s.io/v2`` format.
"""

from __future__ import annotations

import re
from typing import Any

from rdsiam.testing.kube.resources import Registry

__all__ = ["Discovery", "VERSION_INFO", "version_key"]

VERSION_INFO = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-rdsiam-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_key(version: str) -> tuple[int, int, int, str]:
    """Sort key for Kubernetes version priority: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > others."""
    m = _KUBE_VERSION.match(version)
    if not m:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), version)


class Discovery:
    """Builds (and caches per registry change) the discovery documents."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._cache: dict[str, Any] = {}
        self._generation = -1

    def _cached(self, key: str, build: Any) -> Any:
        if self._generation != self.registry.generation:
            self._cache.clear()
            self._generation = self.registry.generation
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def api(self, server_address: str) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }

    def resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        def build() -> dict[str, Any] | None:
            types = sorted(self.registry.in_group_version(group, version), key=lambda r: r.plural)
            if not types:
                return None
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": [entry for rtype in types for entry in rtype.discovery()],
            }

        result: dict[str, Any] | None = self._cached(f"rl:{group}/{version}", build)
        return result

    def group(self, name: str) -> dict[str, Any] | None:
        versions = sorted(self.registry.versions(name), key=version_key)
        if not name or not versions:
            return None
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": name,
            "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in versions],
            "preferredVersion": {"groupVersion": f"{name}/{versions[0]}", "version": versions[0]},
        }

    def groups(self) -> dict[str, Any]:
        def build() -> dict[str, Any]:
            groups = [self.group(name) for name in sorted(self.registry.groups())]
            entries = [{k: v for k, v in g.items() if k not in ("kind", "apiVersion")} for g in groups if g]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": entries}

        result: dict[str, Any] = self._cached("groups", build)
        return result
