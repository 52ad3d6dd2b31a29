"""AWS side: credentials per identity (cached, single-flight), and RDS IAM token signing.

- Operator identity: boto3's default chain in the operator pod (IRSA web identity, EKS Pod Identity,
  environment, instance profile). One Session for the process; botocore refreshes it.
- Assumed role: AssumeRole from the operator identity (or from a ServiceAccount identity).
- ServiceAccount identity: a TokenRequest for the namespace's ServiceAccount (audience
  ``sts.amazonaws.com``), its ``eks.amazonaws.com/role-arn`` annotation, AssumeRoleWithWebIdentity.

Credentials are cached per identity and refreshed ahead of expiry, so N resources sharing an
identity cost one STS call per credential lifetime. Blocking boto3 calls run in threads; signing a
token is pure CPU (~0.2 ms) and never builds a client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from rdsiam.operator import reasons
from rdsiam.operator.kubeapi import ApiError, Kube

logger = logging.getLogger("rdsiam.aws")
UTC = datetime.UTC
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
STS_AUDIENCE = "sts.amazonaws.com"
# Refresh credentials this long before they expire, so a token signed with them lives its full 15 min.
CREDENTIAL_REFRESH_AHEAD = 900 + 120
OPERATOR_REFRESH_AHEAD = 900 + 30


class IdentityError(Exception):
    """Credentials could not be obtained. ``reason`` is a condition reason; ``message`` is actionable."""

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class IdentityKey:
    """Everything that makes two resources' AWS identities the same (the cache key)."""

    namespace: str | None = None  # only for ServiceAccount identities
    service_account: str | None = None
    role_arn: str | None = None
    external_id: str | None = None
    session_name: str | None = None
    duration: int | None = None

    @property
    def mode(self) -> str:
        if self.service_account:
            return "serviceAccount"
        return "assumeRole" if self.role_arn else "operator"

    def describe(self) -> str:
        parts = []
        if self.service_account:
            parts.append(f"ServiceAccount {self.namespace}/{self.service_account}")
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
    return url[len("https://"):]


def classify(exc: BaseException, identity: IdentityKey) -> IdentityError:
    """Map a boto3/botocore/Kubernetes failure to a reason and a message saying what to check."""
    if isinstance(exc, IdentityError):
        return exc
    who = identity.describe()
    code = ""
    status = 0
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    name = type(exc).__name__
    if code in ("Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"):
        return IdentityError(
            reasons.THROTTLED,
            f"AWS STS throttled the request for credentials of {who} ({code}). The operator backs off and "
            "retries; existing Secrets stay valid until they expire. If this persists, check for other "
            "clients calling STS with the same role, and keep resources that share an identity on one "
            "role so they share one STS session.", retry_after=5.0)
    if code in ("AccessDenied", "AccessDeniedException", "InvalidIdentityToken", "InvalidClientTokenId",
                "ExpiredTokenException", "UnrecognizedClientException", "IDPRejectedClaim"):
        if identity.service_account:
            hint = (f"check that the trust policy of the ServiceAccount's role allows "
                    f"sts:AssumeRoleWithWebIdentity for system:serviceaccount:{identity.namespace}:"
                    f"{identity.service_account} with audience sts.amazonaws.com from the cluster's OIDC "
                    "provider")
        elif identity.role_arn:
            hint = ("check that the role's trust policy allows sts:AssumeRole by the operator's role "
                    "(and the externalId, if set), and that the operator's role may call sts:AssumeRole "
                    "on it")
        else:
            hint = "check the operator's IRSA / Pod Identity role and its trust policy"
        return IdentityError(reasons.ACCESS_DENIED, f"AWS denied credentials for {who} ({code}): {hint}.")
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            "No AWS credentials found for the operator: no provider in boto3's chain returned any. "
            "Check that the operator's ServiceAccount has the eks.amazonaws.com/role-arn annotation (IRSA) "
            "or an EKS Pod Identity association, and that the pod was restarted after adding it "
            "(AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE must be in its environment).")
    if status >= 500 or name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                                 "ConnectionClosedError", "ConnectionError"):
        return IdentityError(
            reasons.CREDENTIALS_UNAVAILABLE,
            f"AWS STS could not be reached or failed for {who} ({code or name}). The operator retries "
            "with backoff; check network egress to STS (VPC endpoint, proxy, AWS_STS_REGIONAL_ENDPOINTS).",
            retry_after=5.0)
    if isinstance(exc, ApiError):
        return IdentityError(
            reasons.KUBERNETES_ERROR,
            f"Kubernetes refused a call needed for {who}: {exc.status} {exc.reason}. Check the operator's "
            "RBAC (serviceaccounts get, serviceaccounts/token create).", retry_after=5.0)
    return IdentityError(
        reasons.CREDENTIALS_UNAVAILABLE,
        f"Could not obtain AWS credentials for {who}: {name}{': ' + code if code else ''}.", retry_after=5.0)


