"""Render a Helm chart: with ``helm`` when it is installed, else with a small Go-template renderer.

::

    from rdsiam.testing import helm
    objects = helm.objects(helm.render("charts/rdsiam", values={"replicaCount": 2}))   # the fallback
    text = helm.template("charts/rdsiam", values_files=["ci/all-values.yaml"])         # helm, or None

The fallback implements the part of Helm that the rdsiam chart uses, and fails loudly on anything
else (an unknown function or action is an error, never silently empty output), so the chart stays
within it and tests can compare both renderers' objects while helm exists:

- values: ``values.yaml`` coalesced with ``-f`` files and a dict (maps merge, ``null`` deletes a
  default), then checked against ``values.schema.json`` (JSON Schema draft 7, needs ``jsonschema``);
- ``.Values``, ``.Release`` (Name, Namespace, Service, IsInstall, IsUpgrade, Revision), ``.Chart``
  (Chart.yaml, capitalised), ``.Files.Get``, ``.Capabilities.KubeVersion``; ``Chart.yaml``'s
  ``kubeVersion`` when it is a single ``>=`` bound;
- Go templates: text, ``{{- -}}`` trimming, comments, ``define``/``include``/``template``,
  ``if``/``else if``/``else``/``with``/``range`` (``$i, $v :=``)/``end``, variables (``$x :=``, ``$x =``,
  ``$``), pipelines, parentheses with field access (``(fromYaml $s).spec``), string/number/bool/nil
  literals;
- functions: and or not eq ne lt le gt ge len index print printf include required fail default empty
  coalesce ternary quote squote trim trimSuffix trimPrefix trunc replace contains hasPrefix hasSuffix
  lower upper join split list dict hasKey toString int toYaml fromYaml toJson indent nindent b64enc.

Helm's output post-processing is mirrored: ``<no value>`` becomes empty, and templates whose output
is only whitespace produce no document. ``render`` returns ``{template path: text}`` plus ``NOTES.txt``
under ``"NOTES.txt"``.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "HelmError",
    "TemplateError",
    "ValuesError",
    "find_helm",
    "lint",
    "load_values",
    "objects",
    "render",
    "template",
]


class HelmError(Exception):
    """helm (the binary) failed; the message holds its stderr."""


class TemplateError(Exception):
    """A template could not be parsed or executed (names the template and the action)."""


class ValuesError(Exception):
    """The values do not match values.schema.json (or a ``required``/``fail`` in a template)."""


# ---- helm, the binary -------------------------------------------------------------------------


def find_helm() -> str | None:
    """``helm`` on PATH, else the one ``scripts/build-realapi.sh`` built, else None."""
    found = shutil.which("helm")
    if found:
        return found
    try:
        from rdsiam.testing.realapi import helm_path
    except ImportError:  # pragma: no cover - realapi is part of this package
        return None
    path = helm_path()
    return str(path) if path else None


def _values_args(values_files: Iterable[str | Path], values: Mapping[str, Any] | None, tmp: str) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    if values:
        extra = Path(tmp) / "values.yaml"
        extra.write_text(yaml.safe_dump(dict(values)))
        args += ["-f", str(extra)]
    return args


def template(
    chart: str | Path,
    *,
    release: str = "rdsiam",
    namespace: str = "rdsiam-system",
    values_files: Sequence[str | Path] = (),
    values: Mapping[str, Any] | None = None,
    kube_version: str = "1.33.0",
    helm: str | None = None,
) -> str | None:
    """``helm template`` output, or None when helm is not installed. Raises HelmError on failure."""
    binary = helm or find_helm()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="rdsiam-helm-") as tmp:
        cmd = [
            binary,
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            "--kube-version",
            kube_version,
            *_values_args(values_files, values, tmp),
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp},
        )
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return proc.stdout


def lint(
    chart: str | Path,
    *,
    values_files: Sequence[str | Path] = (),
    values: Mapping[str, Any] | None = None,
    helm: str | None = None,
) -> str | None:
    """``helm lint --strict`` output, or None when helm is not installed. Raises HelmError on failure."""
    binary = helm or find_helm()
    if binary is None:
        return None
    with tempfile.TemporaryDirectory(prefix="rdsiam-helm-") as tmp:
        cmd = [binary, "lint", "--strict", str(chart), *_values_args(values_files, values, tmp)]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp},
        )
    if proc.returncode != 0:
        raise HelmError((proc.stdout + proc.stderr).strip())
    return proc.stdout


def objects(rendered: str | Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects in ``helm template`` output or in :func:`render`'s result."""
    texts = [rendered] if isinstance(rendered, str) else [t for p, t in rendered.items() if p != "NOTES.txt"]
    found: list[dict[str, Any]] = []
    for text in texts:
        found += [doc for doc in yaml.safe_load_all(text) if doc]
    return found


