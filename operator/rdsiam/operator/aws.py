"""AWS side: credentials per identity (cached, single-flight, backed off), and RDS IAM token signing.

- Operator identity: boto3's default chain in the operator pod (IRSA web identity, EKS Pod Identity,
  environment, instance profile). One Session for the process; botocore refreshes it.
- Assumed role: AssumeRole from the operator identity (or from a ServiceAccount identity).
- ServiceAccount identity: a TokenRequest for the namespace's ServiceAccount (audience
  ``sts.amazonaws.com``, 10 min), its ``eks.amazonaws.com/role-arn`` annotation,
  AssumeRoleWithWebIdentity: what EKS does for a pod running as that ServiceAccount, so the role's
  trust policy (which pins ``system:serviceaccount:NS:NAME``) decides.

The cache is keyed by :class:`IdentityKey` (mode, role, external id, session, ServiceAccount and the
role its annotation names). Credentials are refreshed ahead of expiry (so tokens signed with them
live their full 15 min); N resources sharing an identity cost one STS call per credential lifetime,
and concurrent callers share one in-flight fetch, its result or its failure. After a throttling or
outage failure an identity backs off (exponential, jittered) and still-valid cached credentials keep
serving. Blocking boto3 calls run in threads; signing a token is pure CPU (~0.2 ms).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

from rdsiam.operator import reasons
from rdsiam.operator.kube import ApiError, Kube

logger = logging.getLogger("rdsiam.aws")
UTC = datetime.UTC
T = TypeVar("T")

ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
STS_AUDIENCE = "sts.amazonaws.com"
SA_TOKEN_SECONDS = 600  # the TokenRequest minimum: the token is used once, at once
TOKEN_LIFETIME = 900
# Refresh credentials this long before they expire, so a token signed with them lives its full
# 15 min (plus the scheduler's margin). Credentials that live shorter than twice this are refreshed
# at half their lifetime instead (AssumeRole with DurationSeconds=900, tests).
CREDENTIAL_REFRESH_AHEAD = TOKEN_LIFETIME + 120
OPERATOR_REFRESH_AHEAD = TOKEN_LIFETIME + 30  # botocore itself refreshes 15 min ahead
# Through an STS outage, cached credentials keep serving only while a token signed with them can
# still outlive the scheduler's refresh margin (3 min) by a minute.
MIN_FALLBACK_SECONDS = 240.0
# Credentials the operator renews itself (assumed roles, ServiceAccount identities) are renewed in the
# background from RENEW_WINDOW seconds (at most a quarter of the refresh-ahead time) before the point where
# callers must wait for new ones: a slow STS then delays nobody. A renewal that fails is tried again after
# RENEW_RETRY seconds; callers wait only once the refresh-ahead point is reached.
RENEW_WINDOW = 120.0
RENEW_RETRY = 30.0
# Per-identity backoff after a throttling/outage failure: BASE * 2^n, capped, times U(0.5, 1).
BACKOFF_BASE = 2.0
BACKOFF_CAP = 120.0
# The backoff record of an identity nobody has asked for this long after its retry time (a deleted resource
# whose role never worked) is dropped.
FAILURE_MEMORY = 1800.0
STS_CONNECT_TIMEOUT = 3.0
STS_READ_TIMEOUT = 5.0  # botocore's default is 60 s; its standard mode retries 3 times in all
DEFAULT_DURATION = 3600
_TRANSIENT = frozenset({reasons.THROTTLED, reasons.CREDENTIALS_UNAVAILABLE})
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$")

_THROTTLING = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
                         "RequestThrottled", "RequestThrottledException", "SlowDown"})
_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "InvalidIdentityToken", "IDPRejectedClaim",
                     "ExpiredTokenException"})
_CALLER_REJECTED = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "RequestExpired",
                              "UnrecognizedClientException", "IncompleteSignature", "InvalidAccessKeyId"})
_UNREACHABLE = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                          "ConnectionClosedError", "ConnectionError", "ProxyConnectionError", "SSLError",
                          "HTTPClientError"})


class IdentityError(Exception):
    """Credentials could not be obtained. ``reason`` is a condition reason; ``message`` is actionable."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None,
                 transient: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        # Worth a backoff and the still-valid cached credentials meanwhile (always for _TRANSIENT reasons).
        self.transient = transient or reason in _TRANSIENT


