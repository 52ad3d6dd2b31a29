"""Connection target: parse a DSN and/or explicit fields, infer engine and region, rebuild a DSN or JDBC URL.

Pure functions, standard library only (and the in-pod library's reading of MySQL TLS options). Any
password in the input DSN is dropped on parsing and never copied anywhere (not into the result, not into
an error message).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import quote, unquote, urlsplit

from rdsiam._mysqlwire import tls_settings  # the in-pod library's reading of a MySQL DSN's TLS options

POSTGRES = "postgres"
MYSQL = "mysql"
DEFAULT_PORTS = {POSTGRES: 5432, MYSQL: 3306}
_SCHEMES = {
    "postgresql": POSTGRES, "postgres": POSTGRES,
    "mysql": MYSQL, "mariadb": MYSQL,
}
# RDS endpoints: instance `db.abc123.us-east-1.rds.amazonaws.com`, clusters `x.cluster-abc.REGION...`,
# `cluster-ro-`, `cluster-custom-`, proxies `p.proxy-abc.REGION...` (and proxy endpoints
# `e.endpoint.proxy-abc.REGION...`), China `....rds.amazonaws.com.cn`, GovCloud `us-gov-west-1`.
# DNS labels of letters, digits and '-' (not first or last), 1-63 each, matched lower-cased: without
# look-arounds and IGNORECASE a quarter fewer instructions, on the way every spec goes.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+")
_RDS_LABELS = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")  # lower-cased; what comes before the region


class TargetError(ValueError):
    """A spec field that cannot describe a connection target. ``field`` is the spec path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the client connects, and what the token is signed for."""

    engine: str
    host: str
    port: int
    database: str
    username: str
    region: str
    signing_host: str  # the RDS endpoint the token is signed for (== host unless signingHost/CNAME)
    scheme: str  # URL scheme used when rebuilding the DSN
    options: tuple[tuple[str, str], ...] = ()  # query options kept from the DSN (sslmode, ...)

    @property
    def signing_endpoint(self) -> str:
        return f"{self.signing_host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class ParsedDsn:
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    username: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    had_password: bool = False


_NO_DSN = ParsedDsn()


def region_of(host: str) -> str | None:
    """The AWS region of an RDS endpoint hostname (``LABELS.REGION.rds.amazonaws.com``, ``.cn`` too, any
    case, one trailing dot), or None when it is not one. Taken apart rather than one backtracking regular
    expression (half the instructions; every spec is checked): tests/property/test_target_properties.py
    holds that expression and checks both agree."""
    h = host.strip()
    if not h.isascii():
        return None
    if h.endswith("."):
        h = h[:-1]
    lower = h.lower()
    if lower.endswith(".rds.amazonaws.com"):
        stem = lower[:-len(".rds.amazonaws.com")]
    elif lower.endswith(".rds.amazonaws.com.cn"):
        stem = lower[:-len(".rds.amazonaws.com.cn")]
    else:
        return None
    labels, dot, region = stem.rpartition(".")
    if not dot or not _REGION.fullmatch(region) or not _RDS_LABELS.fullmatch(labels):
        return None
    return region


def is_rds_hostname(host: str) -> bool:
    return region_of(host) is not None


def check_hostname(field: str, host: str) -> str:
    """Validate a hostname or IP literal; return it normalised (no brackets, no trailing dot kept)."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h:
        raise TargetError(field, "must not be empty")
    if ":" in h or h.replace(".", "").isdigit():  # only these can be IP literals (parsing raises otherwise)
        try:
            ipaddress.ip_address(h)
            return h
        except ValueError:
            pass
    name = h[:-1] if h.endswith(".") else h
    if len(name) > 253:
        raise TargetError(field, f"hostname is {len(name)} characters long; DNS allows at most 253")
    lower = name.lower()
    if not (name.isascii() and _HOSTNAME.fullmatch(lower)):
        raise TargetError(
            field, "is not a valid DNS hostname or IP address "
            "(labels of letters, digits and '-', 1-63 characters each)")
    return lower


