"""Object metadata rules: names, generateName, server-set fields, built-in type normalisation."""

from __future__ import annotations

import base64
import binascii
import datetime
import re
import secrets
import uuid
from typing import Any

from rdsiam.testing.kube.errors import FieldError, bad_request

__all__ = [
    "generate_name",
    "validate_metadata",
    "now_rfc3339",
    "normalize_builtin",
    "spec_changed",
    "validate_name",
]

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation "
    "is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
# The alphabet of k8s.io/apimachinery/pkg/util/rand.String (no vowels, no confusable digits).
_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(prefix: str) -> str:
    """``generateName`` + 5 random characters, as the real NameGenerator does."""
    return prefix[: 63 - 5] + "".join(secrets.choice(_ALPHANUMS) for _ in range(5))


def validate_name(name: str, *, label: bool = False) -> list[FieldError]:
    if label:
        if len(name) > 63:
            return [FieldError.invalid("metadata.name", name, "must be no more than 63 characters")]
        if not _DNS1123_LABEL.match(name):
            return [FieldError.invalid("metadata.name", name, _LABEL_MSG)]
        return []
    if len(name) > 253:
        return [FieldError.invalid("metadata.name", name, "must be no more than 253 characters")]
    if not _DNS1123_SUBDOMAIN.match(name):
        return [FieldError.invalid("metadata.name", name, _SUBDOMAIN_MSG)]
    return []


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_NAME_PART_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_PREFIX_MSG = (
    "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_ANNOTATIONS_LIMIT = 256 * 1024
_OWNER_FIELDS = (
    ("apiVersion", "version must not be empty"),
    ("kind", "must not be empty"),
    ("name", "must not be empty"),
    ("uid", "must not be empty"),
)


def _qualified_name_errors(path: str, key: str) -> list[FieldError]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if not name:
        errors.append(FieldError.invalid(path, key, "name part must be non-empty"))
    elif len(name) > 63:
        errors.append(FieldError.invalid(path, key, "name part must be no more than 63 bytes"))
    elif not _QUALIFIED_NAME.match(name):
        errors.append(FieldError.invalid(path, key, _NAME_PART_MSG))
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        errors.append(FieldError.invalid(path, key, _PREFIX_MSG))
    return errors


def validate_metadata(meta: dict[str, Any]) -> list[FieldError]:
    """Label, annotation and ownerReference rules of ``ValidateObjectMeta``."""
    errors: list[FieldError] = []
    for key, value in (meta.get("labels") or {}).items():
        errors.extend(_qualified_name_errors("metadata.labels", key))
        if not isinstance(value, str):
            continue
        if len(value) > 63:
            errors.append(FieldError.invalid("metadata.labels", value, "must be no more than 63 bytes"))
        elif not _LABEL_VALUE.match(value):
            errors.append(FieldError.invalid("metadata.labels", value, _VALUE_MSG))
    annotations = meta.get("annotations") or {}
    for key in annotations:
        errors.extend(_qualified_name_errors("metadata.annotations", key.lower()))
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > _ANNOTATIONS_LIMIT:
        errors.append(
            FieldError("FieldValueTooLong", "metadata.annotations", "", f"must have at most {_ANNOTATIONS_LIMIT} bytes")
        )
    controllers = 0
    for ref in meta.get("ownerReferences") or []:
        for field, detail in _OWNER_FIELDS:
            if not ref.get(field):
                errors.append(FieldError.invalid(f"metadata.ownerReferences.{field}", "", detail))
        controllers += 1 if ref.get("controller") else 0
    if controllers > 1:
        errors.append(
            FieldError.invalid(
                "metadata.ownerReferences",
                meta.get("ownerReferences"),
                'Only one reference can have Controller set to true. Found "true" in '
                "references for "
                + " and ".join(
                    f"{r.get('kind')}/{r.get('name')}" for r in meta["ownerReferences"] if r.get("controller")
                ),
            )
        )
    return errors


def new_uid() -> str:
    return str(uuid.uuid4())


def spec_changed(old: dict[str, Any], new: dict[str, Any], *, ignore_status: bool) -> bool:
    """Whether anything but metadata (and status, with a status subresource) differs."""
    skip = {"metadata", "status"} if ignore_status else {"metadata"}
    keys = (set(old) | set(new)) - skip
    return any(old.get(k) != new.get(k) for k in keys)


def normalize_builtin(group: str, plural: str, obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    """What built-in types' registries do on write: Secret ``stringData``/``type`` handling and checks."""
    errors: list[FieldError] = []
    if group == "" and plural == "secrets":
        data = obj.get("data") or {}
        for key, value in data.items():
            if not isinstance(value, str):
                raise bad_request(
                    f'Secret in version "v1" cannot be handled as a Secret: '
                    f"json: cannot unmarshal {type(value).__name__} into Go struct field "
                    f"Secret.data of type []uint8"
                )
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise bad_request(
                    'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                    f"at input byte 0 (key {key!r})"
                ) from None
        string_data = obj.pop("stringData", None) or {}
        if string_data:
            data = dict(data)
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if data or "data" in obj:
            obj["data"] = data
        obj.setdefault("type", "Opaque")
        if old is not None:
            if old.get("type") != obj.get("type"):
                errors.append(FieldError.invalid("type", obj.get("type"), "field is immutable"))
            if old.get("immutable") and (old.get("data") != obj.get("data") or not obj.get("immutable")):
                errors.append(FieldError.forbidden("data", "field is immutable when `immutable` is set"))
    elif group == "" and plural == "namespaces":
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        status = obj.setdefault("status", {})
        if old is None or "phase" not in status:
            status["phase"] = "Active"
    elif group == "" and plural == "configmaps":
        for key, value in (obj.get("data") or {}).items():
            if not isinstance(value, str):
                raise bad_request(
                    'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot '
                    f"unmarshal {type(value).__name__} into Go struct field ConfigMap.data of "
                    f"type string (key {key!r})"
                )
    return errors