# ---- values -----------------------------------------------------------------------------------


def _coalesce(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)  # Helm: null deletes the chart's default
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _coalesce(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load_values(
    chart: str | Path,
    values_files: Sequence[str | Path] = (),
    values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The chart's values as Helm computes them, validated against values.schema.json when present."""
    chart = Path(chart)
    merged: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for path in values_files:
        merged = _coalesce(merged, yaml.safe_load(Path(path).read_text()) or {})
    if values:
        merged = _coalesce(merged, values)
    schema_path = chart / "values.schema.json"
    if schema_path.exists():
        import jsonschema

        validator = jsonschema.Draft7Validator(json.loads(schema_path.read_text()))
        errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"- {'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]
            raise ValuesError("values don't meet the specifications of the schema(s):\n" + "\n".join(lines))
    return merged


# ---- the template language --------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:[^'\\]|\\.)')
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<comma>,)
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?))
  | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""",
    re.VERBOSE,
)


@dataclass
class _Field:
    """``.A.B`` on the current dot (base None), a variable, or the result of a parenthesised pipeline."""

    names: list[str]
    variable: str | None = None
    base: Any = None  # a _Pipeline for ``(...).A``


@dataclass
class _Literal:
    value: Any


@dataclass
class _Ident:
    name: str


@dataclass
class _Command:
    args: list[Any]


@dataclass
class _Pipeline:
    commands: list[_Command]
    decl: list[str] = field(default_factory=list)
    assign: bool = False  # ``=`` (assign to an existing variable) rather than ``:=``


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipeline: _Pipeline


@dataclass
class _Branch:
    kind: str  # if / with / range
    pipeline: _Pipeline
    body: list[Any]
    otherwise: list[Any]


@dataclass
class _Call:
    name: str
    pipeline: _Pipeline | None


def _lex_actions(source: str, name: str) -> list[tuple[str, str]]:
    """Split into ("text", s) and ("action", s) pieces, with Go's ``{{-``/``-}}`` trimming applied."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    while True:
        start = source.find("{{", pos)
        text = source[pos:] if start < 0 else source[pos:start]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if start < 0:
            pieces.append(("text", text))
            return pieces
        inner_start = start + 2
        trim_left = source.startswith(("- ", "-\n", "-\t"), inner_start)
        if trim_left:
            text = text.rstrip(" \t\r\n")
            inner_start += 1
        pieces.append(("text", text))
        # find the closing braces: after the comment's */, or outside string literals
        i, quote = inner_start, ""
        if source[inner_start:].lstrip(" \t\r\n").startswith("/*"):
            close = source.find("*/", inner_start)
            i = source.find("}}", close) if close >= 0 else -1
            if i < 0:
                raise TemplateError(f"{name}: unclosed comment starting at offset {start}")
        while i < len(source):
            ch = source[i]
            if quote:
                if ch == "\\" and quote != "`":
                    i += 2
                    continue
                if ch == quote:
                    quote = ""
            elif ch in "\"`'":
                quote = ch
            elif source.startswith("}}", i):
                break
            i += 1
        else:
            raise TemplateError(f"{name}: unclosed action starting at offset {start}")
        inner = source[inner_start:i]
        trim_next = inner.endswith((" -", "\n-", "\t-"))
        if trim_next:
            inner = inner[:-1]
        pieces.append(("action", inner.strip()))
        pos = i + 2


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return str(json.loads(token.replace("\\'", "'")))


