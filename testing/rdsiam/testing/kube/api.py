"""The API semantics: create/get/list/replace/patch/delete with the real server's rules.

Every method runs synchronously on the emulator's loop thread, so each call is atomic.
Controller-like follow-ups (garbage collection, namespace cleanup, CRD establishment side
effects) are handed to ``defer`` and run right after the request, like the real
controllers do a moment later.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rdsiam.testing.kube import errors as err
from rdsiam.testing.kube.crds import crd_defaults, crd_established_status, crd_resource_types
from rdsiam.testing.kube.errors import ApiError, FieldError
from rdsiam.testing.kube.meta import (
    generate_name,
    new_uid,
    normalize_builtin,
    now_rfc3339,
    spec_changed,
    validate_metadata,
    validate_name,
)
from rdsiam.testing.kube.patching import json_copy, json_patch, merge_patch, strategic_merge_patch
from rdsiam.testing.kube.resources import Registry, ResourceType
from rdsiam.testing.kube.schema import MISSING
from rdsiam.testing.kube.selectors import Selector
from rdsiam.testing.kube.store import Store

__all__ = ["Api", "WriteResult"]

_SERVER_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
_DROP_ON_CREATE = (*_SERVER_META, "resourceVersion", "selfLink", "managedFields")
_CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")
_NAMESPACES = ("", "namespaces")
_TERMINATING = "unable to create new content in namespace {} because it is being terminated"

PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
}


class WriteResult:
    """What a write produced: the object to answer with and whether it was created."""

    __slots__ = ("created", "obj")

    def __init__(self, obj: dict[str, Any], created: bool = False) -> None:
        self.obj = obj
        self.created = created


def render(obj: dict[str, Any], rtype: ResourceType) -> dict[str, Any]:
    """The object as seen through ``rtype``'s version (CRD versions share storage, no conversion)."""
    if obj.get("apiVersion") == rtype.api_version:
        return obj
    return {**obj, "apiVersion": rtype.api_version}


