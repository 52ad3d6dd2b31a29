"""Decoding of the protobuf request bodies ``kubectl create secret|namespace`` sends.

Those commands send ``application/vnd.kubernetes.protobuf`` bodies (and accept JSON back); the
scenarios and the demo use them. This module decodes the ``k8s\\x00`` envelope
(``runtime.Unknown``) and the Secret and Namespace messages with the field numbers of
``k8s.io/api/core/v1/generated.proto``; other kinds (``kubectl create configmap|serviceaccount|
token``...) are answered 415.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from typing import Any

from rdsiam.testing.kube.errors import ApiError

__all__ = ["MEDIA_TYPE", "decode"]

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"

Fields = dict[int, list[Any]]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Fields:
    """Split a message into {field number: [raw values]} (varints as int, the rest as bytes)."""
    fields: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _str(fields: Fields, number: int) -> str | None:
    values = fields.get(number)
    return values[-1].decode() if values and values[-1] else None


def _int(fields: Fields, number: int) -> int | None:
    values = fields.get(number)
    if not values:
        return None
    value = int(values[-1])
    return value - (1 << 64) if value >= 1 << 63 else value


def _bool(fields: Fields, number: int) -> bool | None:
    values = fields.get(number)
    return bool(values[-1]) if values else None


def _strings(fields: Fields, number: int) -> list[str]:
    return [v.decode() for v in fields.get(number, [])]


def _map(fields: Fields, number: int, *, binary: bool = False) -> dict[str, str]:
    result = {}
    for entry in fields.get(number, []):
        item = _fields(entry)
        key = (item.get(1) or [b""])[-1].decode()
        raw = (item.get(2) or [b""])[-1]
        result[key] = base64.b64encode(raw).decode() if binary else raw.decode()
    return result


def _time(fields: Fields, number: int) -> str | None:
    values = fields.get(number)
    if not values or not values[-1]:
        return None
    seconds = _int(_fields(values[-1]), 1) or 0
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if v not in (None, "", [], {})}


def _object_meta(data: bytes) -> dict[str, Any]:
    f = _fields(data)
    return _compact(
        {
            "name": _str(f, 1),
            "generateName": _str(f, 2),
            "namespace": _str(f, 3),
            "uid": _str(f, 5),
            "resourceVersion": _str(f, 6),
            "labels": _map(f, 11),
            "annotations": _map(f, 12),
            "finalizers": _strings(f, 14),
            "creationTimestamp": _time(f, 8),
        }
    )


def _meta(f: Fields) -> dict[str, Any]:
    return _object_meta(f[1][-1]) if f.get(1) else {}


def _secret(f: Fields) -> dict[str, Any]:
    return _compact(
        {
            "metadata": _meta(f),
            "data": _map(f, 2, binary=True),
            "type": _str(f, 3),
            "stringData": _map(f, 4),
            "immutable": _bool(f, 5),
        }
    )


def _namespace(f: Fields) -> dict[str, Any]:
    spec = _fields(f[2][-1]) if f.get(2) else {}
    return _compact({"metadata": _meta(f), "spec": _compact({"finalizers": _strings(spec, 1)})})


_KINDS: dict[str, Callable[[Fields], dict[str, Any]]] = {
    "Secret": _secret,
    "Namespace": _namespace,
}


def decode(body: bytes) -> dict[str, Any]:
    """Decode a protobuf-encoded request body into the JSON object it stands for."""
    if not body.startswith(_MAGIC):
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - "
            "accepted media types include: application/json, application/yaml",
            {},
        )
    envelope = _fields(body[len(_MAGIC) :])
    type_meta = _fields(envelope[1][-1]) if envelope.get(1) else {}
    api_version, kind = _str(type_meta, 1) or "", _str(type_meta, 2) or ""
    decoder = _KINDS.get(kind)
    if decoder is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the emulator cannot decode protobuf {kind or 'objects'}; send application/json",
            {},
        )
    raw = envelope.get(2, [b""])[-1]
    obj = decoder(_fields(raw))
    return {"apiVersion": api_version, "kind": kind, **obj}
