"""Secret templates (``spec.target.template``): extra Secret keys rendered from the token and its target.

A template is Jinja2 text, checked node by node before it is compiled: it may only print the variables
(:data:`VARIABLES`), pass them through the filters (:data:`FILTERS`), test and compare them (``if``/``else``,
``==``, ``in``), join them with ``~`` and slice them. No loops, calls, attribute access, assignments,
includes or arithmetic: a template costs at most a few copies of its inputs, and cannot reach files, the
environment or Python objects. It is then compiled by an ``ImmutableSandboxedEnvironment`` (autoescape off,
no loader, no globals, ``StrictUndefined``, a ``finalize`` that refuses None) as a second fence, and
rendered once against sample values, so a spec whose template cannot render is refused when it is parsed
(InvalidSpec), before any token exists.

Every error is a :class:`TemplateError` naming ``spec.target.template.data.KEY`` with a message of its
own: Jinja2's messages may quote the values rendered, the token among them.

Operator-only: the in-pod library never imports jinja2 (an import-linter contract).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rdsiam.operator.target import Target, build_dsn, build_jdbc_url, quote_all

FIELD = "spec.target.template.data"
# The names a template may use, in the order the README lists them.
VARIABLES = ("username", "password", "host", "port", "dbname", "engine", "region", "dsn", "jdbcUrl", "expiresAt")
MAX_KEYS = 64
MAX_SOURCE = 8192  # characters of one template (the CRD's maxLength)
MAX_VALUE = 64 * 1024  # bytes of one rendered value
MAX_TOTAL = 256 * 1024  # bytes of all rendered values (a Secret holds at most 1 MiB)
# Kubernetes' Secret key rule (IsConfigMapKey): these characters, at most 253, not "." or "..".
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


class TemplateError(ValueError):
    """A template that does not render. ``field`` is ``spec.target.template.data.KEY``; ``message`` never
    holds a rendered value."""

    def __init__(self, key: str, message: str) -> None:
        field = f"{FIELD}.{key}" if _SECRET_KEY.fullmatch(key) else f"{FIELD}[{key[:63]!r}]"
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def urlquote(value: object) -> str:
    """Percent-encode everything but RFC 3986's unreserved characters: safe in a URL's userinfo, path and
    query (libpq, psycopg, SQLAlchemy and urllib decode it back exactly)."""
    return quote_all(str(value))


# What MariaDB's and MySQL's option-file reader (mysys ``my_default.c``) undoes inside a quoted value.
_CNF_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}
_CNF_SPECIAL = re.compile(r'[\\"\n\r\t\b]')


def cnfquote(value: object) -> str:
    """A double-quoted option-file value (``my.cnf``, ``.my.cnf``): quotes keep ``#``, ``'`` and spaces at
    either end, and backslash escapes the rest (``my_print_defaults`` reads it back exactly)."""
    return '"' + _CNF_SPECIAL.sub(lambda m: _CNF_ESCAPES[m.group()], str(value)) + '"'


def jsonquote(value: object) -> str:
    """A JSON value: a string quoted and escaped (ASCII only), a number as is."""
    return json.dumps(value)


FILTERS: dict[str, Callable[..., str]] = {"urlquote": urlquote, "cnfquote": cnfquote, "json": jsonquote}
# Jinja2's own filters kept: none of them grows its input.
_BUILTIN_FILTERS = ("lower", "upper", "trim", "string")
_TESTS = ("defined", "none", "string", "number", "eq", "ne", "in", "lower", "upper")
_ALLOWED = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const, nodes.Filter, nodes.Test,
            nodes.If, nodes.CondExpr, nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not, nodes.Concat,
            nodes.Getitem, nodes.Slice, nodes.Tuple, nodes.List, nodes.Keyword)
# What a refused node is called in the message.
_NAMES = {nodes.For: "a for loop", nodes.Getattr: "attribute access ('.')", nodes.Call: "a call",
          nodes.Macro: "a macro", nodes.Assign: "an assignment", nodes.AssignBlock: "an assignment",
          nodes.Include: "an include", nodes.Import: "an import", nodes.FromImport: "an import",
          nodes.Extends: "extends", nodes.Block: "a block", nodes.FilterBlock: "a filter block",
          nodes.With: "a with block", nodes.Dict: "a dict", nodes.CallBlock: "a call block",
          nodes.BinExpr: "arithmetic (use ~ to join text)", nodes.UnaryExpr: "arithmetic"}


_WHY = {"UndefinedError": "an index or key it uses has no value",
        "SecurityError": "it reaches for something the sandbox refuses (an attribute of a value)"}


class _Sandbox(ImmutableSandboxedEnvironment):
    """No attribute of any value is reachable (``password.upper`` is refused, not called)."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return False


class _NoneValue(Exception):
    pass


def _finalize(value: Any) -> Any:
    if value is None:
        raise _NoneValue
    return value


_ENV = _Sandbox(autoescape=False, undefined=StrictUndefined, finalize=_finalize, keep_trailing_newline=True,
                auto_reload=False, cache_size=0)
_ENV.globals.clear()
_ENV.filters = {**{name: _ENV.filters[name] for name in _BUILTIN_FILTERS}, **FILTERS}
_ENV.tests = {name: _ENV.tests[name] for name in _TESTS}


