"""Label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!``exists) and field selectors."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rdsiam.testing.kube.errors import bad_request

__all__ = ["FieldSelector", "LabelSelector", "Selector", "field_getter"]

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
# Field labels whose value lives elsewhere in the object (Event's "source" is source.component).
_ALIASES = {"source": "source.component"}
_SET_RE = re.compile(rf"^\s*(!)?\s*({_KEY})\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the label too (as the real server does).
        return not present or labels[self.key] not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``(...)``."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


class LabelSelector:
    """A parsed ``labelSelector`` query parameter."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.requirements: list[_Requirement] = []
        for part in _split_top_level(text):
            if m := _EQ_RE.match(part):
                op = "!=" if m.group(2) == "!=" else "="
                self.requirements.append(_Requirement(m.group(1), op, frozenset([m.group(3)])))
            elif m := _SET_RE.match(part):
                negated, key, op, values = m.groups()
                if op:
                    if negated:
                        raise bad_request(f"unable to parse requirement: {part}")
                    items = frozenset(v.strip() for v in values.split(",") if v.strip())
                    self.requirements.append(_Requirement(key, op, items))
                else:
                    self.requirements.append(_Requirement(key, "!exists" if negated else "exists"))
            else:
                raise bad_request(f"unable to parse requirement: found '{part}', expected: selector")

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def from_match(cls, selector: Mapping[str, Any]) -> LabelSelector:
        """Build from a ``metav1.LabelSelector`` (``matchLabels`` + ``matchExpressions``)."""
        parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
        for expr in selector.get("matchExpressions") or []:
            op = expr["operator"]
            if op == "Exists":
                parts.append(expr["key"])
            elif op == "DoesNotExist":
                parts.append(f"!{expr['key']}")
            else:
                parts.append(f"{expr['key']} {op.lower()} ({','.join(expr.get('values') or [])})")
        return cls(",".join(parts))


def field_getter(path: str) -> Callable[[Mapping[str, Any]], str | None]:
    """A getter for a dotted field path; values are compared as strings like the real server."""
    keys = path.split(".")

    def get(obj: Mapping[str, Any]) -> str | None:
        value: Any = obj
        for key in keys:
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return get


class FieldSelector:
    """A parsed ``fieldSelector``: ``a=b``, ``a==b``, ``a!=b``, comma-separated.

    ``supported`` is the set of field paths the resource allows; anything else is
    answered ``400`` worded as the real server does for that kind of resource.
    """

    def __init__(self, text: str, supported: set[str], *, meta_only_wording: bool = False) -> None:
        self.text = text
        self.terms: list[tuple[str, bool, str, Callable[[Mapping[str, Any]], str | None]]] = []
        for part in _split_escaped(text):
            m = re.match(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
            if not m:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            key, op, value = m.group(1), m.group(2), _unescape(m.group(3))
            if key not in supported:
                if meta_only_wording:  # runtime.DefaultMetaV1FieldSelectorConversion's wording
                    raise bad_request(
                        f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                    )
                raise bad_request(f"field label not supported: {key}")
            self.terms.append((key, op == "!=", value, field_getter(_ALIASES.get(key, key))))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for _key, negate, value, get in self.terms:
            actual = get(obj)
            equal = (actual or "") == value
            if equal == negate:
                return False
        return True

    def equals(self, key: str) -> str | None:
        """The value required by an ``key=value`` term (for index lookups), else None."""
        for term_key, negate, value, _get in self.terms:
            if term_key == key and not negate:
                return value
        return None


def _split_escaped(text: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


class Selector:
    """Namespace + label selector + field selector, as one predicate over objects."""

    def __init__(
        self,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> None:
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.trivial = labels is None and fields is None

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and (obj.get("metadata") or {}).get("namespace") != self.namespace:
            return False
        if self.labels is not None and not self.labels.matches(obj):
            return False
        return self.fields is None or self.fields.matches(obj)
