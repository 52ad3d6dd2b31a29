"""Decoding of the protobuf request bodies kubectl sends for a few built-in kinds.

``kubectl create secret|configmap|namespace|serviceaccount|token`` and ``kubectl delete``
send ``application/vnd.kubernetes.protobuf`` bodies (and accept JSON back). This module
decodes the ``k8s\\x00`` envelope (``runtime.Unknown``) and the messages of those kinds
(Secret, ConfigMap, Namespace, ServiceAccount, TokenRequest, DeleteOptions) with the
field numbers of ``k8s.io/api/*/generated.proto``; other kinds are answered 415.
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


def _owner_reference(data: bytes) -> dict[str, Any]:
    f = _fields(data)
    return _compact(
        {
            "apiVersion": _str(f, 5),
            "kind": _str(f, 1),
            "name": _str(f, 3),
            "uid": _str(f, 4),
            "controller": _bool(f, 6),
            "blockOwnerDeletion": _bool(f, 7),
        }
    )


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
            "ownerReferences": [_owner_reference(r) for r in f.get(13, [])],
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


def _config_map(f: Fields) -> dict[str, Any]:
    return _compact(
        {
            "metadata": _meta(f),
            "data": _map(f, 2),
            "binaryData": _map(f, 3, binary=True),
            "immutable": _bool(f, 4),
        }
    )


def _namespace(f: Fields) -> dict[str, Any]:
    spec = _fields(f[2][-1]) if f.get(2) else {}
    return _compact({"metadata": _meta(f), "spec": _compact({"finalizers": _strings(spec, 1)})})


def _service_account(f: Fields) -> dict[str, Any]:
    return _compact({"metadata": _meta(f), "automountServiceAccountToken": _bool(f, 4)})


def _token_request(f: Fields) -> dict[str, Any]:
    spec = _fields(f[2][-1]) if f.get(2) else {}
    bound = _fields(spec[3][-1]) if spec.get(3) else None
    return _compact(
        {
            "metadata": _meta(f),
            "spec": _compact(
                {
                    "audiences": _strings(spec, 1),
                    "expirationSeconds": _int(spec, 4),
                    "boundObjectRef": _compact(
                        {
                            "kind": _str(bound, 1),
                            "apiVersion": _str(bound, 2),
                            "name": _str(bound, 3),
                            "uid": _str(bound, 4),
                        }
                    )
                    if bound
                    else None,
                }
            ),
        }
    )


def _delete_options(f: Fields) -> dict[str, Any]:
    pre = _fields(f[2][-1]) if f.get(2) else {}
    return _compact(
        {
            "gracePeriodSeconds": _int(f, 1),
            "preconditions": _compact({"uid": _str(pre, 1), "resourceVersion": _str(pre, 2)}),
            "orphanDependents": _bool(f, 3),
            "propagationPolicy": _str(f, 4),
            "dryRun": _strings(f, 5),
        }
    )


_KINDS: dict[str, Callable[[Fields], dict[str, Any]]] = {
    "Secret": _secret,
    "ConfigMap": _config_map,
    "Namespace": _namespace,
    "ServiceAccount": _service_account,
    "TokenRequest": _token_request,
    "DeleteOptions": _delete_options,
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
