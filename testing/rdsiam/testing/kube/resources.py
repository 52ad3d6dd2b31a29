"""The catalogue of served resources: built-ins from kmock's bundled discovery data, plus CRDs.

Built-in resources (Secrets, Events, Namespaces, ServiceAccounts, ...) come from
``kmock.ResourcesArray.load_bundled()`` (a discovery dump of a K3s cluster shipped with
kmock). CustomResourceDefinitions add and remove resources at runtime.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kmock

if TYPE_CHECKING:
    from rdsiam.testing.kube.schema import Schema

__all__ = ["Registry", "ResourceType", "StorageKey"]

#: Storage identity of a resource: (group, plural). All versions of one resource share storage.
StorageKey = tuple[str, str]

# Built-in resources whose objects carry metadata.generation (spec-bearing workloads & CRDs).
_GENERATION_RESOURCES = {
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("", "replicationcontrollers"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("networking.k8s.io", "ingresses"),
    ("policy", "poddisruptionbudgets"),
    ("autoscaling", "horizontalpodautoscalers"),
}

# Subresources this emulator implements (others are answered 404/405).
_SUPPORTED_SUBRESOURCES = {"status", "token", "finalize"}


@dataclass
class ResourceType:
    """One served group/version/resource with what discovery and validation need to know."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    verbs: list[str] = field(default_factory=list)
    shortnames: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    subresources: list[str] = field(default_factory=list)
    #: The CRD object that defines this resource (None for built-ins).
    crd: dict[str, Any] | None = None
    #: The structural schema of this version (CRDs only).
    schema: Schema | None = None
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    selectable_fields: list[str] = field(default_factory=list)
    storage_version: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> StorageKey:
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def has_generation(self) -> bool:
        return self.crd is not None or (self.group, self.plural) in _GENERATION_RESOURCES

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def __hash__(self) -> int:
        return hash((self.group, self.version, self.plural))

    def discovery(self) -> list[dict[str, Any]]:
        """Entries of an ``APIResourceList`` for this resource and its subresources."""
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs) if self.crd is not None else sorted(self.verbs),
        }
        if self.shortnames:
            entry["shortNames"] = sorted(self.shortnames)
        if self.categories:
            entry["categories"] = sorted(self.categories)
        if self.storage_version:
            entry["storageVersionHash"] = self.storage_version
        entries = [entry]
        for sub in sorted(self.subresources):
            sub_entry: dict[str, Any] = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": "TokenRequest" if sub == "token" else self.kind,
                "verbs": ["create"] if sub == "token" else ["get", "patch", "update"],
            }
            if sub == "token":
                sub_entry["group"] = "authentication.k8s.io"
                sub_entry["version"] = "v1"
            entries.append(sub_entry)
        return entries


@functools.cache
def _builtins() -> tuple[ResourceType, ...]:
    """Built-in resources from kmock's bundled discovery dump (loaded once per process)."""
    bundled = kmock.ResourcesArray()
    with warnings.catch_warnings():
        # kmock 0.8 reads its bundled file with the deprecated importlib.resources.read_binary().
        warnings.simplefilter("ignore", DeprecationWarning)
        bundled.load_bundled()
    types = []
    for ref in bundled:
        info = bundled[ref]
        if ref.group is None or ref.version is None or ref.plural is None or info.kind is None:
            continue
        types.append(
            ResourceType(
                group=ref.group,
                version=ref.version,
                plural=ref.plural,
                kind=info.kind,
                singular=info.singular or ref.plural,
                namespaced=bool(info.namespaced),
                verbs=sorted(info.verbs),
                shortnames=sorted(info.shortnames),
                categories=sorted(info.categories),
                subresources=sorted(set(info.subresources) & _SUPPORTED_SUBRESOURCES),
            )
        )
    return tuple(types)


class Registry:
    """All served resources, indexed for O(1) lookups by URL and by kind."""

    def __init__(self) -> None:
        self._by_path: dict[tuple[str, str, str], ResourceType] = {}
        self._by_kind: dict[tuple[str, str, str], ResourceType] = {}
        self._group_versions: dict[str, list[str]] = {}
        self.generation = 0  # bumped on each change, for cheap cache invalidation

    @classmethod
    def with_builtins(cls) -> Registry:
        registry = cls()
        for rtype in _builtins():
            registry.add(copy.copy(rtype))
        return registry

    def add(self, rtype: ResourceType) -> None:
        self._by_path[(rtype.group, rtype.version, rtype.plural)] = rtype
        self._by_kind[(rtype.group, rtype.version, rtype.kind)] = rtype
        versions = self._group_versions.setdefault(rtype.group, [])
        if rtype.version not in versions:
            versions.append(rtype.version)
        self.generation += 1

    def remove_group_resource(self, group: str, plural: str) -> None:
        for key, rtype in list(self._by_path.items()):
            if rtype.group == group and rtype.plural == plural:
                del self._by_path[key]
                self._by_kind.pop((rtype.group, rtype.version, rtype.kind), None)
        self._group_versions = {}
        for rtype in self._by_path.values():
            versions = self._group_versions.setdefault(rtype.group, [])
            if rtype.version not in versions:
                versions.append(rtype.version)
        self.generation += 1

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        return self._by_kind.get((group, version, kind))

    def versions(self, group: str) -> list[str]:
        return list(self._group_versions.get(group, []))

    def groups(self) -> list[str]:
        return [g for g in self._group_versions if g]

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [r for r in self._by_path.values() if r.group == group and r.version == version]

    def all_versions_of(self, group: str, plural: str) -> list[ResourceType]:
        return [r for r in self._by_path.values() if r.group == group and r.plural == plural]

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._by_path.values()))