class Api:
    """Resource operations over a :class:`Store` and a :class:`Registry`."""

    def __init__(
        self, registry: Registry, store: Store, defer: Callable[[Callable[[], None]], Any] | None = None
    ) -> None:
        self.registry = registry
        self.store = store
        self.defer: Callable[[Callable[[], None]], Any] = defer or (lambda fn: fn())

    # ------------------------------------------------------------------ lookups

    def resolve(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.registry.get(group, version, plural)
        if rtype is None:
            raise err.generic(404)
        return rtype

    def _scope_check(self, rtype: ResourceType, namespace: str | None) -> str | None:
        if rtype.namespaced and not namespace:
            raise err.generic(404)
        if not rtype.namespaced and namespace:
            raise err.generic(404)
        return namespace if rtype.namespaced else None

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        namespace = self._scope_check(rtype, namespace)
        obj = self.store.get(rtype.storage_key, namespace, name)
        if obj is None:
            raise err.not_found(rtype.group, rtype.plural, name)
        return render(obj, rtype)

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.store.get(rtype.storage_key, namespace if rtype.namespaced else None, name)
        return None if obj is None else render(obj, rtype)

    def list_objects(self, rtype: ResourceType, selector: Selector) -> list[dict[str, Any]]:
        """Matching objects sorted by (namespace, name), as etcd returns them."""
        table = self.store.tables.get(rtype.storage_key)
        if table is None:
            return []
        if selector.fields is not None and selector.namespace is None:
            wanted = selector.fields.equals("metadata.namespace")
            if wanted is not None:
                selector = Selector(wanted, selector.labels, selector.fields)
        if selector.fields is not None:
            name = selector.fields.equals("metadata.name")
            if name is not None:
                if selector.namespace is not None or not rtype.namespaced:  # O(1): kubectl wait, kopf
                    found = table.objects.get((selector.namespace or "", name))
                    candidates = [found] if found is not None else []
                else:
                    candidates = [o for (_, n), o in table.objects.items() if n == name]
                return [render(o, rtype) for o in sorted(candidates, key=_sort_key) if selector.matches(o)]
        scope = table.scope(selector.namespace)
        items = list(scope) if selector.trivial else [o for o in scope if selector.matches(o)]
        items.sort(key=_sort_key)
        return [render(o, rtype) for o in items]

    # ------------------------------------------------------------------ create

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Any,
    ) -> WriteResult:
        namespace = self._scope_check(rtype, namespace)
        if not isinstance(body, dict):
            raise err.bad_request(
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml"
            )
        obj = json_copy(body)
        self._check_kind(rtype, obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise err.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        for key in _DROP_ON_CREATE:
            meta.pop(key, None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise err.invalid(
                    rtype.group,
                    rtype.kind,
                    "",
                    [FieldError.required("metadata.name", "name or generateName is required")],
                )
            meta["name"] = self._unique_name(rtype, namespace, meta["generateName"])
        name = meta["name"]
        if rtype.namespaced:  # admission (NamespaceLifecycle) comes before validation
            self._check_namespace(rtype, namespace or "", name)
        name_errors = validate_name(name, label=(rtype.group, rtype.plural) == _NAMESPACES)

        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now_rfc3339()
        if rtype.has_generation:
            meta["generation"] = 1
        if rtype.has_status and (rtype.group, rtype.plural) != _NAMESPACES:
            obj.pop("status", None)
        self._prepare(rtype, obj, None, name_errors)
        if self.store.get(rtype.storage_key, namespace, name) is not None:  # storage comes last
            raise err.already_exists(rtype.group, rtype.plural, name)
        stored = self.store.write(rtype.storage_key, obj, None)
        self._after_write(rtype, stored, None)
        return WriteResult(render(stored, rtype), True)

    def _unique_name(self, rtype: ResourceType, namespace: str | None, prefix: str) -> str:
        for _ in range(16):
            name = generate_name(prefix)
            if self.store.get(rtype.storage_key, namespace, name) is None:
                return name
        raise ApiError(
            409,
            "AlreadyExists",
            f'{rtype.plural} "{prefix}" already exists, the server was not able to generate a unique '
            "name for the object",
            {"name": prefix, "kind": rtype.plural, "group": rtype.group},
        )

    @staticmethod
    def _check_kind(rtype: ResourceType, obj: dict[str, Any]) -> None:
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        if kind and kind != rtype.kind:
            raise err.bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})")
        if api_version and api_version != rtype.api_version:
            raise err.bad_request(
                f"the API version in the data ({api_version}) does not match the expected "
                f"API version ({rtype.api_version})"
            )
        rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        obj.clear()
        obj.update(apiVersion=rtype.api_version, kind=rtype.kind, **rest)

    def _check_namespace(self, rtype: ResourceType, namespace: str, name: str) -> None:
        ns_obj = self.store.get(_NAMESPACES, None, namespace)
        if ns_obj is None:
            raise err.not_found("", "namespaces", namespace)
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise err.forbidden(rtype.group, rtype.plural, name, _TERMINATING.format(namespace))

    def _prepare(
        self,
        rtype: ResourceType,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        name_errors: list[FieldError] | None = None,
    ) -> None:
        """Normalise, default, prune (silently: no ``fieldValidation``) and validate ``obj`` in place."""
        errors = normalize_builtin(rtype.group, rtype.plural, obj, old)
        errors.extend(validate_metadata(obj["metadata"]))
        errors.extend(name_errors or [])
        if rtype.schema is not None:
            pruned_obj, _ = rtype.schema.default_and_prune(obj)
            obj.clear()
            obj.update(pruned_obj)
            errors.extend(rtype.schema.validate(obj, MISSING if old is None else old))
        if rtype.storage_key == _CRDS:
            crd_defaults(obj)  # CRDs themselves are not validated
        if errors:
            raise err.invalid(rtype.group, rtype.kind, obj["metadata"].get("name", ""), errors)

    # ------------------------------------------------------------------ update

    def replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> WriteResult:
        namespace = self._scope_check(rtype, namespace)
        old = self._existing(rtype, namespace, name)
        if not isinstance(body, dict):
            raise err.bad_request("the body of the request was in an unknown format")
        new = json_copy(body)
        self._check_kind(rtype, new)
        meta = new.setdefault("metadata", {})
        rv = meta.get("resourceVersion")
        if rv is None or rv == "":
            if rtype.crd is not None:
                # Worded with the resource, not the kind, exactly like the real server.
                raise err.invalid(
                    rtype.group,
                    rtype.plural,
                    name,
                    [FieldError.invalid("metadata.resourceVersion", 0, "must be specified for an update")],
                )
        elif rv != old["metadata"]["resourceVersion"]:
            raise err.conflict(rtype.group, rtype.plural, name, err.STALE)
        return self._update(rtype, old, new, subresource)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        patch: Any,
        patch_type: str,
        *,
        subresource: str | None = None,
    ) -> WriteResult:
        namespace = self._scope_check(rtype, namespace)
        old = self._existing(rtype, namespace, name)
        current = render(old, rtype)
        if patch_type == "json":
            new = json_patch(current, patch)
        elif not isinstance(patch, dict):
            raise err.bad_request("json: cannot unmarshal array into Go value of type map[string]interface {}")
        elif patch_type == "strategic":
            if rtype.crd is not None:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - "
                    "accepted media types include: application/json-patch+json, "
                    "application/merge-patch+json, application/apply-patch+yaml",
                    None,
                )
            new = strategic_merge_patch(current, patch)
        else:
            new = merge_patch(current, patch)
        if not isinstance(new, dict):
            raise err.bad_request("the patched object is not a JSON object")
        new_rv = (new.get("metadata") or {}).get("resourceVersion")
        if new_rv is not None and new_rv != old["metadata"]["resourceVersion"]:
            raise err.conflict(rtype.group, rtype.plural, name, err.STALE)
        return self._update(rtype, old, new, subresource)

    def _existing(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        old = self.store.get(rtype.storage_key, namespace, name)
        if old is None:
            raise err.not_found(rtype.group, rtype.plural, name)
        return old

    def _update(
        self,
        rtype: ResourceType,
        old: dict[str, Any],
        new: dict[str, Any],
        subresource: str | None,
    ) -> WriteResult:
        name = old["metadata"]["name"]
        if subresource not in (None, "status"):
            raise err.generic(404)
        if subresource == "status" and not rtype.has_status:
            raise err.generic(404)
        new["apiVersion"], new["kind"] = rtype.api_version, rtype.kind
        if subresource == "status":
            merged = json_copy(old)
            merged["apiVersion"] = rtype.api_version
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        else:
            meta = new.get("metadata")
            if not isinstance(meta, dict):
                meta = new["metadata"] = {}
            if meta.get("name", name) != name:
                raise err.bad_request(
                    f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
                )
            old_meta = old["metadata"]
            if meta.get("uid") and meta["uid"] != old_meta.get("uid"):
                raise err.conflict(
                    rtype.group,
                    rtype.plural,
                    name,
                    f"Precondition failed: UID in precondition: "
                    f"{meta['uid']}, UID in object meta: {old_meta.get('uid')}",
                )
            if rtype.namespaced and meta.get("namespace", old_meta.get("namespace")) != old_meta.get("namespace"):
                raise err.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["name"] = name
            if rtype.namespaced:
                meta["namespace"] = old_meta["namespace"]
            for key in _SERVER_META:
                if key in old_meta:
                    meta[key] = old_meta[key]
                else:
                    meta.pop(key, None)
            meta.pop("managedFields", None)
            meta.pop("selfLink", None)
            if rtype.has_status:
                if "status" in old:
                    new["status"] = json_copy(old["status"])
                else:
                    new.pop("status", None)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]

        self._prepare(rtype, new, old)
        if old["metadata"].get("deletionTimestamp"):
            added = [
                f for f in new["metadata"].get("finalizers") or [] if f not in (old["metadata"].get("finalizers") or [])
            ]
            if added:
                raise err.invalid(
                    rtype.group,
                    rtype.kind,
                    name,
                    [
                        FieldError.forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted, found "
                            "new finalizers []string{" + ", ".join(f'"{f}"' for f in added) + "}",
                        )
                    ],
                )
        if rtype.has_generation and spec_changed(old, new, ignore_status=rtype.has_status):
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 0) + 1
        if new == {**old, "apiVersion": rtype.api_version}:
            return WriteResult(render(old, rtype))
        if not new["metadata"].get("finalizers"):
            new["metadata"].pop("finalizers", None)
        stored = self.store.write(rtype.storage_key, new, old)
        if (
            stored["metadata"].get("deletionTimestamp")
            and not stored["metadata"].get("finalizers")
            and (rtype.group, rtype.plural) != _NAMESPACES
        ):
            return WriteResult(render(self._remove(rtype, stored), rtype))
        self._after_write(rtype, stored, old)
        return WriteResult(render(stored, rtype))

    # ------------------------------------------------------------------ delete

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Delete or mark for deletion; returns (object, removed_for_good)."""
        namespace = self._scope_check(rtype, namespace)
        old = self._existing(rtype, namespace, name)
        options = options or {}
        pre = options.get("preconditions") or {}
        meta = old["metadata"]
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise err.conflict(
                rtype.group,
                rtype.plural,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta.get('uid')}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise err.conflict(
                rtype.group,
                rtype.plural,
                name,
                f"Precondition failed: ResourceVersion in "
                f"precondition: {pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta.get('resourceVersion')}",
            )
        policy = options.get("propagationPolicy") or ""
        finalizers = list(meta.get("finalizers") or [])
        if (
            policy == "Foreground"
            and "foregroundDeletion" not in finalizers
            and self.store.dependents.get(meta.get("uid", ""))
        ):
            finalizers.append("foregroundDeletion")
        is_namespace = (rtype.group, rtype.plural) == _NAMESPACES
        if finalizers or is_namespace:
            if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
                return render(old, rtype), False
            new = json_copy(old)
            new["metadata"].setdefault("deletionTimestamp", now_rfc3339())
            new["metadata"].setdefault("deletionGracePeriodSeconds", 0)
            if finalizers:
                new["metadata"]["finalizers"] = finalizers
            if is_namespace:
                new.setdefault("status", {})["phase"] = "Terminating"
            stored = self.store.write(rtype.storage_key, new, old)
            if is_namespace:
                self.defer(lambda: self._clean_namespace(name))
            if "foregroundDeletion" in finalizers:
                self.defer(lambda: self._foreground(rtype, stored))
            return render(stored, rtype), False
        return render(self._remove(rtype, old), rtype), True

    def _remove(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        gone = self.store.remove(rtype.storage_key, obj)
        meta = obj["metadata"]
        uid = meta.get("uid", "")
        if uid and self.store.dependents.get(uid):
            self.defer(lambda: self._collect_dependents(uid))
        for ref in meta.get("ownerReferences") or []:
            owner = self.store.get_by_uid(ref.get("uid", ""))
            if owner is not None and "foregroundDeletion" in (owner["metadata"].get("finalizers") or []):
                self.defer(functools.partial(self._foreground_done, ref))
        namespace = meta.get("namespace")
        if namespace:
            ns_obj = self.store.get(_NAMESPACES, None, namespace)
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                self.defer(lambda: self._finish_namespace(namespace))
        if rtype.storage_key == _CRDS:
            self._unregister_crd(obj)
        return gone

    # ------------------------------------------------------------------ controllers

    def _after_write(self, rtype: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if rtype.storage_key == _CRDS and not obj["metadata"].get("deletionTimestamp"):
            self._register_crd(obj)
        if (rtype.group, rtype.plural) == _NAMESPACES:
            namespace = obj["metadata"]["name"]
            if old is None:
                self.defer(lambda: self._default_service_account(namespace))
            elif obj["metadata"].get("deletionTimestamp"):
                self.defer(lambda: self._finish_namespace(namespace))
        refs = obj["metadata"].get("ownerReferences") or []
        if refs and not any(self.store.get_by_uid(r.get("uid", "")) for r in refs):
            uid = obj["metadata"]["uid"]
            self.defer(lambda: self._collect(uid))

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        self.registry.remove_group_resource(spec["group"], spec["names"]["plural"])
        for rtype in crd_resource_types(crd):
            self.registry.add(rtype)
        status = crd_established_status(crd)
        if crd.get("status") != status:
            new = json_copy(crd)
            new["status"] = status
            self.store.write(_CRDS, new, crd)

    def _unregister_crd(self, crd: dict[str, Any]) -> None:
        """A deleted CRD goes at once, with its objects (no cleanup finalizer: their finalizers are ignored)."""
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        self.registry.remove_group_resource(group, plural)
        table = self.store.tables.get((group, plural))
        if table is not None:
            for obj in list(table.objects.values()):
                self.store.remove((group, plural), obj)

    def _default_service_account(self, namespace: str) -> None:
        sa_type = self.registry.get("", "v1", "serviceaccounts")
        if sa_type is None or self.store.get(sa_type.storage_key, namespace, "default") is not None:
            return
        try:
            self.create(sa_type, namespace, {"metadata": {"name": "default"}})
        except ApiError:
            pass  # the namespace went away meanwhile

    def _collect(self, uid: str) -> None:
        """GC one object: delete it if none of its owners exists any more."""
        where = self.store.by_uid.get(uid)
        if where is None:
            return
        obj = self.store.tables[where[0]].objects.get(where[1])
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs or any(self.store.get_by_uid(r.get("uid", "")) is not None for r in refs):
            return
        rtype = self._type_of(where[0])
        if rtype is not None:
            self.delete(
                rtype,
                obj["metadata"].get("namespace"),
                obj["metadata"]["name"],
                {"propagationPolicy": "Background"},
            )

    def _collect_dependents(self, owner_uid: str) -> None:
        for uid in list(self.store.dependents.get(owner_uid, ())):
            self._collect(uid)

    def _foreground(self, rtype: ResourceType, owner: dict[str, Any]) -> None:
        uid = owner["metadata"]["uid"]
        deps = list(self.store.dependents.get(uid, ()))
        if not deps:
            self._drop_finalizer(
                rtype, owner["metadata"].get("namespace"), owner["metadata"]["name"], "foregroundDeletion"
            )
            return
        for dep_uid in deps:
            where = self.store.by_uid.get(dep_uid)
            dep_type = self._type_of(where[0]) if where else None
            if where is None or dep_type is None:
                continue
            dep = self.store.tables[where[0]].objects[where[1]]
            self.delete(
                dep_type,
                dep["metadata"].get("namespace"),
                dep["metadata"]["name"],
                {"propagationPolicy": "Background"},
            )

    def _foreground_done(self, ref: dict[str, Any]) -> None:
        owner = self.store.get_by_uid(ref.get("uid", ""))
        if owner is None or self.store.dependents.get(ref.get("uid", "")):
            return
        where = self.store.by_uid[ref["uid"]]
        rtype = self._type_of(where[0])
        if rtype is not None:
            self._drop_finalizer(
                rtype, owner["metadata"].get("namespace"), owner["metadata"]["name"], "foregroundDeletion"
            )

    def _drop_finalizer(self, rtype: ResourceType, namespace: str | None, name: str, finalizer: str) -> None:
        current = self.store.get(rtype.storage_key, namespace, name)
        if current is None or finalizer not in (current["metadata"].get("finalizers") or []):
            return
        new = json_copy(current)
        new["metadata"]["finalizers"] = [f for f in new["metadata"]["finalizers"] if f != finalizer]
        self._update(rtype, current, new, None)

    def _clean_namespace(self, namespace: str) -> None:
        for key, table in list(self.store.tables.items()):
            rtype = self._type_of(key)
            if rtype is None or not rtype.namespaced:
                continue
            for obj in list(table.by_ns.get(namespace, {}).values()):
                if not obj["metadata"].get("deletionTimestamp"):
                    self.delete(rtype, namespace, obj["metadata"]["name"], {"propagationPolicy": "Background"})
        self._finish_namespace(namespace)

    def _finish_namespace(self, namespace: str) -> None:
        ns_obj = self.store.get(_NAMESPACES, None, namespace)
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
            return
        if any(table.by_ns.get(namespace) for table in self.store.tables.values()):
            return
        if ns_obj["metadata"].get("finalizers"):
            return
        ns_type = self.registry.get("", "v1", "namespaces")
        if ns_type is not None:
            self._remove(ns_type, ns_obj)

    def _type_of(self, key: tuple[str, str]) -> ResourceType | None:
        versions = self.registry.all_versions_of(*key)
        return versions[0] if versions else None


def _sort_key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])