@dataclasses.dataclass(frozen=True, slots=True)
class Templates:
    """A spec's templates, compiled; ``replace``: only these keys in the Secret (mergePolicy Replace)."""

    compiled: tuple[tuple[str, Any], ...]  # (key, jinja2.Template)
    replace: bool

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(key for key, _ in self.compiled)

    def render(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Every key rendered; :class:`TemplateError` naming the first that fails, never quoting a value."""
        out: dict[str, str] = {}
        total = 0
        for key, template in self.compiled:
            try:
                text = template.render(values)
            except _NoneValue:
                raise TemplateError(key, "an expression in it renders nothing (None)") from None
            except Exception as exc:  # Jinja2's message may quote the values: our own words, by its type
                raise TemplateError(key, f"cannot be rendered: {_WHY.get(type(exc).__name__, type(exc).__name__)}"
                                    ) from None
            size = len(text.encode())
            if size > MAX_VALUE:
                raise TemplateError(key, f"renders to {size} bytes; a key may hold at most {MAX_VALUE}")
            total += size
            if total > MAX_TOTAL:
                raise TemplateError(key, f"the templates render to more than {MAX_TOTAL} bytes in all")
            out[key] = text
        return out


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot name a Secret key, or None."""
    if not key or len(key) > 253 or not _SECRET_KEY.fullmatch(key) or key in (".", ".."):
        return ("is not a valid Secret key: 1-253 letters, digits, '-', '_' or '.' (not '.' or '..'); "
                "kubectl and volume mounts need it as a file name")
    return None


def _refusal(node: nodes.Node) -> str | None:
    """Why one node of a template's syntax tree is not allowed, or None."""
    if isinstance(node, nodes.Name):
        if node.ctx != "load" or node.name not in VARIABLES:
            return f"uses unknown name {node.name[:40]!r}; the variables are {', '.join(VARIABLES)}"
    elif isinstance(node, nodes.Filter):
        if node.name not in _ENV.filters:
            return (f"uses unknown filter {node.name[:40]!r}; the filters are "
                    f"{', '.join(sorted(_ENV.filters))}")
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            return "passes arguments with * or **"
    elif isinstance(node, nodes.Test):
        if node.name not in _ENV.tests:
            return f"uses unknown test {node.name[:40]!r}; the tests are {', '.join(sorted(_ENV.tests))}"
    elif not isinstance(node, _ALLOWED):
        what = next((name for kind, name in _NAMES.items() if isinstance(node, kind)), type(node).__name__)
        return (f"uses {what}, which Secret templates do not allow (only variables, filters, if/else, "
                "comparisons, ~ to join and [] to slice)")
    return None


def sample_values() -> dict[str, Any]:
    """Values shaped like a real token's (length, every character a SigV4 token holds), for the render
    that checks a template when the spec is parsed."""
    signature = "0123456789abcdef" * 4
    token = ("db.cluster-abc123.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user"
             "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE%2F20260101%2Fus-east-1%2Frds-db"
             "%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
             "&X-Amz-Security-Token=" + "IQoJb3JpZ2luX2VjE+/=" * 60 + "&X-Amz-Signature=" + signature)
    target = Target("postgres", "db.cluster-abc123.us-east-1.rds.amazonaws.com", 5432, "app", "app_user",
                    "us-east-1", "db.cluster-abc123.us-east-1.rds.amazonaws.com", "postgresql",
                    (("sslmode", "verify-full"),))
    return variables(target, token, "2026-01-01T00:15:00Z")


def variables(target: Target, token: str, expires_at: str, dsn: str | None = None) -> dict[str, Any]:
    """What a template sees. ``dsn``: the Secret's, when already built."""
    return {
        "username": target.username, "password": token, "host": target.host, "port": target.port,
        "dbname": target.database, "engine": target.engine, "region": target.region,
        "dsn": dsn if dsn is not None else build_dsn(target, token), "jdbcUrl": build_jdbc_url(target, token),
        "expiresAt": expires_at,
    }


@functools.lru_cache(maxsize=1024)  # specs are parsed on every change and after each restart; most share templates
def compile_templates(data: tuple[tuple[str, str], ...], replace: bool) -> Templates:
    """Check, compile and sample-render a spec's templates; :class:`TemplateError` for the first bad key."""
    if len(data) > MAX_KEYS:
        raise TemplateError(data[MAX_KEYS][0], f"is one key too many: at most {MAX_KEYS} templates")
    compiled = []
    for key, source in data:
        if problem := key_problem(key):
            raise TemplateError(key, problem)
        if len(source) > MAX_SOURCE:
            raise TemplateError(key, f"is {len(source)} characters long; a template may have at most {MAX_SOURCE}")
        try:
            tree = _ENV.parse(source)
        except TemplateSyntaxError as exc:  # about the template's own text, which is no secret
            raise TemplateError(key, f"is not a valid template: {(exc.message or 'syntax error')[:200]} "
                                     f"(line {exc.lineno})") from None
        for node in tree.find_all(nodes.Node):
            if problem := _refusal(node):
                raise TemplateError(key, problem)
        try:
            template = _ENV.from_string(tree)
        except Exception as exc:
            raise TemplateError(key, f"is not a valid template ({type(exc).__name__})") from None
        compiled.append((key, template))
    templates = Templates(tuple(compiled), replace)
    templates.render(sample_values())
    return templates