# A URL starts with a scheme (RFC 3986: a letter, then letters, digits, "+", "-", "."; kept short) and "://".
# Anything else with "://" in it is a keyword string whose value has one, say "password=a://b": parsed as
# keywords (the password dropped), never named back in an error.
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}://")


def parse_dsn(dsn: str) -> ParsedDsn:
    """Parse a URL (``postgresql://``, ``postgres://``, ``mysql://``) or libpq keyword DSN.

    The password, if any, is recognised only to be dropped.
    """
    text = dsn.strip()
    if not text:
        raise TargetError("spec.dsn", "is empty")
    if _URL_START.match(text):
        return _parse_url(text)
    if "=" in text:
        return _parse_keywords(text)
    raise TargetError("spec.dsn", "is neither a URL (postgresql://, mysql://) nor a libpq 'key=value' string")


def _parse_url(text: str) -> ParsedDsn:
    raw_scheme = text.split("://", 1)[0].lower()  # a scheme's characters only (_URL_START): safe to name
    base = raw_scheme.split("+", 1)[0]
    if base not in _SCHEMES:
        raise TargetError(
            "spec.dsn", f"has unsupported scheme {raw_scheme!r}; use postgresql://, postgres:// or mysql://")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        # Do not echo the DSN: it may carry a password.
        raise TargetError("spec.dsn", f"cannot be parsed as a URL ({_safe_reason(exc)})") from None
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "," in netloc:
        raise TargetError("spec.dsn", "lists several hosts; give exactly one RDS endpoint")
    host = parts.hostname
    user = _unquote(parts.username) if parts.username else None
    database = _unquote(parts.path[1:]) if parts.path and parts.path != "/" else None
    options: list[tuple[str, str]] = []
    for item in parts.query.split("&") if parts.query else []:
        if not item:
            continue
        key, _, value = item.partition("=")
        key, value = _unquote(key.replace("+", " ")), _unquote(value.replace("+", " "))
        if key in ("password", "passwd"):
            continue  # dropped like the userinfo password
        # libpq lets these query parameters override the URL's parts: keep one value (the URL's first),
        # never both, or the Secret's DSN would log in as another user (or database, host) than signed for.
        if key in ("user", "username"):
            user = user or value or None
            continue
        if key == "dbname":
            database = database or value or None
            continue
        if key == "host":
            host = host or value or None
            continue
        if key == "port":
            if port is None and value:
                if not (value.isascii() and value.isdigit()):
                    raise TargetError("spec.dsn", "has a non-numeric port")
                port = int(value)
            continue
        options.append((key, value))
    if host and "," in host:
        raise TargetError("spec.dsn", "lists several hosts; give exactly one RDS endpoint")
    return ParsedDsn(
        scheme=raw_scheme, host=host, port=port, database=database or None, username=user or None,
        options=tuple(options), had_password=parts.password is not None)


def _unquote(text: str) -> str:
    """Percent-decoding that refuses bytes which are not UTF-8 (``unquote`` would turn them into U+FFFD)."""
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise TargetError("spec.dsn", "has percent-encoded bytes that are not UTF-8 text") from None


_KW_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")


def _parse_keywords(text: str) -> ParsedDsn:
    pos, values = 0, {}
    order: list[str] = []
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _KW_TOKEN.match(text, pos)
        if not m:
            raise TargetError("spec.dsn", f"has a malformed 'key=value' pair near character {pos}")
        key, raw = m.group(1), m.group(2)
        if raw.startswith("'"):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        values[key] = raw
        if key not in order:
            order.append(key)
        pos = m.end()
    port: int | None = None
    if values.get("port"):
        try:
            port = int(values["port"])
        except ValueError:
            raise TargetError("spec.dsn", "has a non-numeric port") from None
    host = values.get("host") or None
    if host and "," in host:
        raise TargetError("spec.dsn", "lists several hosts; give exactly one RDS endpoint")
    skip = {"host", "port", "dbname", "user", "password"}
    return ParsedDsn(
        scheme=None, host=host, port=port, database=values.get("dbname") or None,
        username=values.get("user") or None,
        options=tuple((k, values[k]) for k in order if k not in skip),
        had_password="password" in values)


