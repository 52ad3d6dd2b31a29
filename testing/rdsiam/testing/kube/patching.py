"""Patch mechanics: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch.

Strategic merge patch is applied as a JSON merge patch after interpreting the map-level
directives (``$patch: replace|delete``, ``$deleteFromPrimitiveList/<field>``,
``$retainKeys``, ``$setElementOrder/<field>``). Lists are replaced as a whole, never merged
by their ``patchMergeKey`` (a known gap: patching one container of a Pod replaces the list).
"""

from __future__ import annotations

import copy
import json
from typing import Any

from rdsiam.testing.kube.errors import ApiError, bad_request

__all__ = ["PatchError", "json_copy", "json_patch", "merge_patch", "strategic_merge_patch"]


def json_copy(value: Any) -> Any:
    """A deep copy of a JSON document, several times faster than ``copy.deepcopy`` (anything that is not
    a dict, a list or an immutable scalar goes to ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {k: v if type(v) in _SCALARS else json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [v if type(v) in _SCALARS else json_copy(v) for v in value]
    if type(value) in _SCALARS:
        return value
    return copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


class PatchError(ApiError):
    """A JSON patch that does not apply: 422 with the Go library's wording, like the real server."""

    def __init__(self, message: str) -> None:
        # The real server answers every failed JSON patch with this generic text (the Go
        # library's reason, e.g. "testing value /x failed: test failed", stays in ``cause``).
        super().__init__(422, "Invalid", "the server rejected our request due to an error in our request", {})
        self.cause = message


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return json_copy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:
            result[key] = json_copy(value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch with its directives interpreted, lists replaced (see module doc)."""
    if not isinstance(patch, dict):
        return json_copy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: json_copy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            current = result.get(name)
            if isinstance(current, list) and isinstance(value, list):
                result[name] = [item for item in current if item not in value]
            continue
        if key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys, $patch: ordering/retention hints
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = [
                _strip_directives(item)
                for item in value
                if not (isinstance(item, dict) and item.get("$patch") == "delete")
            ]
        else:
            result[key] = json_copy(value)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return json_copy(value)


# ---------------------------------------------------------------- RFC 6902


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    try:
        index = int(token)
    except ValueError:
        raise PatchError(f"unable to access invalid index: {token}: invalid index referenced") from None
    limit = len(container) if allow_end else len(container) - 1
    if index < 0 or index > limit:
        raise PatchError(f"Unable to access invalid index: {index}: invalid index referenced")
    return index


def _parent(doc: Any, path: str, op: str) -> tuple[Any, str]:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError(f"{op} operation does not apply: doc is missing path: {path!r}: missing value")
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, allow_end=False)]
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path: {json.dumps(path)}: missing value")
    return node, tokens[-1]


def _get(doc: Any, path: str, op: str) -> Any:
    node = doc
    for token in _pointer(path):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, allow_end=False)]
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing key: {path}: missing value")
    return node


def _remove(doc: Any, path: str, op: str = "remove") -> Any:
    parent, token = _parent(doc, path, op)
    if isinstance(parent, dict):
        if token not in parent:
            raise PatchError(f"Unable to remove nonexistent key: {token}: missing value")
        return parent.pop(token)
    if isinstance(parent, list):
        return parent.pop(_index(parent, token, path, allow_end=False))
    raise PatchError(f"{op} operation does not apply: doc is missing path: {json.dumps(path)}: missing value")


def _add(doc: Any, path: str, value: Any, op: str = "add") -> Any:
    if path == "":
        return value
    parent, token = _parent(doc, path, op)
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, path, allow_end=True), value)
    else:
        raise PatchError(f"{op} operation does not apply: doc is missing path: {json.dumps(path)}: missing value")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """Apply RFC 6902 operations (add, remove, replace, move, copy, test) to a copy of ``target``."""
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = json_copy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request("Unexpected kind: unknown")
        kind, path = op["op"], op.get("path", "")
        if kind == "add":
            doc = _add(doc, path, json_copy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path, "replace")
            if path == "":
                doc = json_copy(op.get("value"))
            else:
                parent, token = _parent(doc, path, "replace")
                if isinstance(parent, list):
                    parent[_index(parent, token, path, allow_end=False)] = json_copy(op.get("value"))
                else:
                    parent[token] = json_copy(op.get("value"))
        elif kind == "move":
            value = _remove(doc, op.get("from", ""), "move")
            doc = _add(doc, path, value, "move")
        elif kind == "copy":
            value = json_copy(_get(doc, op.get("from", ""), "copy"))
            doc = _add(doc, path, value, "copy")
        elif kind == "test":
            try:
                actual = _get(doc, path, "test")
            except PatchError:
                actual = None
            if actual != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc
