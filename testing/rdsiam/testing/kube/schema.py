"""Structural OpenAPI v3 schemas of CRDs: defaulting, pruning, validation (+ CEL rules).

Mirrors what kube-apiserver does to a custom object on create/update, in this order:
drop ``null`` values of non-nullable fields, apply ``default``\\ s, prune fields the schema does
not declare (unless ``x-kubernetes-preserve-unknown-fields``), validate (types, required,
enum, pattern, lengths, bounds, item/property counts, cheap formats, allOf/anyOf/oneOf/not)
and finally evaluate ``x-kubernetes-validations`` (skipped after a type, required, enum or
size error, as the real server does). Messages follow kube-openapi, e.g.
``spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535``.

Validation ratchets like Kubernetes >= 1.30: on update, errors inside a value that did not
change from the stored object are not reported.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import uuid
from datetime import datetime
from typing import Any

from rdsiam.testing.kube.cel import CompiledRule, compile_rules, evaluate_rules
from rdsiam.testing.kube.errors import FieldError, go_number

__all__ = ["MISSING", "Schema"]

MISSING: Any = object()
_BLOCKING = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_ROOT_KEEP = {"apiVersion", "kind", "metadata"}
# Schema errors after which kube-apiserver does not evaluate CEL rules (strategy.go hasBlockingErr).
_BLOCKING_TYPES = {
    "FieldValueNotSupported",
    "FieldValueRequired",
    "FieldValueTooLong",
    "FieldValueTooMany",
    "FieldValueTypeInvalid",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_type(value: Any, expected: str) -> bool:
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "array":
        return isinstance(value, list)
    if expected == "object":
        return isinstance(value, dict)
    return True


def _check_format(fmt: str, value: str) -> bool:
    try:
        if fmt == "date-time":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif fmt == "date":
            datetime.strptime(value, "%Y-%m-%d")
        elif fmt == "byte":
            base64.b64decode(value, validate=True)
        elif fmt in ("uuid", "uuid3", "uuid4", "uuid5"):
            uuid.UUID(value)
        elif fmt == "ipv4":
            ipaddress.IPv4Address(value)
        elif fmt == "ipv6":
            ipaddress.IPv6Address(value)
        elif fmt == "cidr":
            ipaddress.ip_network(value, strict=False)
        elif fmt == "hostname":
            return bool(
                re.fullmatch(
                    r"(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                    r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*",
                    value,
                )
            )
        elif fmt == "email":
            return bool(re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value))
    except (ValueError, TypeError):
        return False
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Schema:
    """One node of a structural schema, compiled once when the CRD is registered."""

    def __init__(self, raw: dict[str, Any], *, root: bool = False) -> None:
        self.raw = raw
        self.root = root
        self.type: str = raw.get("type", "")
        self.nullable = bool(raw.get("nullable"))
        self.int_or_string = bool(raw.get("x-kubernetes-int-or-string"))
        self.preserve_unknown = bool(raw.get("x-kubernetes-preserve-unknown-fields"))
        self.embedded = bool(raw.get("x-kubernetes-embedded-resource"))
        self.properties = {k: Schema(v) for k, v in (raw.get("properties") or {}).items()}
        additional = raw.get("additionalProperties")
        self.additional: Schema | bool | None = Schema(additional) if isinstance(additional, dict) else additional
        self.items = Schema(raw["items"]) if isinstance(raw.get("items"), dict) else None
        self.all_of = [Schema(s) for s in raw.get("allOf") or []]
        self.any_of = [Schema(s) for s in raw.get("anyOf") or []]
        self.one_of = [Schema(s) for s in raw.get("oneOf") or []]
        self.not_ = Schema(raw["not"]) if isinstance(raw.get("not"), dict) else None
        self.pattern = re.compile(raw["pattern"]) if raw.get("pattern") else None
        self.rules: list[CompiledRule] = compile_rules(raw.get("x-kubernetes-validations") or [])
        children: list[Schema] = [*self.properties.values()]
        if self.items is not None:
            children.append(self.items)
        if isinstance(self.additional, Schema):
            children.append(self.additional)
        self.has_rules: bool = bool(self.rules) or any(child.has_rules for child in children)

    # ------------------------------------------------------------------ mutation

    def default_and_prune(self, value: Any, path: str = "") -> tuple[Any, list[str]]:
        """Drop non-nullable nulls, apply defaults, prune unknown fields; return (value, pruned paths)."""
        pruned: list[str] = []
        return self._walk(value, path, pruned), pruned

    def _walk(self, value: Any, path: str, pruned: list[str]) -> Any:
        if isinstance(value, dict) and (
            self.type == "object" or self.properties or self.additional or self.root or self.preserve_unknown
        ):
            result: dict[str, Any] = {}
            for key, item in value.items():
                if self.root and key in _ROOT_KEEP or self.embedded and key in _ROOT_KEEP:
                    result[key] = item
                    continue
                sub = self.properties.get(key)
                if sub is None and isinstance(self.additional, Schema):
                    sub = self.additional
                if sub is None:
                    if self.preserve_unknown or self.additional is True:
                        result[key] = item
                    else:
                        pruned.append(_join(path, key))
                    continue
                if item is None and not sub.nullable:
                    if "default" not in sub.raw:
                        continue
                    item = MISSING
                if item is MISSING:
                    continue
                result[key] = sub._walk(item, _join(path, key), pruned)
            for key, sub in self.properties.items():
                if key not in result and "default" in sub.raw:
                    result[key] = sub._walk(copy.deepcopy(sub.raw["default"]), _join(path, key), pruned)
            return result
        if isinstance(value, list) and self.items is not None:
            return [self.items._walk(item, f"{path}[{i}]", pruned) for i, item in enumerate(value)]
        return value

    # ------------------------------------------------------------------ validation

    def validate(self, value: Any, old: Any = MISSING) -> list[FieldError]:
        """Schema errors, then CEL rule errors (unless a type error blocks them)."""
        errors = self._validate(value, "", old)
        if self.has_rules:
            if any(e.type in _BLOCKING_TYPES for e in errors):
                errors.append(FieldError.invalid("<nil>", None, _BLOCKING))
            else:
                errors.extend(self._rules(value, "", old))
        return errors

    def _validate(self, value: Any, path: str, old: Any) -> list[FieldError]:
        if old is not MISSING and old == value:
            return []  # ratcheting: unchanged values are not re-validated
        name = path or "."
        errors: list[FieldError] = []
        if value is None:
            if not self.nullable and self.type and not self.root:
                errors.append(
                    FieldError.type_invalid(path, "null", f'{name} in body must be of type {self.type}: "null"')
                )
            return errors
        if self.int_or_string:
            if not (isinstance(value, str) or _is_type(value, "integer")):
                actual = _json_type(value)
                errors.append(
                    FieldError.type_invalid(path, actual, f'{name} in body must be of type integer,string: "{actual}"')
                )
                return errors
        elif self.type and not _is_type(value, self.type):
            actual = _json_type(value)
            errors.append(
                FieldError.type_invalid(path, actual, f'{name} in body must be of type {self.type}: "{actual}"')
            )
            return errors

        raw = self.raw
        if "enum" in raw and value not in raw["enum"]:
            allowed = [v if isinstance(v, str) else json.dumps(v) for v in raw["enum"]]
            errors.append(FieldError.not_supported(path, value, allowed))
        if isinstance(value, str):
            errors.extend(self._validate_string(value, path, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            errors.extend(self._validate_number(value, path, name))
        elif isinstance(value, list):
            errors.extend(self._validate_list(value, path, name, old))
        elif isinstance(value, dict):
            errors.extend(self._validate_object(value, path, name, old))
        errors.extend(self._validate_combinators(value, path, name))
        return errors

    def _validate_string(self, value: str, path: str, name: str) -> list[FieldError]:
        raw, errors = self.raw, []
        if "maxLength" in raw and len(value) > raw["maxLength"]:
            errors.append(FieldError.too_long(path, value, raw["maxLength"]))
        if "minLength" in raw and len(value) < raw["minLength"]:
            errors.append(
                FieldError.invalid(path, value, f"{name} in body should be at least {raw['minLength']} chars long")
            )
        if self.pattern is not None and not self.pattern.search(value):
            errors.append(FieldError.invalid(path, value, f"{name} in body should match '{raw['pattern']}'"))
        fmt = raw.get("format")
        if fmt and not _check_format(fmt, value):
            errors.append(
                FieldError.type_invalid(path, value, f"{name} in body must be of type {fmt}: {json.dumps(value)}")
            )
        return errors

    def _validate_number(self, value: float, path: str, name: str) -> list[FieldError]:
        raw, errors = self.raw, []
        if "maximum" in raw:
            limit = raw["maximum"]
            if raw.get("exclusiveMaximum") and value >= limit:
                errors.append(FieldError.invalid(path, value, f"{name} in body should be less than {go_number(limit)}"))
            elif value > limit:
                errors.append(
                    FieldError.invalid(
                        path, value, f"{name} in body should be less than or equal to {go_number(limit)}"
                    )
                )
        if "minimum" in raw:
            limit = raw["minimum"]
            if raw.get("exclusiveMinimum") and value <= limit:
                errors.append(
                    FieldError.invalid(path, value, f"{name} in body should be greater than {go_number(limit)}")
                )
            elif value < limit:
                errors.append(
                    FieldError.invalid(
                        path, value, f"{name} in body should be greater than or equal to {go_number(limit)}"
                    )
                )
        if raw.get("multipleOf") and (value / raw["multipleOf"]) % 1:
            errors.append(
                FieldError.invalid(
                    path, value, f"{name} in body should be a multiple of {go_number(raw['multipleOf'])}"
                )
            )
        return errors

    def _validate_list(self, value: list[Any], path: str, name: str, old: Any) -> list[FieldError]:
        raw, errors = self.raw, []
        if "maxItems" in raw and len(value) > raw["maxItems"]:
            errors.append(FieldError.too_many(path, len(value), raw["maxItems"]))
        if "minItems" in raw and len(value) < raw["minItems"]:
            errors.append(
                FieldError.invalid(path, len(value), f"{name} in body should have at least {raw['minItems']} items")
            )
        if raw.get("uniqueItems") or raw.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            for i, item in enumerate(value):
                if item in seen:
                    errors.append(FieldError.duplicate(f"{path}[{i}]", item))
                seen.append(item)
        if self.items is not None:
            olds = old if isinstance(old, list) else []
            for i, item in enumerate(value):
                errors.extend(self.items._validate(item, f"{path}[{i}]", olds[i] if i < len(olds) else MISSING))
        return errors

    def _validate_object(self, value: dict[str, Any], path: str, name: str, old: Any) -> list[FieldError]:
        raw, errors = self.raw, []
        olds = old if isinstance(old, dict) else {}
        for key in raw.get("required") or []:
            if key not in value:
                errors.append(FieldError.required(_join(path, key)))
        if "maxProperties" in raw and len(value) > raw["maxProperties"]:
            errors.append(FieldError.too_many(path, len(value), raw["maxProperties"]))
        if "minProperties" in raw and len(value) < raw["minProperties"]:
            errors.append(
                FieldError.invalid(
                    path, len(value), f"{name} in body should have at least {raw['minProperties']} properties"
                )
            )
        for key, item in sorted(value.items()):  # Go iterates a map: any order is real; sorted here
            if self.root and key in _ROOT_KEEP:
                continue
            sub = self.properties.get(key)
            if sub is None and isinstance(self.additional, Schema):
                sub = self.additional
            if sub is not None:
                errors.extend(sub._validate(item, _join(path, key), olds.get(key, MISSING)))
        return errors

    def _validate_combinators(self, value: Any, path: str, name: str) -> list[FieldError]:
        errors: list[FieldError] = []
        for sub in self.all_of:
            errors.extend(sub._validate(value, path, MISSING))
        if self.any_of and all(sub._validate(value, path, MISSING) for sub in self.any_of):
            errors.append(FieldError.invalid(path, value, f"{name} in body must validate at least one schema (anyOf)"))
        if self.one_of:
            passing = sum(1 for sub in self.one_of if not sub._validate(value, path, MISSING))
            if passing != 1:
                errors.append(
                    FieldError.invalid(path, value, f"{name} in body must validate one and only one schema (oneOf)")
                )
        if self.not_ is not None and not self.not_._validate(value, path, MISSING):
            errors.append(FieldError.invalid(path, value, f"{name} in body must not validate the schema (not)"))
        return errors

    # ------------------------------------------------------------------ CEL

    def _rules(self, value: Any, path: str, old: Any) -> list[FieldError]:
        if value is None or not self.has_rules:
            return []
        if old is not MISSING and old == value:
            return []  # ratcheting
        errors: list[FieldError] = []
        if self.rules:
            node_type = self.type or ("object" if isinstance(value, dict) else _json_type(value))
            errors.extend(evaluate_rules(self.rules, value, old, path, node_type, old is not MISSING))
        if isinstance(value, dict):
            olds = old if isinstance(old, dict) else {}
            for key, item in value.items():
                sub = self.properties.get(key)
                if sub is None and isinstance(self.additional, Schema):
                    sub = self.additional
                if sub is not None and sub.has_rules:
                    errors.extend(sub._rules(item, _join(path, key), olds.get(key, MISSING)))
        elif isinstance(value, list) and self.items is not None and self.items.has_rules:
            for i, item in enumerate(value):
                # List items correlate with old items only for map/set lists; by index here.
                errors.extend(self.items._rules(item, f"{path}[{i}]", MISSING))
        return errors