def _has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (below U+0020): a newline splits a pgpass line."""
    return any(ord(c) < 32 for c in text)


def _safe_reason(exc: Exception) -> str:
    text = str(exc)
    return "invalid port" if "port" in text.lower() else "malformed URL"


def resolve(
    *,
    dsn: str | None = None,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    username: str | None = None,
    engine: str | None = None,
    region: str | None = None,
    signing_host: str | None = None,
) -> Target:
    """Combine DSN and explicit fields (explicit win) into a Target, or raise TargetError."""
    parsed = parse_dsn(dsn) if dsn else _NO_DSN
    host_value = host or parsed.host
    if not host_value:
        raise TargetError("spec.host", "is required (or give spec.dsn with a host)")
    host_field = "spec.host" if host else "spec.dsn"
    final_host = check_hostname(host_field, host_value)

    if engine:
        final_engine = engine
    elif parsed.scheme:
        final_engine = _SCHEMES[parsed.scheme.split("+", 1)[0]]
    elif (port or parsed.port) == DEFAULT_PORTS[MYSQL]:
        final_engine = MYSQL
    else:
        final_engine = POSTGRES
    if final_engine not in DEFAULT_PORTS:
        raise TargetError("spec.engine", f"must be one of {sorted(DEFAULT_PORTS)}, not {final_engine!r}")

    final_port = port or parsed.port or DEFAULT_PORTS[final_engine]
    if not 1 <= final_port <= 65535:
        raise TargetError("spec.port" if port else "spec.dsn", f"port {final_port} is outside 1-65535")

    final_user = username or parsed.username
    if not final_user:
        raise TargetError("spec.username", "is required (or give spec.dsn with a user)")
    if len(final_user.encode()) > 63 and final_engine == POSTGRES:
        raise TargetError("spec.username", "is longer than PostgreSQL's 63-byte identifier limit")
    if _has_control(final_user):
        raise TargetError("spec.username", "contains control characters")

    final_db = database or parsed.database or (final_user if final_engine == POSTGRES else "")
    if _has_control(final_db):  # a newline would split the pgpass line in two
        raise TargetError("spec.database" if database else "spec.dsn", "has a database name with control characters")
    if any(_has_control(value) for _, value in parsed.options):  # hostaddr gets a pgpass line too
        raise TargetError("spec.dsn", "has an option value with control characters")

    sign_host = check_hostname("spec.signingHost", signing_host) if signing_host else final_host
    final_region = (region or region_of(sign_host) or "").lower()
    if not final_region:
        what = "spec.signingHost" if signing_host else host_field
        raise TargetError(
            "spec.region" if not signing_host else what,
            f"cannot be inferred: {sign_host!r} is not an RDS endpoint hostname "
            "(NAME.ID.REGION.rds.amazonaws.com). IAM tokens must be signed for the real RDS endpoint: "
            "if this host is a CNAME, Route 53 alias or tunnel in front of RDS, set spec.signingHost "
            "to the RDS endpoint (and keep spec.host for connecting), or set spec.region explicitly "
            "when you know the token is accepted for this name.")
    if not _REGION.fullmatch(final_region):
        raise TargetError("spec.region", f"{final_region!r} does not look like an AWS region (e.g. us-east-1)")

    scheme = parsed.scheme if parsed.scheme and _SCHEMES.get(parsed.scheme.split("+", 1)[0]) == final_engine \
        else ("postgresql" if final_engine == POSTGRES else "mysql")
    return Target(
        engine=final_engine, host=final_host, port=final_port, database=final_db, username=final_user,
        region=final_region, signing_host=sign_host, scheme=scheme, options=parsed.options)


# ``quote(s, safe="")``, faster for the long ASCII text a token is (~1.5 KB that ``quote`` walks byte by
# byte in Python): one str.replace per distinct reserved character present, ``%`` first.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote_all(text: str) -> str:
    """Percent-encode everything but RFC 3986's unreserved characters (the same as ``quote(text, safe="")``)."""
    if not text.isascii():
        return quote(text, safe="")
    reserved = set(text).difference(_UNRESERVED)
    if "%" in reserved:
        text = text.replace("%", "%25")
        reserved.discard("%")
    for char in reserved:
        text = text.replace(char, f"%{ord(char):02X}")
    return text