class _Parser:
    def __init__(self, name: str, defines: dict[str, list[Any]], functions: Mapping[str, Any]) -> None:
        self.name = name
        self.defines = defines
        self.functions = functions

    def parse(self, source: str) -> list[Any]:
        pieces = _lex_actions(source, self.name)
        self._pieces = pieces
        self._i = 0
        nodes, end = self._block(top=True)
        if end is not None:
            raise TemplateError(f"{self.name}: unexpected {{{{{end}}}}}")
        return nodes

    def _block(self, top: bool = False) -> tuple[list[Any], str | None]:
        """Nodes until an ``end``/``else`` (returned as the terminator), or the end of input."""
        nodes: list[Any] = []
        while self._i < len(self._pieces):
            kind, text = self._pieces[self._i]
            self._i += 1
            if kind == "text":
                if text:
                    nodes.append(_Text(text))
                continue
            if text.startswith("/*"):
                if not text.endswith("*/"):
                    raise TemplateError(f"{self.name}: unclosed comment")
                continue
            word = text.split(None, 1)[0] if text else ""
            rest = text[len(word) :].strip()
            if word in ("end", "else"):
                return nodes, text
            if word in ("if", "with", "range"):
                nodes.append(self._branch(word, rest))
            elif word == "define":
                if not top:
                    raise TemplateError(f"{self.name}: define inside a block")
                body, end = self._block()
                if end != "end":
                    raise TemplateError(f"{self.name}: define {rest} not closed by end")
                self.defines[_unquote(rest)] = body
            elif word in ("template", "block"):
                tokens = self._tokens(rest)
                tname = _unquote(tokens[0][1])
                pipe = self._pipeline(tokens[1:]) if len(tokens) > 1 else None
                nodes.append(_Call(tname, pipe))
            elif word in ("break", "continue"):
                raise TemplateError(f"{self.name}: {word} is not supported by the fallback renderer")
            else:
                nodes.append(_Action(self._pipeline(self._tokens(text))))
        if not top:
            raise TemplateError(f"{self.name}: missing {{{{end}}}}")
        return nodes, None

    def _branch(self, kind: str, rest: str) -> _Branch:
        pipeline = self._pipeline(self._tokens(rest))
        body, end = self._block()
        otherwise: list[Any] = []
        if end is not None and end.startswith("else"):
            tail = end[4:].strip()
            if tail.startswith(("if ", "with ")):
                sub_kind, sub_rest = tail.split(None, 1)
                otherwise = [self._branch(sub_kind, sub_rest)]  # consumes the shared {{end}}
                return _Branch(kind, pipeline, body, otherwise)
            otherwise, end = self._block()
        if end != "end":
            raise TemplateError(f"{self.name}: {kind} {rest} not closed by end")
        return _Branch(kind, pipeline, body, otherwise)

    def _tokens(self, text: str) -> list[tuple[str, str]]:
        tokens: list[tuple[str, str]] = []
        pos, rparen_end = 0, -1
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise TemplateError(f"{self.name}: cannot parse {text[pos:]!r} in {{{{{text}}}}}")
            pos = m.end()
            kind = m.lastgroup or ""
            if kind == "ws":
                continue
            if kind == "field" and m.group() != "." and m.start() == rparen_end:
                kind = "chain"  # ``(...).spec``: field access on the parenthesised value
            rparen_end = m.end() if kind == "rparen" else -1
            tokens.append((kind, m.group()))
        return tokens

    def _pipeline(self, tokens: list[tuple[str, str]]) -> _Pipeline:
        decl: list[str] = []
        assign = False
        # $a := ..., $a, $b := ..., $a = ...
        if tokens and tokens[0][0] == "variable":
            j = 0
            names = []
            while j < len(tokens) and tokens[j][0] == "variable":
                names.append(tokens[j][1])
                j += 1
                if j < len(tokens) and tokens[j][0] == "comma":
                    j += 1
                    continue
                break
            if j < len(tokens) and tokens[j][0] in ("declare", "assign"):
                decl, assign = names, tokens[j][0] == "assign"
                tokens = tokens[j + 1 :]
        commands: list[_Command] = []
        current: list[Any] = []
        i = 0
        while i < len(tokens):
            kind, value = tokens[i]
            if kind == "pipe":
                if not current:
                    raise TemplateError(f"{self.name}: empty command in pipeline")
                commands.append(_Command(current))
                current = []
                i += 1
                continue
            if kind == "lparen":
                depth, j = 1, i + 1
                while j < len(tokens) and depth:
                    depth += {"lparen": 1, "rparen": -1}.get(tokens[j][0], 0)
                    j += 1
                if depth:
                    raise TemplateError(f"{self.name}: unbalanced parentheses")
                operand: Any = self._pipeline(tokens[i + 1 : j - 1])
                if j < len(tokens) and tokens[j][0] == "chain":
                    operand = _Field(tokens[j][1].lstrip(".").split("."), base=operand)
                    j += 1
                current.append(operand)
                i = j
                continue
            current.append(self._operand(kind, value))
            i += 1
        if current:
            commands.append(_Command(current))
        if not commands:
            raise TemplateError(f"{self.name}: missing value")
        for command in commands:
            head = command.args[0]
            if isinstance(head, _Ident) and head.name not in self.functions:
                raise TemplateError(f"{self.name}: function {head.name!r} not defined (fallback renderer)")
        return _Pipeline(commands, decl, assign)

    def _operand(self, kind: str, value: str) -> Any:
        if kind in ("string", "raw", "char"):
            return _Literal(_unquote(value) if kind != "char" else ord(_unquote('"' + value[1:-1] + '"')))
        if kind == "number":
            return _Literal(int(value, 0) if re.fullmatch(r"[-+]?(0[xX][0-9a-fA-F]+|[0-9]+)", value) else float(value))
        if kind == "field":
            return _Field([] if value == "." else value[1:].split("."))
        if kind == "variable":
            name, *names = value.split(".")
            return _Field(names, variable=name)
        if kind == "ident":
            if value in ("true", "false"):
                return _Literal(value == "true")
            if value == "nil":
                return _Literal(None)
            return _Ident(value)
        raise TemplateError(f"{self.name}: unexpected {value!r}")


