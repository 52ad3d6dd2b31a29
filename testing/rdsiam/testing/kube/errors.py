"""API errors rendered as ``Status`` objects, worded the way kube-apiserver words them.

The constructors mirror ``k8s.io/apimachinery/pkg/api/errors`` (``NewNotFound``,
``NewAlreadyExists``, ``NewConflict``, ``NewInvalid``, ...) and field errors mirror
``k8s.io/apimachinery/pkg/util/validation/field`` so that clients (kubectl, kopf,
the kubernetes Python client) see the same ``reason``, ``code``, ``details`` and
``message`` as from a real server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "OMIT",
    "ApiError",
    "FieldError",
    "aggregate",
    "already_exists",
    "bad_request",
    "conflict",
    "expired",
    "forbidden",
    "generic",
    "go_value",
    "internal",
    "invalid",
    "method_not_supported",
    "not_found",
    "status_body",
]


class _Omit:
    """Marker for a field error whose bad value is not shown (``field.OmitValueType``)."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omit()

_TYPE_TEXT = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "InternalError": "Internal error",
    "FieldValueTypeInvalid": "Invalid value",
}
_VALUELESS = {"FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError"}


def go_value(value: Any) -> str:
    """Render a JSON value the way Go's ``%v``/``%q``/``%#v`` render it in field errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict | list):
        # Newer apimachinery prints composite bad values as JSON.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def go_number(value: float | int) -> str:
    """Go's ``%v`` of a float64: integral values print without a fraction."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class FieldError:
    """One field-level validation error (``field.Error``)."""

    type: str
    field: str
    value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        if self.type in _VALUELESS or self.value is OMIT:
            text = _TYPE_TEXT[self.type]
        else:
            text = f"{_TYPE_TEXT[self.type]}: {go_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    # Constructors named like the Go helpers.
    @classmethod
    def required(cls, path: str, detail: str = "") -> FieldError:
        return cls("FieldValueRequired", path, "", detail)

    @classmethod
    def invalid(cls, path: str, value: Any, detail: str) -> FieldError:
        return cls("FieldValueInvalid", path, value, detail)

    @classmethod
    def type_invalid(cls, path: str, value: Any, detail: str) -> FieldError:
        return cls("FieldValueTypeInvalid", path, value, detail)

    @classmethod
    def not_supported(cls, path: str, value: Any, allowed: list[str]) -> FieldError:
        detail = "supported values: " + ", ".join(json.dumps(v) for v in allowed) if allowed else ""
        return cls("FieldValueNotSupported", path, value, detail)

    @classmethod
    def forbidden(cls, path: str, detail: str) -> FieldError:
        return cls("FieldValueForbidden", path, "", detail)

    @classmethod
    def duplicate(cls, path: str, value: Any) -> FieldError:
        return cls("FieldValueDuplicate", path, value, "")

    @classmethod
    def too_long(cls, path: str, value: Any, max_length: int) -> FieldError:
        detail = f"may not be more than {max_length} bytes" if max_length >= 0 else "value is too long"
        return cls("FieldValueTooLong", path, value, detail)

    @classmethod
    def too_many(cls, path: str, actual: int, maximum: int) -> FieldError:
        detail = f"must have at most {maximum} items" if maximum >= 0 else "has too many items"
        return cls("FieldValueTooMany", path, actual if actual >= 0 else OMIT, detail)


def aggregate(errors: list[FieldError]) -> str:
    """``utilerrors.NewAggregate(...).Error()``: one message, or ``[a, b]`` for several (deduplicated)."""
    seen: list[str] = []
    for error in errors:
        text = str(error)
        if text not in seen:
            seen.append(text)
    if len(seen) == 1:
        return seen[0]
    return "[" + ", ".join(seen) + "]"


@dataclass
class ApiError(Exception):
    """An error answered as a ``Status`` object with the given HTTP code."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``v1.Status`` failure object; empty details are kept as ``{}`` like the real server."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = {k: v for k, v in details.items() if v not in (None, "", [], 0)}
    return body


def _details(group: str, kind: str, name: str | None) -> dict[str, Any]:
    return {"name": name or "", "group": group, "kind": kind}


def not_found(group: str, resource: str, name: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', _details(group, resource, name))


def already_exists(group: str, resource: str, name: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists', _details(group, resource, name))


def conflict(group: str, resource: str, name: str, why: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
        _details(group, resource, name),
    )


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    qualified = f"{kind}.{group}" if group else kind
    causes = [{"reason": e.type, "message": e.body(), "field": e.field} for e in errors]
    message = f'{qualified} "{name}" is invalid'
    if errors:
        message += f": {aggregate(errors)}"
    return ApiError(422, "Invalid", message, {"name": name, "group": group, "kind": kind, "causes": causes})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message, None)


def forbidden(group: str, resource: str, name: str, why: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    text = f'{qualified} "{name}" is forbidden: {why}' if name else f"{qualified} is forbidden: {why}"
    return ApiError(403, "Forbidden", text, _details(group, resource, name))


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message, None)


def method_not_supported(group: str, resource: str, action: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(
        405,
        "MethodNotAllowed",
        f'{action} is not supported on resources of kind "{qualified}"',
        {"group": group, "kind": resource},
    )


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


_GENERIC = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "the server has asked for the client to provide credentials"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the server reported a conflict"),
    410: ("Expired", "the resource version is too old"),
    422: ("Invalid", "the server rejected our request due to an error in our request"),
    429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: (
        "Timeout",
        "the server was unable to return a response in the time allotted, but may still be processing the request",
    ),
}


def generic(code: int, message: str | None = None, reason: str | None = None) -> ApiError:
    """``NewGenericServerResponse``-like error for a bare status code (used by fault injection)."""
    default_reason, default_message = _GENERIC.get(
        code,
        ("InternalError" if code >= 500 else "Unknown", "an error on the server has prevented the request"),
    )
    return ApiError(code, reason or default_reason, message or default_message, {})