@dataclasses.dataclass(frozen=True)
class IdentityKey:
    """Everything that makes two resources' AWS identities the same (the cache key)."""

    namespace: str | None = None  # for ServiceAccount and assumed-role identities (session name, audit)
    service_account: str | None = None
    role_arn: str | None = None
    external_id: str | None = None
    session_name: str | None = None
    duration: int | None = None
    sa_role: str | None = None  # the ServiceAccount's role annotation (filled in by Identities.get)

    @property
    def mode(self) -> str:
        if self.service_account:
            return "serviceAccount"
        return "assumeRole" if self.role_arn else "operator"

    def describe(self) -> str:
        parts = []
        if self.service_account:
            sa = f"ServiceAccount {self.namespace}/{self.service_account}"
            parts.append(f"{sa} (role {self.sa_role})" if self.sa_role else sa)
        if self.role_arn:
            parts.append(f"role {self.role_arn}")
        return " then ".join(parts) or "the operator's own identity"


@dataclasses.dataclass(frozen=True, repr=False)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None
    expiry: datetime.datetime | None  # None: long-term keys
    arn: str | None = None  # principal ARN, when known
    obtained_at: datetime.datetime | None = None  # when this process got them (for their lifetime)

    def __repr__(self) -> str:  # never show keys
        return f"Credentials(access_key={self.access_key[:4]}…, expiry={self.expiry}, arn={self.arn})"


def sign_token(creds: Credentials, host: str, port: int, user: str, region: str) -> str:
    """An RDS IAM auth token: a SigV4 presigned ``connect`` URL without the scheme (valid 900 s)."""
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import ReadOnlyCredentials

    request = AWSRequest(method="GET", url=f"https://{host}:{port}/?Action=connect&DBUser={quote(user, safe='')}")
    SigV4QueryAuth(ReadOnlyCredentials(creds.access_key, creds.secret_key, creds.token),
                   "rds-db", region, expires=900).add_auth(request)
    url = request.prepare().url
    assert url is not None
    return str(url)[len("https://"):]