def _truth(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool | int | float):
        return bool(value)
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


def _go_str(value: Any) -> str:
    """fmt's %v for the values a chart prints."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_str(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _printf(fmt: str, *args: Any) -> str:
    out, it = [], iter(args)

    def repl(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        try:
            arg = next(it)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        if verb == "q":
            return json.dumps(_go_str(arg), ensure_ascii=False)
        if verb == "d":
            return str(int(arg))
        return _go_str(arg)

    out.append(re.sub(r"%([svdq%])", repl, fmt))
    return "".join(out)


def _indent(spaces: int, text: str) -> str:
    pad = " " * spaces
    return pad + text.replace("\n", "\n" + pad)


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return str(
        yaml.safe_dump(value, default_flow_style=False, sort_keys=True, allow_unicode=True, width=2**31)
    ).removesuffix("\n")


def _from_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        return {"Error": str(exc)}


def _to_int(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return int(value)
    try:
        return int(float(str(value)))
    except ValueError:
        return 0


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        numeric = (int, float)
        if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
            return op(a, b)
        if type(a) is not type(b):
            raise TemplateError(f"incompatible types for comparison: {a!r} and {b!r}")
        return op(a, b)

    return compare


def _eq(a: Any, *others: Any) -> bool:
    return any(a == b for b in others)


def _index(collection: Any, *keys: Any) -> Any:
    for key in keys:
        if collection is None:
            return None
        if isinstance(collection, dict):
            collection = collection.get(key)
        else:
            collection = collection[_to_int(key)]
    return collection


def _fail(message: str) -> Any:
    raise ValuesError(message)


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise ValuesError(message)
    return value


def _quote(*args: Any) -> str:
    return " ".join(json.dumps(_go_str(a), ensure_ascii=False) for a in args if a is not None)


def _kind_is(kind: str, value: Any) -> bool:
    """Sprig's ``kindIs``: Go's reflect kind of a value (Helm reads every YAML number as float64)."""
    if value is None:
        actual = "invalid"
    elif isinstance(value, bool):
        actual = "bool"
    elif isinstance(value, int | float):
        actual = "float64"
    elif isinstance(value, str):
        actual = "string"
    elif isinstance(value, list):
        actual = "slice"
    else:
        actual = "map"
    return actual == kind


def _default(default: Any, *value: Any) -> Any:
    return value[0] if value and _truth(value[0]) else default


BUILTINS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: next((v for v in a if not _truth(v)), a[-1]),
    "or": lambda *a: next((v for v in a if _truth(v)), a[-1]),
    "not": lambda v: not _truth(v),
    "eq": _eq,
    "ne": lambda a, b: a != b,
    "lt": _compare(lambda a, b: a < b),
    "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b),
    "ge": _compare(lambda a, b: a >= b),
    "len": lambda v: len(v),
    "index": _index,
    "print": lambda *a: "".join(_go_str(v) for v in a),
    "printf": _printf,
    "required": _required,
    "fail": _fail,
    "default": _default,
    "empty": lambda v: not _truth(v),
    "coalesce": lambda *a: next((v for v in a if _truth(v)), None),
    "ternary": lambda yes, no, cond: yes if _truth(cond) else no,
    "quote": _quote,
    "squote": lambda *a: " ".join("'" + _go_str(v) + "'" for v in a if v is not None),
    "trim": lambda s: _go_str(s).strip(),
    "trimSuffix": lambda suffix, s: _go_str(s).removesuffix(suffix),
    "trimPrefix": lambda prefix, s: _go_str(s).removeprefix(prefix),
    "trunc": lambda n, s: _go_str(s)[:n] if n >= 0 else _go_str(s)[n:],
    "replace": lambda old, new, s: _go_str(s).replace(old, new),
    "contains": lambda sub, s: sub in _go_str(s),
    "hasPrefix": lambda prefix, s: _go_str(s).startswith(prefix),
    "hasSuffix": lambda suffix, s: _go_str(s).endswith(suffix),
    "lower": lambda s: _go_str(s).lower(),
    "upper": lambda s: _go_str(s).upper(),
    "join": lambda sep, items: sep.join(_go_str(v) for v in (items or [])),
    "split": lambda sep, s: {f"_{i}": part for i, part in enumerate(_go_str(s).split(sep))},
    "list": lambda *a: list(a),
    "dict": lambda *a: {str(a[i]): (a[i + 1] if i + 1 < len(a) else "") for i in range(0, len(a), 2)},
    "hasKey": lambda d, key: isinstance(d, dict) and key in d,
    "kindIs": _kind_is,
    "toString": _go_str,
    "int": _to_int,
    "toYaml": _to_yaml,
    "fromYaml": _from_yaml,
    "toJson": lambda v: json.dumps(v, separators=(",", ":"), sort_keys=True),
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "b64enc": lambda s: base64.b64encode(_go_str(s).encode()).decode(),
}  # and "include", bound per engine


class _Files:
    def __init__(self, root: Path, ignored: Callable[[str], bool]) -> None:
        self._root = root
        self._ignored = ignored

    def Get(self, name: str) -> str:  # noqa: N802 - Helm's name
        path = (self._root / name).resolve()
        if not path.is_file() or self._ignored(name) or self._root.resolve() not in path.parents:
            return ""
        return path.read_text()


class _Engine:
    def __init__(self) -> None:
        self.defines: dict[str, list[Any]] = {}
        self.functions = dict(BUILTINS)
        self.functions["include"] = self.include
        self.depth = 0

    def parse(self, name: str, source: str) -> list[Any]:
        return _Parser(name, self.defines, self.functions).parse(source)

    def include(self, name: str, data: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"include: no template {name!r}")
        self.depth += 1
        if self.depth > 100:
            raise TemplateError(f"include {name!r}: recursion too deep")
        try:
            out: list[str] = []
            self.execute(self.defines[name], data, [{"$": data}], out)
            return "".join(out)
        finally:
            self.depth -= 1

    def execute(self, nodes: list[Any], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipeline(node.pipeline, dot, scopes)
                if not node.pipeline.decl:
                    out.append(_go_str(value))
            elif isinstance(node, _Branch):
                self.branch(node, dot, scopes, out)
            elif isinstance(node, _Call):
                data = self.pipeline(node.pipeline, dot, scopes) if node.pipeline else None
                out.append(self.include(node.name, data))
            else:  # pragma: no cover
                raise TemplateError(f"unknown node {node!r}")

    def branch(self, node: _Branch, dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
        inner = [*scopes, {}]
        if node.kind == "range":
            decl = node.pipeline.decl
            plain = _Pipeline(node.pipeline.commands)
            value = self.pipeline(plain, dot, inner)
            items: list[tuple[Any, Any]]
            if isinstance(value, dict):
                items = [(k, value[k]) for k in sorted(value)]
            elif isinstance(value, list | tuple):
                items = list(enumerate(value))
            elif isinstance(value, int) and not isinstance(value, bool):
                items = [(i, i) for i in range(value)]
            elif value is None:
                items = []
            else:
                raise TemplateError(f"range can't iterate over {value!r}")
            if not items:
                self.execute(node.otherwise, dot, inner, out)
                return
            for key, item in items:
                scope = [*scopes, {}]
                if len(decl) == 1:
                    scope[-1][decl[0]] = item
                elif len(decl) == 2:
                    scope[-1][decl[0]], scope[-1][decl[1]] = key, item
                self.execute(node.body, item, scope, out)
            return
        value = self.pipeline(node.pipeline, dot, inner)
        if _truth(value):
            self.execute(node.body, value if node.kind == "with" else dot, inner, out)
        else:
            self.execute(node.otherwise, dot, [*scopes, {}], out)

    def pipeline(self, pipe: _Pipeline, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        value: Any = _NOTHING
        for command in pipe.commands:
            value = self.command(command, dot, scopes, value)
        if pipe.decl:
            if pipe.assign:
                for scope in reversed(scopes):
                    if pipe.decl[0] in scope:
                        scope[pipe.decl[0]] = value
                        break
                else:
                    raise TemplateError(f"undefined variable {pipe.decl[0]}")
            else:
                scopes[-1][pipe.decl[0]] = value
        return value

    def command(self, command: _Command, dot: Any, scopes: list[dict[str, Any]], piped: Any) -> Any:
        head, *rest = command.args
        args = [self.operand(a, dot, scopes) for a in rest]
        if piped is not _NOTHING:
            args.append(piped)
        if isinstance(head, _Ident):
            fn = self.functions[head.name]
            try:
                return fn(*args)
            except (TemplateError, ValuesError):
                raise
            except Exception as exc:
                raise TemplateError(f"error calling {head.name}: {exc}") from exc
        if isinstance(head, _Field) and args:
            method = self.operand(head, dot, scopes)
            if not callable(method):
                raise TemplateError(f"{head.names} is not a method but has arguments")
            return method(*args)
        if args:
            raise TemplateError(f"can't give arguments to a non-function {head!r}")
        return self.operand(head, dot, scopes)

    def operand(self, node: Any, dot: Any, scopes: list[dict[str, Any]]) -> Any:
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Pipeline):
            return self.pipeline(node, dot, [*scopes, {}])
        if isinstance(node, _Ident):
            return self.functions[node.name]()
        if isinstance(node, _Field):
            if node.base is not None:
                value = self.operand(node.base, dot, scopes)
            elif node.variable is not None:
                for scope in reversed(scopes):
                    if node.variable in scope:
                        value = scope[node.variable]
                        break
                else:
                    raise TemplateError(f"undefined variable {node.variable}")
            else:
                value = dot
            for name in node.names:
                if value is None:
                    raise TemplateError(f"nil pointer evaluating .{name}")
                if isinstance(value, dict):
                    value = value.get(name)
                elif hasattr(value, name):
                    value = getattr(value, name)
                else:
                    raise TemplateError(f"can't evaluate field {name} in {type(value).__name__}")
            return value
        raise TemplateError(f"unexpected operand {node!r}")  # pragma: no cover


_NOTHING = object()


def _helmignore(chart: Path) -> Callable[[str], bool]:
    patterns = []
    path = chart / ".helmignore"
    if path.exists():
        patterns = [
            line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")
        ]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        for pattern in patterns:
            if pattern.endswith("/"):
                if pattern.rstrip("/") in parts[:-1]:
                    return True
            elif fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(parts[-1], pattern):
                return True
        return False

    return ignored


def _check_kube_version(constraint: str | None, kube_version: str) -> None:
    if not constraint:
        return
    m = re.fullmatch(r">=\s*v?(\d+)\.(\d+)(?:\.(\d+))?(?:-0)?", constraint.strip())
    if not m:
        return  # only single lower bounds are checked by the fallback
    want = tuple(int(x or 0) for x in m.groups())
    have = tuple(int(x) for x in (re.findall(r"\d+", kube_version) + ["0", "0"])[:3])
    if have < want:
        raise ValuesError(
            f"chart requires kubeVersion: {constraint} which is incompatible with Kubernetes v{kube_version}"
        )


def render(
    chart: str | Path,
    *,
    release: str = "rdsiam",
    namespace: str = "rdsiam-system",
    values_files: Sequence[str | Path] = (),
    values: Mapping[str, Any] | None = None,
    kube_version: str = "1.33.0",
) -> dict[str, str]:
    """Render the chart without helm: ``{"templates/x.yaml": text, ..., "NOTES.txt": text}``."""
    chart = Path(chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    _check_kube_version(meta.get("kubeVersion"), kube_version)
    merged = load_values(chart, values_files, values)
    ignored = _helmignore(chart)
    major, minor = (re.findall(r"\d+", kube_version) + ["0"])[:2]
    data = {
        "Values": merged,
        "Release": {
            "Name": release,
            "Namespace": namespace,
            "Service": "Helm",
            "IsInstall": True,
            "IsUpgrade": False,
            "Revision": 1,
        },
        "Chart": {k[:1].upper() + k[1:]: v for k, v in meta.items()},
        "Files": _Files(chart, ignored),
        "Capabilities": {"KubeVersion": {"Version": f"v{kube_version}", "Major": major, "Minor": minor}},
        "Template": {"BasePath": f"{meta['name']}/templates"},
    }
    engine = _Engine()
    parsed: dict[str, list[Any]] = {}
    for path in sorted((chart / "templates").rglob("*")):
        rel = path.relative_to(chart).as_posix()
        if path.is_file() and not ignored(rel):
            parsed[rel] = engine.parse(rel, path.read_text())  # collects every define first
    result: dict[str, str] = {}
    for rel, nodes in parsed.items():
        base = rel.rsplit("/", 1)[-1]
        if base.startswith("_"):
            continue
        out: list[str] = []
        data["Template"] = {"BasePath": f"{meta['name']}/templates", "Name": f"{meta['name']}/{rel}"}
        try:
            engine.execute(nodes, data, [{"$": data}], out)
        except TemplateError as exc:
            raise TemplateError(f"{rel}: {exc}") from None
        text = "".join(out).replace("<no value>", "")
        key = "NOTES.txt" if base == "NOTES.txt" else rel
        if text.strip():
            result[key] = text
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rdsiam.testing.helm CHART [-f values.yaml ...] [--namespace NS] [--release NAME]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m rdsiam.testing.helm", description=main.__doc__)
    parser.add_argument("chart")
    parser.add_argument("-f", "--values", action="append", default=[])
    parser.add_argument("-n", "--namespace", default="rdsiam-system")
    parser.add_argument("--release", default="rdsiam")
    args = parser.parse_args(argv)
    rendered = render(args.chart, release=args.release, namespace=args.namespace, values_files=args.values)
    for rel, text in rendered.items():
        if rel != "NOTES.txt":
            sys.stdout.write(f"---\n# Source: {rel}\n{text.strip(chr(10))}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
