"""The subset of Kubernetes JSONPath that printer columns use.

Supports ``.field``, ``['field']``, ``[N]`` (negative too), ``[*]``, ``..``-free paths and
filters ``[?(@.a.b=="x")]``, ``[?(@.a!="x")]``, ``[?(@.a)]``.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["find"]

_TOKEN = re.compile(r"""\.([A-Za-z0-9_\-/]+)|\['([^']*)'\]|\[\?\((.*?)\)\]|\[(\*|-?\d+)\]|\.(\*)""")
_FILTER = re.compile(r"""^@((?:\.[A-Za-z0-9_\-/]+)+)\s*(?:(==|!=)\s*(?:"([^"]*)"|'([^']*)'|(-?[\d.]+|true|false)))?$""")


def _get_path(value: Any, dotted: str) -> Any:
    for key in dotted.strip(".").split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


_MISSING = object()


def _literal(text: str | None, quoted: str | None, quoted2: str | None) -> Any:
    if quoted is not None:
        return quoted
    if quoted2 is not None:
        return quoted2
    if text in ("true", "false"):
        return text == "true"
    if text is None:
        return None
    return float(text) if "." in text else int(text)


def find(obj: Any, path: str) -> list[Any]:
    """All values at ``path`` (``.status.phase`` or ``{.status.phase}``) in document order."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise ValueError(f"unsupported JSONPath at {path[pos:]!r} in {path!r}")
        pos = m.end()
        key, quoted, filt, index, star = m.groups()
        nxt: list[Any] = []
        for value in current:
            if key is not None or quoted is not None:
                name = key if key is not None else quoted
                if isinstance(value, dict) and name in value:
                    nxt.append(value[name])
            elif star is not None or index == "*":
                if isinstance(value, dict):
                    nxt.extend(value.values())
                elif isinstance(value, list):
                    nxt.extend(value)
            elif index is not None:
                if isinstance(value, list) and -len(value) <= int(index) < len(value):
                    nxt.append(value[int(index)])
            elif filt is not None:
                fm = _FILTER.match(filt.strip())
                if not fm:
                    raise ValueError(f"unsupported JSONPath filter {filt!r}")
                field, op, q1, q2, bare = fm.groups()
                items = value if isinstance(value, list) else [value]
                for item in items:
                    actual = _get_path(item, field)
                    if op is None:
                        if actual is not _MISSING:
                            nxt.append(item)
                        continue
                    expected = _literal(bare, q1, q2)
                    if (actual == expected) == (op == "=="):
                        nxt.append(item)
        current = nxt
    return current
