"""An independent verifier of Amazon RDS IAM authentication tokens.

An RDS IAM token is a SigV4 presigned URL without its scheme::

    HOST:PORT/?Action=connect&DBUser=U&X-Amz-Algorithm=AWS4-HMAC-SHA256
        &X-Amz-Credential=AKID/YYYYMMDD/REGION/rds-db/aws4_request&X-Amz-Date=YYYYMMDDTHHMMSSZ
        &X-Amz-Expires=900&X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]&X-Amz-Signature=HEX

This module re-derives the signature from the AWS Signature Version 4 specification with
``hashlib``/``hmac`` only; it does not use botocore's signer, so a bug shared by the operator's
signing path and a botocore-based checker cannot hide. The canonical request is::

    GET
    /
    <query parameters except X-Amz-Signature, RFC 3986-encoded, sorted>
    host:<lower-case host>[:<port> unless 443]
    (empty line)
    host
    <hex SHA-256 of the empty payload>

which is what botocore, the Go and Java SDKs sign for ``generate_db_auth_token``.

``verify_token`` returns a :class:`Verdict` with a precise internal :class:`Reason`. A real RDS
instance tells the client only ``PAM authentication failed for user "U"``; the reason exists for
test assertions and diagnosis. No string produced here ever contains the signature, the session
token or the secret key.

Known gaps (modelling choices, not AWS-documented facts):

- A token dated in the future is rejected when it is more than ``max_skew`` (default 5 minutes)
  ahead of the verifier's clock; AWS's exact tolerance for RDS is not documented.
- The expiry boundary is exclusive: the token is dead at ``X-Amz-Date + X-Amz-Expires``.
- IAM policy evaluation (``rds-db:connect`` on ``dbuser:<resource id>/<user>``) is not modelled:
  any credential the lookup knows may connect as any user it signed for.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol
from urllib.parse import quote, unquote

__all__ = [
    "Credential",
    "Reason",
    "Verdict",
    "canonical_request",
    "parse_token",
    "sign_token",
    "verify_token",
]

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "rds-db"
MAX_EXPIRES = 900
EMPTY_PAYLOAD_SHA256 = hashlib.sha256(b"").hexdigest()
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_SIGNATURE_RE = re.compile(r"^[0-9a-f]{64}$")


class Reason(StrEnum):
    """Why a token was accepted or refused (internal; RDS itself is opaque)."""

    OK = "ok"
    MALFORMED = "malformed"  # not a HOST:PORT/?query presigned URL, or a parameter is missing/invalid
    WRONG_ACTION = "wrong_action"  # Action is not "connect"
    WRONG_ALGORITHM = "wrong_algorithm"  # X-Amz-Algorithm is not AWS4-HMAC-SHA256
    WRONG_SIGNED_HEADERS = "wrong_signed_headers"  # X-Amz-SignedHeaders is not "host"
    WRONG_USER = "wrong_user"  # DBUser differs from the user in the startup message
    WRONG_HOST = "wrong_host"  # signed for another hostname (CNAME, tunnel, other instance)
    WRONG_PORT = "wrong_port"  # signed for another port
    WRONG_REGION = "wrong_region"  # credential scope names another region
    WRONG_SERVICE = "wrong_service"  # credential scope service is not rds-db
    EXPIRES_TOO_LONG = "expires_too_long"  # X-Amz-Expires above 900 (or not positive)
    NOT_YET_VALID = "not_yet_valid"  # X-Amz-Date lies in the future beyond the allowed skew
    EXPIRED = "expired"  # X-Amz-Date + X-Amz-Expires has passed
    UNKNOWN_ACCESS_KEY = "unknown_access_key"  # no credential was issued with this access key id
    BAD_SIGNATURE = "bad_signature"  # signature does not match the issued secret key
    MISSING_SESSION_TOKEN = "missing_session_token"  # temporary credentials, no X-Amz-Security-Token
    SESSION_TOKEN_MISMATCH = "session_token_mismatch"  # session token is not the one issued
    UNEXPECTED_SESSION_TOKEN = "unexpected_session_token"  # long-term key, but a session token was sent
    CREDENTIALS_EXPIRED = "credentials_expired"  # the temporary credentials that signed it have expired


class Credential(Protocol):
    """What the verifier needs to know about an issued AWS credential (see ``sts.Issued``)."""

    @property
    def secret_access_key(self) -> str: ...

    @property
    def session_token(self) -> str | None: ...

    @property
    def expiration(self) -> datetime | None: ...

    @property
    def arn(self) -> str: ...


Lookup = Callable[[str], Credential | None]


@dataclass(frozen=True)
class ParsedToken:
    """The non-secret parts of a token, plus (privately) what is needed to check the signature."""

    host: str
    port: int
    params: dict[str, str]  # decoded query parameters, X-Amz-Signature included

    def __repr__(self) -> str:  # never show the signature or the session token
        safe = {k: v for k, v in self.params.items() if k not in _SECRET_PARAMS}
        return f"ParsedToken(host={self.host!r}, port={self.port}, params={safe!r})"


_SECRET_PARAMS = frozenset({"X-Amz-Signature", "X-Amz-Security-Token"})


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`verify_token`. Truthy when the token is accepted.

    ``detail`` is a human sentence for diagnosis; it never contains secret material.
    ``expires_at`` is when the token stops being accepted: the earlier of
    ``X-Amz-Date + X-Amz-Expires`` and the expiry of the signing credentials (when known).
    """

    ok: bool
    reason: Reason
    detail: str
    access_key_id: str | None = None
    db_user: str | None = None
    region: str | None = None
    signed_host: str | None = None
    signed_port: int | None = None
    signed_at: datetime | None = None
    expires_at: datetime | None = None
    principal_arn: str | None = None

    def __bool__(self) -> bool:
        return self.ok


