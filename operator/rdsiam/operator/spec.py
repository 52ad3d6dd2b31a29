"""The ``RdsIamCredential`` spec: one pydantic model, the source of the CRD schema and of validation.

``parse_spec`` turns a raw ``spec`` dict into a :class:`CredentialSpec` or raises :class:`SpecError`
whose message names the field path (``spec.target.name: ...``) and never echoes input values
(a DSN may carry a password).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rdsiam.operator import template

GROUP = "rdsiam.io"
VERSION = "v1alpha1"
KIND = "RdsIamCredential"
PLURAL = "rdsiamcredentials"
SINGULAR = "rdsiamcredential"
SHORT_NAMES = ["rdsiam"]
CATEGORIES = ["rdsiam"]

TOKEN_LIFETIME = 900  # seconds; RDS IAM tokens cannot be extended
MIN_REFRESH = 60
MAX_REFRESH = 840
DEFAULT_REFRESH = "10m"

_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ROLE_ARN = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$"


class SpecError(ValueError):
    """An invalid spec. ``field`` is the path of the first offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@functools.lru_cache(maxsize=256)  # a handful of distinct intervals; each spec asks twice (bounds, seconds)
def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``10m``, ``90s``, ``1m30s``)."""
    if not _DURATION.match(text):
        raise ValueError("must be a duration like 10m, 90s or 1m30s")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


_KEY_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
ANNOTATIONS_LIMIT = 256 * 1024 - 2048  # the API server's limit, less room for the operator's own annotations


def _key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label/annotation key (Kubernetes' qualified name), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not re.fullmatch(DNS_SUBDOMAIN.strip("^$"), prefix)):
        return "its prefix must be a DNS subdomain (lower-case letters, digits, '-' and '.')"
    if not name or len(name) > 63 or not _KEY_NAME.fullmatch(name):
        return "its name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    return None


class TemplateSpec(_Model):
    """Extra Secret keys rendered from the token and its target (``rdsiam.operator.template``)."""

    merge_policy: Literal["Merge", "Replace"] = Field(
        default="Merge", alias="mergePolicy",
        description="Merge: the standard keys stay and these are added (a template may not reuse a standard "
        "key's name); Replace: the Secret holds only these keys (freshness is kept in annotations).")
    data: dict[str, str] = Field(
        default_factory=dict, max_length=template.MAX_KEYS,
        json_schema_extra={"additionalProperties": {"type": "string", "maxLength": template.MAX_SOURCE}},
        description="Secret key -> Jinja2 template (sandboxed; no loops, calls or attribute access). Variables: "
        f"{', '.join(template.VARIABLES)}. Filters: urlquote (URL userinfo/query), cnfquote (MySQL option "
        "file value), json, lower, upper, trim, string.")

    @functools.cached_property
    def compiled(self) -> template.Templates:
        """The templates compiled (cached across specs); TemplateError when one does not render."""
        return template.compile_templates(tuple(self.data.items()), self.merge_policy == "Replace")


class TargetSpec(_Model):
    """The Secret the operator writes."""

    name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="Secret name; default: the resource's name.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels copied onto the Secret.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations copied onto the Secret.")
    template: TemplateSpec | None = Field(
        default=None, description="Extra keys rendered into the Secret from the token and target.")

    # The API server would refuse the Secret for ever: say so once, naming the field (InvalidSpec).
    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if problem := _key_problem(key):
                raise ValueError(f"label key {key[:63]!r} is not valid: {problem}")
            if len(text) > 63 or not _LABEL_VALUE.fullmatch(text):
                raise ValueError(f"the value of label {key!r} is not valid: at most 63 letters, digits, '-', '_' or "
                                 "'.', starting and ending with a letter or digit")
        return value

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if problem := _key_problem(key.lower()):
                raise ValueError(f"annotation key {key[:63]!r} is not valid: {problem}")
        if sum(len(k) + len(v.encode()) for k, v in value.items()) > ANNOTATIONS_LIMIT:
            raise ValueError(f"annotations total more than {ANNOTATIONS_LIMIT} bytes (the API server allows 256 KiB)")
        return value


_NO_TARGET = TargetSpec()  # frozen: one instance serves every spec without a target (no validation each time)


class CredentialSpec(_Model):
    """Desired state of an RdsIamCredential: which database login to mint tokens for."""

    dsn: str | None = Field(
        default=None, max_length=4096,
        description="postgresql://, postgres://, mysql:// URL or libpq 'key=value' string. Any password "
        "in it ($TOKEN, PLACEHOLDER, a real one) is ignored and never copied. Explicit fields override it.")
    host: str | None = Field(default=None, max_length=255, description="Host the client connects to.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Default 5432 or 3306 by engine.")
    database: str | None = Field(default=None, max_length=255, description="Database name (dbname).")
    username: str | None = Field(
        default=None, max_length=255, description="Database user; takes precedence over the DSN's user.")
    engine: Literal["postgres", "mysql"] | None = Field(
        default=None, description="Inferred from the DSN scheme or the port when omitted.")
    region: str | None = Field(
        default=None, max_length=32, pattern=r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]+$",
        description="AWS region; inferred from an RDS hostname when omitted.")
    signing_host: str | None = Field(
        default=None, alias="signingHost", max_length=255,
        description="Sign the token for this RDS endpoint while connecting to `host` (CNAMEs, tunnels).")
    resolve_cname: bool = Field(
        default=False, alias="resolveCNAME",
        description="Follow the host's CNAME chain to the RDS endpoint on each refresh and sign for it.")
    assume_role_arn: str | None = Field(
        default=None, alias="assumeRoleArn", max_length=2048, pattern=ROLE_ARN,
        description="Sign with credentials of this IAM role, assumed from the operator's identity "
        "(or from serviceAccountName's).")
    external_id: str | None = Field(
        default=None, alias="externalId", min_length=2, max_length=1224,
        description="ExternalId for AssumeRole.")
    session_name: str | None = Field(
        default=None, alias="sessionName", min_length=2, max_length=64, pattern=r"^[A-Za-z0-9+=,.@_-]+$",
        description="RoleSessionName for AssumeRole; default rdsiam-NAMESPACE, plus -SERVICEACCOUNT with "
        "serviceAccountName (truncated to 64).")
    assume_role_duration_seconds: int | None = Field(
        default=None, alias="assumeRoleDurationSeconds", ge=900, le=43200,
        description="DurationSeconds for AssumeRole; default 3600 (chained role sessions max 1 h).")
    service_account_name: str | None = Field(
        default=None, alias="serviceAccountName", max_length=253, pattern=DNS_SUBDOMAIN,
        description="Mint as this namespace's ServiceAccount: its eks.amazonaws.com/role-arn annotation "
        "is assumed with a TokenRequest token (AssumeRoleWithWebIdentity), as EKS does for its pods.")
    refresh_interval: str = Field(
        default=DEFAULT_REFRESH, alias="refreshInterval", max_length=32,
        pattern=r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$",
        description="How often to mint a new token; between 1m and 14m (tokens live 15m).")
    verify: bool = Field(
        default=False,
        description="After issuing a token, open one connection with it and report a Connected condition.")
    target: TargetSpec = Field(default_factory=lambda: _NO_TARGET, description="The Secret to write.")

    @field_validator("refresh_interval")
    @classmethod
    def _interval_bounds(cls, value: str) -> str:
        seconds = parse_duration(value)
        if not MIN_REFRESH <= seconds <= MAX_REFRESH:
            raise ValueError(f"must be between 1m and 14m (tokens live 15m), got {value}")
        return value

    @functools.cached_property
    def refresh_seconds(self) -> float:
        return parse_duration(self.refresh_interval)


# Cross-field rules: enforced by the API server (CEL) and again by the operator.
CEL_RULES: list[dict[str, str]] = [
    {"rule": "has(self.dsn) || has(self.host)", "message": "either spec.dsn or spec.host is required"},
    {"rule": "!has(self.refreshInterval) || (duration(self.refreshInterval) >= duration('1m') && "
             "duration(self.refreshInterval) <= duration('14m'))",
     "message": "spec.refreshInterval must be between 1m and 14m (tokens live 15m)",
     "fieldPath": ".refreshInterval"},
    {"rule": "!has(self.externalId) || has(self.assumeRoleArn)",
     "message": "spec.externalId needs spec.assumeRoleArn", "fieldPath": ".externalId"},
    {"rule": "!has(self.sessionName) || has(self.assumeRoleArn)",
     "message": "spec.sessionName needs spec.assumeRoleArn", "fieldPath": ".sessionName"},
]


# The Secret's own keys (``reconcile.secret_data``; pgpass for PostgreSQL): under mergePolicy Merge a template
# may not take one's name. Both engines' keys: the engine is known only once the target is resolved.
STANDARD_KEYS = ("username", "password", "host", "port", "dbname", "dsn", "expires-at", "pgpass")


def _check_template(spec: TemplateSpec) -> None:
    if spec.merge_policy == "Merge":
        for key in spec.data:
            if key in STANDARD_KEYS:
                raise SpecError(
                    f"{template.FIELD}.{key}", f"is one of the Secret's standard keys ({', '.join(STANDARD_KEYS)}), "
                    "which mergePolicy Merge keeps as the operator writes them (the in-pod library and pgpass "
                    "readers rely on them): choose another key, or set mergePolicy: Replace")
    try:
        spec.compiled  # noqa: B018 (compiles, checks and caches)
    except template.TemplateError as exc:
        raise SpecError(exc.field, exc.message) from None


def _check_cross_fields(spec: CredentialSpec) -> None:
    if spec.target.template is not None:
        _check_template(spec.target.template)
    if not spec.dsn and not spec.host:
        raise SpecError("spec", "either spec.dsn or spec.host is required")
    if spec.external_id and not spec.assume_role_arn:
        raise SpecError("spec.externalId", "needs spec.assumeRoleArn")
    if spec.session_name and not spec.assume_role_arn:
        raise SpecError("spec.sessionName", "needs spec.assumeRoleArn")


def parse_spec(raw: Any) -> CredentialSpec:
    """Validate a raw spec dict; raise SpecError naming the first bad field (never its value)."""
    if not isinstance(raw, dict):
        raise SpecError("spec", "must be an object")
    try:
        spec = CredentialSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        path = ".".join(["spec", *(str(p) for p in err["loc"])])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        raise SpecError(path, msg) from None
    _check_cross_fields(spec)
    return spec