def classify(exc: BaseException, identity: IdentityKey) -> IdentityError:
    """Map a boto3/botocore/Kubernetes failure to a reason and a message saying what to check.

    AWS's own error message is quoted (it names the caller and the role; it never holds keys).
    """
    if isinstance(exc, IdentityError):
        return exc
    who = identity.describe()
    code = ""
    aws_message = ""
    status = 0
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code", ""))
        aws_message = " ".join(str(error.get("Message", "")).split())[:300]
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    name = type(exc).__name__
    said = f" AWS said: {aws_message.rstrip('.')}." if aws_message else ""
    if code in _THROTTLING:
        return IdentityError(
            reasons.THROTTLED,
            f"AWS STS throttled the request for credentials of {who} ({code}). The operator backs off with "
            "jitter and retries; existing Secrets stay valid until they expire. If this persists, look for other "
            "clients calling STS for the same account, and keep resources that share a role on one identity "
            "so they share one STS session.", retry_after=5.0)
    if code in _DENIED:
        if identity.service_account:
            subject = f"system:serviceaccount:{identity.namespace}:{identity.service_account}"
            hint = (f"check that the trust policy of {identity.sa_role or 'the ServiceAccount role'} allows "
                    f"sts:AssumeRoleWithWebIdentity from the cluster's OIDC provider for sub {subject} and aud "
                    f"{STS_AUDIENCE}, and that the OIDC provider is registered in IAM")
            if identity.role_arn:
                hint += (f"; and that the trust policy of {identity.role_arn} allows sts:AssumeRole by that role"
                         f"{' with the externalId' if identity.external_id else ''}")
        elif identity.role_arn:
            hint = (f"check that the trust policy of {identity.role_arn} allows sts:AssumeRole by the operator's "
                    f"role{' with the externalId in spec.externalId' if identity.external_id else ''}, and that "
                    "the operator's role has an IAM policy allowing sts:AssumeRole on it")
        else:
            hint = "check the operator's IRSA / Pod Identity role and its trust policy"
        return IdentityError(reasons.ACCESS_DENIED,
                             f"AWS denied credentials for {who} ({code}): {hint}.{said}", retry_after=5.0)
    if code in _CALLER_REJECTED:
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            f"AWS STS rejected the credentials used to get credentials for {who} ({code}). Check the "
            "operator pod's clock (SigV4 allows 5 minutes of skew) and that its AWS credentials are current "
            f"(restart it after rotating static keys).{said}", retry_after=10.0)
    if code == "RegionDisabledException":
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            f"AWS STS is not activated in this region for the account of {who}: activate it in IAM account "
            f"settings or point the operator at another STS endpoint (AWS_STS_REGIONAL_ENDPOINTS).{said}",
            retry_after=60.0)
    if code in ("ValidationError", "MalformedPolicyDocument", "PackedPolicyTooLarge"):
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            f"AWS STS refused the request for {who} ({code}). Check spec.assumeRoleDurationSeconds (at most "
            "the role's MaxSessionDuration, and 1 h when a role session assumes a role), spec.sessionName "
            f"and spec.externalId.{said}", retry_after=60.0)
    if code == "IDPCommunicationError":
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            f"AWS STS could not reach the cluster's OIDC issuer to check the ServiceAccount token for {who}. "
            "The operator retries with backoff; check that the issuer's discovery document is public.",
            retry_after=5.0)
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            "No AWS credentials found for the operator: no provider in boto3's chain returned any. "
            "Check that the operator's ServiceAccount has the eks.amazonaws.com/role-arn annotation (IRSA) "
            "or an EKS Pod Identity association, and that the pod was restarted after adding it "
            "(AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE must be in its environment).", retry_after=5.0)
    if status >= 500 or name in _UNREACHABLE:
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            f"AWS STS could not be reached or failed for {who} ({code or name}). The operator retries "
            "with backoff and existing Secrets stay valid until they expire; check network egress to STS "
            "(VPC endpoint, proxy, AWS_STS_REGIONAL_ENDPOINTS).", retry_after=5.0)
    if isinstance(exc, ApiError):
        what = "ServiceAccount lookup or TokenRequest" if identity.service_account else "Kubernetes call"
        if exc.temporary:  # 409, 429, 5xx, no answer: the API server is busy or restarting, not refusing
            return IdentityError(
                reasons.KUBERNETES_ERROR,
                f"The {what} needed for {who} failed: {exc.status} {exc.reason}; the API server is busy or "
                "restarting. Retrying with backoff; cached credentials are used while they last.",
                retry_after=5.0, transient=True)
        return IdentityError(
            reasons.KUBERNETES_ERROR,
            f"Kubernetes refused the {what} needed for {who}: {exc.status} {exc.reason}. Check the operator's "
            "RBAC (serviceaccounts get, serviceaccounts/token create).", retry_after=5.0)
    return IdentityError(
        reasons.CREDENTIALS_UNAVAILABLE,
        f"Could not obtain AWS credentials for {who}: {name}{': ' + code if code else ''}.{said}", retry_after=5.0)


@dataclasses.dataclass(frozen=True)
class _Failure:
    error: IdentityError
    attempt: int
    retry_at: datetime.datetime