class Identities:
    """Credential cache keyed by :class:`IdentityKey`; one in-flight fetch per key."""

    def __init__(
        self, kube: Kube | None = None, *, session_factory: Callable[[], Any] | None = None,
        clock: Callable[[], datetime.datetime] | None = None, region: str | None = None,
    ) -> None:
        self._kube = kube
        self._session_factory = session_factory
        self._clock = clock or (lambda: datetime.datetime.now(UTC))
        self._region = region
        self._session: Any = None
        self._session_lock = threading.Lock()
        self._cache: dict[IdentityKey, Credentials] = {}
        self._locks: dict[IdentityKey, asyncio.Lock] = {}
        self._sts_clients: dict[str, Any] = {}
        self._arns: dict[str, str] = {}
        self.sts_calls = 0
        self.sts_seconds = 0.0
        self.on_sts_call: Callable[[str, float, str | None], None] | None = None

    # boto3 objects are built lazily, once.
    def _boto_session(self) -> Any:
        with self._session_lock:
            if self._session is None:
                if self._session_factory is not None:
                    self._session = self._session_factory()
                else:
                    import boto3

                    self._session = boto3.Session(region_name=self._region)
            return self._session

    def _sts(self, key: str = "operator", creds: Credentials | None = None) -> Any:
        with self._session_lock:
            client = self._sts_clients.get(key)
        if client is None:
            session = self._boto_session()
            region = session.region_name or self._region or "us-east-1"
            if creds is None and key == "unsigned":
                from botocore import UNSIGNED
                from botocore.config import Config

                client = session.client("sts", region_name=region, config=Config(signature_version=UNSIGNED))
            elif creds is not None:
                client = session.client(
                    "sts", region_name=region, aws_access_key_id=creds.access_key,
                    aws_secret_access_key=creds.secret_key, aws_session_token=creds.token)
            else:
                client = session.client("sts", region_name=region)
            with self._session_lock:
                self._sts_clients[key] = client
        return client

    def _timed(self, action: str, fn: Callable[[], Any]) -> Any:
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

    def _fresh(self, key: IdentityKey, creds: Credentials | None, now: datetime.datetime) -> bool:
        if creds is None:
            return False
        # botocore refreshes the operator's own chain credentials 15 min ahead (advisory); ours we
        # refresh a little earlier so every token signed with them can live its full 15 min.
        ahead = OPERATOR_REFRESH_AHEAD if key.mode == "operator" else CREDENTIAL_REFRESH_AHEAD
        return creds.expiry is None or (creds.expiry - now).total_seconds() > ahead

    async def get(self, key: IdentityKey) -> Credentials:
        """Cached credentials for ``key``, fetched or refreshed when near expiry."""
        now = self._clock()
        cached = self._cache.get(key)
        if self._fresh(key, cached, now):
            assert cached is not None
            return cached
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if self._fresh(key, cached, self._clock()):
                assert cached is not None
                return cached
            try:
                creds = await self._fetch(key)
            except Exception as exc:
                error = classify(exc, key)
                # Still-valid cached credentials keep serving through an STS hiccup.
                if cached is not None and cached.expiry and cached.expiry > self._clock() and \
                        error.reason in (reasons.THROTTLED, reasons.CREDENTIALS_UNAVAILABLE):
                    logger.warning("Using cached credentials for %s: %s", key.describe(), error.reason)
                    return cached
                raise error from None
            self._cache[key] = creds
            return creds

    async def _fetch(self, key: IdentityKey) -> Credentials:
        if key.service_account:
            base = await self._service_account_credentials(key)
        else:
            base = await asyncio.to_thread(self._operator_credentials)
        if not key.role_arn:
            return base
        return await asyncio.to_thread(self._assume_role, key, base if key.service_account else None)

    def _operator_credentials(self) -> Credentials:
        session = self._boto_session()
        provider = session.get_credentials()
        if provider is None:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError()
        frozen = provider.get_frozen_credentials()  # refreshes through the chain when due
        expiry = getattr(provider, "_expiry_time", None)  # RefreshableCredentials only
        if expiry is not None and expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        arn = self._arns.get(frozen.access_key)
        if arn is None:
            identity = self._timed("GetCallerIdentity", lambda: self._sts().get_caller_identity())
            arn = self._arns[frozen.access_key] = identity["Arn"]
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token, expiry, arn)

    def _assume_role(self, key: IdentityKey, base: Credentials | None) -> Credentials:
        assert key.role_arn
        if base is not None:
            client = self._sts(f"sa:{key.namespace}/{key.service_account}:{base.access_key}", base)
        else:
            client = self._sts()
        params: dict[str, Any] = {
            "RoleArn": key.role_arn,
            "RoleSessionName": key.session_name or _session_name(key),
            "DurationSeconds": key.duration or 3600,
        }
        if key.external_id:
            params["ExternalId"] = key.external_id
        result = self._timed("AssumeRole", lambda: client.assume_role(**params))
        return _from_sts(result)

    async def _service_account_credentials(self, key: IdentityKey) -> Credentials:
        assert key.namespace and key.service_account and self._kube is not None
        sa = await self._kube.get_service_account(key.namespace, key.service_account)
        if sa is None:
            raise IdentityError(
                reasons.SERVICE_ACCOUNT_NOT_FOUND,
                f"ServiceAccount {key.namespace}/{key.service_account} (spec.serviceAccountName) does not exist. "
                "Create it with the eks.amazonaws.com/role-arn annotation naming the IAM role to sign with, "
                "or fix the name.")
        role = (sa.get("metadata", {}).get("annotations") or {}).get(ROLE_ANNOTATION)
        if not role:
            raise IdentityError(
                reasons.SERVICE_ACCOUNT_NOT_ANNOTATED,
                f"ServiceAccount {key.namespace}/{key.service_account} has no {ROLE_ANNOTATION} annotation: "
                "add it with the ARN of the IAM role whose trust policy allows "
                f"system:serviceaccount:{key.namespace}:{key.service_account}.")
        jwt, _ = await self._kube.request_token(key.namespace, key.service_account, STS_AUDIENCE, 600)

        def call() -> Any:
            return self._sts("unsigned").assume_role_with_web_identity(
                RoleArn=role, RoleSessionName=_session_name(key), WebIdentityToken=jwt, DurationSeconds=3600)

        result = await asyncio.to_thread(self._timed, "AssumeRoleWithWebIdentity", call)
        return _from_sts(result)


def _from_sts(result: dict[str, Any]) -> Credentials:
    c = result["Credentials"]
    expiry = c["Expiration"]
    if isinstance(expiry, str):
        expiry = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    arn = result.get("AssumedRoleUser", {}).get("Arn")
    return Credentials(c["AccessKeyId"], c["SecretAccessKey"], c.get("SessionToken"), expiry, arn)


def _session_name(key: IdentityKey) -> str:
    """CloudTrail shows which namespace (and ServiceAccount) a session was for."""
    name = "-".join(p for p in ("rdsiam", key.namespace, key.service_account) if p)
    return "".join(ch if ch.isalnum() or ch in "+=,.@_-" else "-" for ch in name)[:64]