class _Malformed(ValueError):
    pass


def _rfc3986(value: str) -> str:
    return quote(value, safe="-_.~")


def parse_token(token: str) -> ParsedToken:
    """Split a token into host, port and decoded query parameters.

    Raises ``ValueError`` (with a message free of secrets) when it is not a presigned URL of the
    expected shape, or a parameter appears twice.
    """
    if "://" in token:
        raise _Malformed("token carries a URL scheme; RDS tokens start with HOST:PORT/")
    authority, sep, rest = token.partition("/")
    if not sep or not rest.startswith("?"):
        raise _Malformed("token is not of the form HOST:PORT/?QUERY")
    host, colon, port_text = authority.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise _Malformed("token does not start with HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise _Malformed("token port is out of range")
    params: dict[str, str] = {}
    for pair in rest[1:].split("&"):
        if not pair:
            raise _Malformed("empty query parameter in token")
        key, _, value = pair.partition("=")
        key, value = unquote(key, errors="strict"), unquote(value, errors="strict")
        if key in params:
            raise _Malformed(f"query parameter {key} appears twice in token")
        params[key] = value
    return ParsedToken(host=host, port=port, params=params)


def canonical_host(host: str, port: int) -> str:
    """The value of the signed ``host`` header: lower-case, with the port unless it is 443."""
    host = host.lower()
    return host if port == 443 else f"{host}:{port}"


def canonical_request(params: dict[str, str], host_header: str) -> str:
    """The SigV4 canonical request of a presigned ``GET /`` with these query parameters."""
    pairs = sorted(
        (_rfc3986(key), _rfc3986(value)) for key, value in params.items() if key != "X-Amz-Signature"
    )
    query = "&".join(f"{key}={value}" for key, value in pairs)
    return "\n".join(["GET", "/", query, f"host:{host_header}", "", "host", EMPTY_PAYLOAD_SHA256])


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _signature(secret_key: str, amz_date: str, region: str, service: str, canonical: str) -> str:
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    k_date = _hmac(f"AWS4{secret_key}".encode(), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    k_signing = _hmac(k_service, "aws4_request")
    return hmac.new(k_signing, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def sign_token(
    *,
    host: str,
    port: int,
    user: str,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None = None,
    now: datetime | None = None,
    expires: int = MAX_EXPIRES,
    service: str = SERVICE,
) -> str:
    """Mint a token from the specification (for tests that need tokens botocore refuses to make,
    e.g. ``X-Amz-Expires`` above 900 or a foreign service name). Parameter order follows botocore."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = now.strftime(_DATE_FORMAT)
    params = {
        "Action": "connect",
        "DBUser": user,
        "X-Amz-Algorithm": ALGORITHM,
        "X-Amz-Credential": f"{access_key_id}/{amz_date[:8]}/{region}/{service}/aws4_request",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": "host",
    }
    if session_token is not None:
        params["X-Amz-Security-Token"] = session_token
    canonical = canonical_request(params, canonical_host(host, port))
    params["X-Amz-Signature"] = _signature(secret_access_key, amz_date, region, service, canonical)
    query = "&".join(f"{_rfc3986(k)}={_rfc3986(v)}" for k, v in params.items())
    return f"{host}:{port}/?{query}"


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def verify_token(
    token: str,
    *,
    user: str,
    host: str,
    port: int,
    region: str,
    lookup: Lookup,
    now: datetime | None = None,
    max_skew: timedelta = timedelta(minutes=5),
) -> Verdict:
    """Check an RDS IAM token the way the RDS endpoint ``host:port`` in ``region`` would.

    ``user`` is the user named in the PostgreSQL/MySQL startup message; ``lookup`` maps an access
    key id to the credential AWS issued for it (``None`` when unknown); ``now`` defaults to the
    current UTC time (inject it to test expiry).
    """
    now = _as_utc(now or datetime.now(UTC))

    def refuse(reason: Reason, detail: str, **known: object) -> Verdict:
        return Verdict(ok=False, reason=reason, detail=detail, **known)  # type: ignore[arg-type]

    try:
        parsed = parse_token(token)
    except ValueError as exc:  # _Malformed, or unquote(errors="strict") on bad UTF-8
        detail = str(exc) if isinstance(exc, _Malformed) else "token is not valid UTF-8 after decoding"
        return refuse(Reason.MALFORMED, detail)
    p = parsed.params
    required = (
        "Action",
        "DBUser",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    )
    missing = [name for name in required if name not in p]
    if missing:
        return refuse(Reason.MALFORMED, f"token lacks {', '.join(missing)}")
    scope = p["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not scope[0]:
        return refuse(Reason.MALFORMED, "X-Amz-Credential is not AKID/DATE/REGION/SERVICE/aws4_request")
    access_key_id, scope_date, scope_region, scope_service, _ = scope
    amz_date = p["X-Amz-Date"]
    known: dict[str, object] = {
        "access_key_id": access_key_id,
        "db_user": p["DBUser"],
        "region": scope_region,
        "signed_host": parsed.host,
        "signed_port": parsed.port,
    }
    if not _DATE_RE.match(amz_date) or scope_date != amz_date[:8]:
        return refuse(Reason.MALFORMED, "X-Amz-Date is not YYYYMMDDTHHMMSSZ matching the scope", **known)
    try:
        signed_at = datetime.strptime(amz_date, _DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return refuse(Reason.MALFORMED, "X-Amz-Date is not a valid timestamp", **known)
    known["signed_at"] = signed_at
    if not p["X-Amz-Expires"].isdigit():
        return refuse(Reason.MALFORMED, "X-Amz-Expires is not a number of seconds", **known)
    expires = int(p["X-Amz-Expires"])
    token_expiry = signed_at + timedelta(seconds=expires)
    known["expires_at"] = token_expiry
    if not _SIGNATURE_RE.match(p["X-Amz-Signature"]):
        return refuse(Reason.MALFORMED, "X-Amz-Signature is not 64 lower-case hex digits", **known)

    if p["Action"] != "connect":
        return refuse(Reason.WRONG_ACTION, f"Action is {p['Action']!r}, expected 'connect'", **known)
    if p["X-Amz-Algorithm"] != ALGORITHM:
        return refuse(Reason.WRONG_ALGORITHM, f"X-Amz-Algorithm is not {ALGORITHM}", **known)
    if p["X-Amz-SignedHeaders"] != "host":
        return refuse(Reason.WRONG_SIGNED_HEADERS, "X-Amz-SignedHeaders must be exactly 'host'", **known)
    if scope_service != SERVICE:
        return refuse(
            Reason.WRONG_SERVICE, f"signed for service {scope_service!r}, expected {SERVICE!r}", **known
        )
    if p["DBUser"] != user:
        return refuse(
            Reason.WRONG_USER, f"token is for DBUser {p['DBUser']!r}, login is for {user!r}", **known
        )
    if parsed.host.lower() != host.lower():
        return refuse(
            Reason.WRONG_HOST, f"token is signed for host {parsed.host!r}, this endpoint is {host!r}", **known
        )
    if parsed.port != port:
        return refuse(
            Reason.WRONG_PORT,
            f"token is signed for port {parsed.port}, this endpoint listens on {port}",
            **known,
        )
    if scope_region != region:
        return refuse(
            Reason.WRONG_REGION,
            f"token is signed for region {scope_region!r}, endpoint is in {region!r}",
            **known,
        )
    if not 0 < expires <= MAX_EXPIRES:
        return refuse(
            Reason.EXPIRES_TOO_LONG, f"X-Amz-Expires is {expires}, must be 1..{MAX_EXPIRES}", **known
        )
    if signed_at - now > max_skew:
        return refuse(
            Reason.NOT_YET_VALID,
            f"token is dated {signed_at.isoformat()}, ahead of the server clock {now.isoformat()}",
            **known,
        )
    if now >= token_expiry:
        return refuse(
            Reason.EXPIRED,
            f"token expired at {token_expiry.isoformat()}; server clock is {now.isoformat()}",
            **known,
        )

    issued = lookup(access_key_id)
    if issued is None:
        return refuse(
            Reason.UNKNOWN_ACCESS_KEY, f"no credential was issued with access key {access_key_id}", **known
        )
    known["principal_arn"] = issued.arn
    canonical = canonical_request(p, canonical_host(host, port))
    expected = _signature(issued.secret_access_key, amz_date, region, SERVICE, canonical)
    if not hmac.compare_digest(expected, p["X-Amz-Signature"]):
        return refuse(
            Reason.BAD_SIGNATURE,
            "signature does not match the secret key issued for this access key",
            **known,
        )
    sent_session_token = p.get("X-Amz-Security-Token")
    if issued.session_token is not None:
        if sent_session_token is None:
            return refuse(
                Reason.MISSING_SESSION_TOKEN,
                "access key belongs to temporary credentials but the token has no X-Amz-Security-Token",
                **known,
            )
        if not hmac.compare_digest(issued.session_token.encode(), sent_session_token.encode()):
            return refuse(
                Reason.SESSION_TOKEN_MISMATCH,
                "X-Amz-Security-Token is not the one issued with this key",
                **known,
            )
    elif sent_session_token is not None:
        return refuse(
            Reason.UNEXPECTED_SESSION_TOKEN,
            "long-term access key, but the token carries a session token",
            **known,
        )
    if issued.expiration is not None:
        credential_expiry = _as_utc(issued.expiration)
        known["expires_at"] = min(token_expiry, credential_expiry)
        if now >= credential_expiry:
            return refuse(
                Reason.CREDENTIALS_EXPIRED,
                f"the credentials that signed the token expired at {credential_expiry.isoformat()}",
                **known,
            )
    return Verdict(ok=True, reason=Reason.OK, detail="token accepted", **known)  # type: ignore[arg-type]