class Identities:
    """Credential cache keyed by :class:`IdentityKey`; one in-flight fetch per key."""

    def __init__(
        self, kube: Kube | None = None, *, session_factory: Callable[[], Any] | None = None,
        clock: Callable[[], datetime.datetime] | None = None, region: str | None = None,
        sts_timeout: float = STS_READ_TIMEOUT, jitter: Callable[[], float] | None = None,
        sa_cache_seconds: float = 2.0,
    ) -> None:
        self._kube = kube
        self._session_factory = session_factory
        self._clock = clock or (lambda: datetime.datetime.now(UTC))
        self._region = region
        self._sts_timeout = sts_timeout
        self._jitter = jitter or (lambda: random.uniform(0.5, 1.0))
        self.sa_cache_seconds = sa_cache_seconds
        self._session: Any = None
        self._session_lock = threading.Lock()
        self._client_lock = threading.Lock()  # boto3 Sessions are not thread-safe when creating clients
        self._cache: dict[IdentityKey, Credentials] = {}
        self._inflight: dict[IdentityKey, asyncio.Future[Credentials]] = {}
        self._failures: dict[IdentityKey, _Failure] = {}
        self._renewing: dict[IdentityKey, datetime.datetime] = {}  # when a background renewal last started
        self._sa_cache: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._sa_inflight: dict[tuple[str, str], asyncio.Future[dict[str, Any] | None]] = {}
        self._sts_clients: dict[str, Any] = {}
        self._caller: tuple[str, str] | None = None  # (access key, ARN) of the operator's own credentials
        self.fetches = 0  # credential fetches started (one per identity per credential lifetime)
        self.sts_calls = 0
        self.sts_seconds = 0.0
        self.on_sts_call: Callable[[str, float, str | None], None] | None = None

    # ---- the cache ----------------------------------------------------------------------------

    async def get(self, key: IdentityKey) -> Credentials:
        """Cached credentials for ``key``; fetched when missing or due (one fetch for all callers), renewed
        in the background shortly before they are due."""
        if key.service_account:
            key = await self._resolve_service_account(key)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and self._fresh(key, cached, now):
            if key.mode != "operator" and self._renewal_due(key, cached, now):
                self._renew(key, now)
            return cached
        future = self._inflight.get(key)
        if future is None:
            failure = self._backing_off(key, now)
            if failure is not None:
                # Do not call STS again yet; serve still-valid credentials meanwhile.
                return self._fallback(key, cached, failure.error, now, failure.retry_at)
            future = self._start(key)
        return await asyncio.shield(future)

    def _backing_off(self, key: IdentityKey, now: datetime.datetime) -> _Failure | None:
        """The throttle or outage ``key`` is backing off from (None: STS may be called for it now)."""
        failure = self._failures.get(key)
        return failure if failure is not None and now < failure.retry_at else None

    def _start(self, key: IdentityKey) -> asyncio.Future[Credentials]:
        future = asyncio.get_running_loop().create_task(self._refresh(key))
        self._inflight[key] = future
        future.add_done_callback(lambda f: self._settled(self._inflight, key, f))
        return future

    def _renewal_due(self, key: IdentityKey, creds: Credentials, now: datetime.datetime) -> bool:
        """Within the renewal window before ``creds`` stop being handed out (which ``_fresh`` decides).

        The operator's own credentials are not renewed here: botocore's chain refreshes them itself, and
        only once they are within its own 15 minutes of expiry."""
        if creds.expiry is None:
            return False
        ahead = self.refresh_ahead(key, creds)
        return (creds.expiry - now).total_seconds() <= ahead + min(RENEW_WINDOW, ahead / 4)

    def _renew(self, key: IdentityKey, now: datetime.datetime) -> None:
        """Start fetching new credentials for ``key`` without waiting for them (the cached ones serve)."""
        if key in self._inflight or self._backing_off(key, now) is not None:
            return
        tried = self._renewing.get(key)
        if tried is not None and (now - tried).total_seconds() < RENEW_RETRY:
            return
        self._renewing[key] = now
        self._start(key).add_done_callback(lambda f: self._renewed(key, f))

    def _renewed(self, key: IdentityKey, future: asyncio.Future[Credentials]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, IdentityError):  # (transient failures were logged by _refresh)
            logger.warning("Credentials for %s: renewing them ahead of time failed (%s); the cached ones serve "
                           "until they are due, trying again in %.0f s", key.describe(), error.reason, RENEW_RETRY)

    def refresh_ahead(self, key: IdentityKey, creds: Credentials) -> float:
        """Seconds before expiry at which ``creds`` stop being handed out and new ones are fetched."""
        ahead = float(OPERATOR_REFRESH_AHEAD if key.mode == "operator" else CREDENTIAL_REFRESH_AHEAD)
        if creds.expiry is not None and creds.obtained_at is not None:
            ahead = min(ahead, (creds.expiry - creds.obtained_at).total_seconds() / 2)
        return ahead

    def _fresh(self, key: IdentityKey, creds: Credentials, now: datetime.datetime) -> bool:
        return creds.expiry is None or (creds.expiry - now).total_seconds() > self.refresh_ahead(key, creds)

    async def _refresh(self, key: IdentityKey) -> Credentials:
        self.fetches += 1
        try:
            creds = await self._fetch(key)
        except Exception as exc:
            error = classify(exc, key)
            if not error.transient:
                self._failures.pop(key, None)
                raise error from None
            now = self._clock()
            previous = self._failures.get(key)
            attempt = previous.attempt + 1 if previous else 0
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 30)) * self._jitter()  # no float overflow
            retry_at = now + datetime.timedelta(seconds=delay)
            self._failures[key] = _Failure(error, attempt, retry_at)
            self._prune(now)
            logger.warning("Credentials for %s: %s (attempt %d); next STS call for it in %.1f s",
                           key.describe(), error.reason, attempt + 1, delay)
            return self._fallback(key, self._cache.get(key), error, now, retry_at)
        self._failures.pop(key, None)
        self._renewing.pop(key, None)
        if creds.obtained_at is None:
            creds = dataclasses.replace(creds, obtained_at=self._clock())
        self._prune(creds.obtained_at or self._clock())
        self._cache[key] = creds
        return creds

    def _prune(self, now: datetime.datetime) -> None:
        """Forget identities whose credentials expired (deleted resources, changed specs), and the backoff
        of identities that never got credentials and were not asked for since."""
        for old in [k for k, c in self._cache.items() if c.expiry is not None and c.expiry <= now]:
            del self._cache[old]
            self._failures.pop(old, None)
            self._renewing.pop(old, None)
        forgotten = now - datetime.timedelta(seconds=FAILURE_MEMORY)
        for old in [k for k, f in self._failures.items() if f.retry_at < forgotten and k not in self._cache]:
            del self._failures[old]
        if len(self._sa_cache) > 1024:
            horizon = time.monotonic() - self.sa_cache_seconds
            for k in [k for k, (at, _) in self._sa_cache.items() if at < horizon]:
                del self._sa_cache[k]

    def _fallback(
        self, key: IdentityKey, cached: Credentials | None, error: IdentityError, now: datetime.datetime,
        retry_at: datetime.datetime,
    ) -> Credentials:
        """Still-valid cached credentials through an STS hiccup, else the failure (with when to retry)."""
        if cached is not None and (cached.expiry is None
                                   or (cached.expiry - now).total_seconds() >= MIN_FALLBACK_SECONDS):
            logger.debug("Using cached credentials for %s while STS recovers (%s)", key.describe(), error.reason)
            return cached
        raise IdentityError(error.reason, error.message,
                            retry_after=max(1.0, (retry_at - now).total_seconds()))

    @staticmethod
    def _settled(table: dict[Any, asyncio.Future[T]], key: Any, future: asyncio.Future[T]) -> None:
        if table.get(key) is future:
            del table[key]
        if not future.cancelled():
            future.exception()  # retrieved: every waiter already got it (or none was left)

    # ---- ServiceAccount -----------------------------------------------------------------------

    async def _resolve_service_account(self, key: IdentityKey) -> IdentityKey:
        """The key with the role the ServiceAccount's annotation names now (a changed annotation is a
        new identity; a deleted ServiceAccount stops new tokens at once)."""
        assert key.namespace and key.service_account
        if self._kube is None:
            raise IdentityError(reasons.CREDENTIALS_UNAVAILABLE, "No Kubernetes client for ServiceAccount identities.")
        try:
            sa = await self._service_account(key.namespace, key.service_account)
        except ApiError as exc:
            raise classify(exc, key) from None
        subject = f"system:serviceaccount:{key.namespace}:{key.service_account}"
        if sa is None:
            raise IdentityError(
                reasons.SERVICE_ACCOUNT_NOT_FOUND,
                f"ServiceAccount {key.namespace}/{key.service_account} (spec.serviceAccountName) does not exist "
                f"in namespace {key.namespace}. Create it with the {ROLE_ANNOTATION} annotation naming the IAM "
                f"role to sign with (its trust policy must allow {subject}), or fix the name.", retry_after=2.0)
        role = ((sa.get("metadata") or {}).get("annotations") or {}).get(ROLE_ANNOTATION, "").strip()
        if not role:
            raise IdentityError(
                reasons.SERVICE_ACCOUNT_NOT_ANNOTATED,
                f"ServiceAccount {key.namespace}/{key.service_account} has no {ROLE_ANNOTATION} annotation: "
                "add it with the ARN of the IAM role to sign with, whose trust policy allows "
                f"sts:AssumeRoleWithWebIdentity for {subject} (audience {STS_AUDIENCE}).", retry_after=2.0)
        if not _ROLE_ARN.match(role):
            raise IdentityError(
                reasons.SERVICE_ACCOUNT_NOT_ANNOTATED,
                f"ServiceAccount {key.namespace}/{key.service_account}: the {ROLE_ANNOTATION} annotation is not "
                "an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME); fix the annotation.", retry_after=2.0)
        return dataclasses.replace(key, sa_role=role)

    async def _service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        """GET the ServiceAccount; concurrent and back-to-back lookups (a burst of refreshes) share one."""
        assert self._kube is not None
        k = (namespace, name)
        hit = self._sa_cache.get(k)
        if hit is not None and time.monotonic() - hit[0] < self.sa_cache_seconds:
            return hit[1]
        future = self._sa_inflight.get(k)
        if future is None:
            kube = self._kube

            async def lookup() -> dict[str, Any] | None:
                sa = await kube.get_service_account(namespace, name)
                self._sa_cache[k] = (time.monotonic(), sa)
                return sa

            future = asyncio.get_running_loop().create_task(lookup())
            self._sa_inflight[k] = future
            future.add_done_callback(lambda f: self._settled(self._sa_inflight, k, f))
        return await asyncio.shield(future)

    # ---- fetching -----------------------------------------------------------------------------

    async def _fetch(self, key: IdentityKey) -> Credentials:
        if key.service_account:
            base = await self._service_account_credentials(key)
            if not key.role_arn:
                return base
            return await _in_sts_thread(self._assume_role, key, base)
        if key.role_arn:
            return await _in_sts_thread(self._assume_role, key, None)
        return await _in_sts_thread(self._operator_credentials, self._cache.get(key))

    # boto3 objects are built lazily, once.
    def prepare(self) -> None:
        """Import boto3 and build the session and STS clients now (no network call), so the first
        refresh does not pay ~0.5 s for them. Blocking: run it in a thread."""
        self._boto_session()
        self._sts("operator")
        self._sts("unsigned")

    def _boto_session(self) -> Any:
        with self._session_lock:
            if self._session is None:
                if self._session_factory is not None:
                    self._session = self._session_factory()
                else:
                    import boto3

                    self._session = boto3.Session(region_name=self._region)
                # Every client the session makes, the credential chain's own STS client too (IRSA's
                # refresh), gets the short timeouts: botocore's default is 60 s per attempt.
                core = getattr(self._session, "_session", None)
                if core is not None and hasattr(core, "set_default_client_config"):
                    core.set_default_client_config(self._client_config())
                # Resolve the credential chain once, here: two threads resolving it at once (one for
                # the operator identity, one building the AssumeRole client) get two providers, and
                # each then calls STS for the same IRSA credentials.
                self._session.get_credentials()
            return self._session

    def _client_config(self, **extra: Any) -> Any:
        from botocore.config import Config

        # Retry mode and attempts come from the environment / config file (AWS_MAX_ATTEMPTS,
        # AWS_RETRY_MODE; default standard, 3 attempts); timeouts are short so an STS outage
        # shows up as a reason in seconds, not minutes.
        return Config(connect_timeout=STS_CONNECT_TIMEOUT, read_timeout=self._sts_timeout, **extra)

    def _new_sts_client(self, creds: Credentials | None = None, unsigned: bool = False) -> Any:
        session = self._boto_session()
        region = session.region_name or self._region or "us-east-1"
        kwargs: dict[str, Any] = {"region_name": region}
        if unsigned:
            from botocore import UNSIGNED

            kwargs["config"] = self._client_config(signature_version=UNSIGNED)
        else:
            kwargs["config"] = self._client_config()
            if creds is not None:
                kwargs.update(aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                              aws_session_token=creds.token)
        with self._client_lock:
            return session.client("sts", **kwargs)

    def _sts(self, kind: str = "operator") -> Any:
        """The long-lived clients: ``operator`` (signed by the operator's chain) and ``unsigned``."""
        with self._session_lock:
            client = self._sts_clients.get(kind)
        if client is None:
            client = self._new_sts_client(unsigned=kind == "unsigned")
            with self._session_lock:
                client = self._sts_clients.setdefault(kind, client)
        return client

    def _timed(self, action: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        error = None
        try:
            return fn()
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            elapsed = time.perf_counter() - start
            self.sts_calls += 1
            self.sts_seconds += elapsed
            if self.on_sts_call is not None:
                self.on_sts_call(action, elapsed, error)

    def _operator_credentials(self, previous: Credentials | None) -> Credentials:
        session = self._boto_session()
        provider = session.get_credentials()
        if provider is None:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError()
        # Another thread (an STS client signing with the same provider) may refresh it between our
        # two reads: pair the keys with the earlier expiry, never a later one.
        before = _aware(getattr(provider, "_expiry_time", None))
        frozen = provider.get_frozen_credentials()  # refreshes through the chain when due
        after = _aware(getattr(provider, "_expiry_time", None))
        expiries = [e for e in (before, after) if e is not None]
        expiry = min(expiries) if expiries else None
        caller = self._caller
        if caller is None or caller[0] != frozen.access_key:
            identity = self._timed("GetCallerIdentity", lambda: self._sts().get_caller_identity())
            caller = self._caller = (frozen.access_key, identity["Arn"])
        obtained = previous.obtained_at if previous is not None and previous.access_key == frozen.access_key \
            else self._clock()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token, expiry, caller[1], obtained)

    def _assume_role(self, key: IdentityKey, base: Credentials | None) -> Credentials:
        assert key.role_arn
        params: dict[str, Any] = {
            "RoleArn": key.role_arn,
            "RoleSessionName": key.session_name or _session_name(key),
            "DurationSeconds": key.duration or DEFAULT_DURATION,
        }
        if key.external_id:
            params["ExternalId"] = key.external_id
        if base is None:
            client = self._sts()
            return _from_sts(self._timed("AssumeRole", lambda: client.assume_role(**params)))
        # Chained from a ServiceAccount session: a client for these credentials, used once.
        client = self._new_sts_client(base)
        try:
            return _from_sts(self._timed("AssumeRole", lambda: client.assume_role(**params)))
        finally:
            client.close()

    async def _service_account_credentials(self, key: IdentityKey) -> Credentials:
        assert key.namespace and key.service_account and key.sa_role and self._kube is not None
        jwt, _ = await self._kube.request_token(key.namespace, key.service_account, STS_AUDIENCE, SA_TOKEN_SECONDS)
        role = key.sa_role

        def call() -> Any:
            return self._sts("unsigned").assume_role_with_web_identity(
                RoleArn=role, RoleSessionName=_session_name(key), WebIdentityToken=jwt,
                DurationSeconds=key.duration or DEFAULT_DURATION)

        result = await _in_sts_thread(self._timed, "AssumeRoleWithWebIdentity", call)
        return _from_sts(result)


@functools.cache
def _sts_threads() -> ThreadPoolExecutor:
    """Threads for STS calls (boto3 blocks), apart from asyncio's default pool (CPUs + 4: six here): with
    STS slow, hundreds of identities must not queue behind six calls that each wait for a timeout."""
    return ThreadPoolExecutor(max_workers=32, thread_name_prefix="rdsiam-sts")


async def _in_sts_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_sts_threads(), functools.partial(fn, *args))


def _aware(when: datetime.datetime | None) -> datetime.datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _from_sts(result: dict[str, Any]) -> Credentials:
    c = result["Credentials"]
    expiry = c["Expiration"]
    if isinstance(expiry, str):
        expiry = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
    arn = result.get("AssumedRoleUser", {}).get("Arn")
    return Credentials(c["AccessKeyId"], c["SecretAccessKey"], c.get("SessionToken"), _aware(expiry), arn)


def _session_name(key: IdentityKey) -> str:
    """CloudTrail shows which namespace (and ServiceAccount) a session was for."""
    name = "-".join(p for p in ("rdsiam", key.namespace, key.service_account) if p)
    return "".join(ch if ch.isalnum() or ch in "+=,.@_-" else "-" for ch in name)[:64]