def build_dsn(target: Target, token: str) -> str:
    """A URL DSN with the token as password, every component percent-encoded.

    libpq, psycopg, SQLAlchemy's ``make_url`` and PyMySQL (through SQLAlchemy) decode it back to
    exactly the token, user and database.
    """
    host = f"[{target.host}]" if ":" in target.host else target.host
    userinfo = f"{quote_all(target.username)}:{quote_all(token)}"
    path = f"/{quote_all(target.database)}" if target.database else ""
    query = "&".join(f"{quote_all(k)}={quote_all(v)}" for k, v in target.options)
    return f"{target.scheme}://{userinfo}@{host}:{target.port}{path}" + (f"?{query}" if query else "")


# The DSN's libpq options pgjdbc understands, by pgjdbc's name for them (hostaddr and the rest have none).
_PGJDBC_OPTIONS = {"sslmode": "sslmode", "sslrootcert": "sslrootcert", "sslcert": "sslcert", "sslkey": "sslkey",
                   "application_name": "ApplicationName", "connect_timeout": "connectTimeout", "options": "options"}


def build_jdbc_url(target: Target, token: str) -> str:
    """A JDBC URL with user and token as query parameters: pgjdbc's ``jdbc:postgresql://`` (with the DSN's
    TLS options pgjdbc knows) or MySQL Connector/J's ``jdbc:mysql://`` (``sslMode`` from the DSN's
    ``ssl-mode``/``sslmode``, as ``verify`` reads it). Everything outside RFC 3986's unreserved characters
    is percent-encoded: both drivers decode parameters with ``URLDecoder`` (pgjdbc turns a bare ``+`` into
    a space), and decode back exactly the token, user and database
    (tests/integration/test_template_consumers.py runs both drivers' own parsers)."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    params = [("user", target.username), ("password", token)]
    if target.engine == POSTGRES:
        params += [(_PGJDBC_OPTIONS[k], v) for k, v in target.options if k in _PGJDBC_OPTIONS]
        scheme = "postgresql"
    else:
        params.append(("sslMode", tls_settings(dict(target.options))[0]))
        scheme = "mysql"
    query = "&".join(f"{k}={quote_all(v)}" for k, v in params)
    return f"jdbc:{scheme}://{host}:{target.port}/{quote_all(target.database)}?{query}"


def escape_pgpass(value: str) -> str:
    """Escape one field of a libpq password file line (``:`` and ``\\``)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def split_pgpass(line: str) -> list[str]:
    """The five fields of one password-file line, unescaped as libpq reads them (``escape_pgpass`` undone;
    the last field, the password, takes the rest of the line)."""
    fields: list[str] = []
    current, escaped = "", False
    for ch in line:
        if escaped:
            current, escaped = current + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == ":" and len(fields) < 4:
            fields.append(current)
            current = ""
        else:
            current += ch
    return [*fields, current]


def pgpass_line(target: Target, token: str, hosts: Sequence[str] = ()) -> str:
    """``host:port:dbname:user:token`` lines for libpq's password file (one per host the client may dial).

    libpq matches the first field against the ``host`` the client gives (the host it dials, so the
    CNAME, not the ``signingHost``); libpq 17+ matches a client that gives only ``hostaddr`` against
    that address, so the DSN's ``hostaddr`` gets a line too. (libpq 15 looks up ``localhost`` then; no
    such line is written: it would hand the token to any local server.)
    """
    lines = []
    hostaddr = dict(target.options).get("hostaddr")
    for host in (target.host, *hosts, *((hostaddr,) if hostaddr else ())):
        fields = (host, str(target.port), target.database or "*", target.username, token)
        line = ":".join(escape_pgpass(f) if f != "*" else f for f in fields)
        if line not in lines:
            lines.append(line)
    return "\n".join(lines) + "\n"
