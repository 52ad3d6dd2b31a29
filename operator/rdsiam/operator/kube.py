"""The operator's Kubernetes calls, through the official ``kubernetes`` client.

kopf watches; everything the operator itself reads or writes (Secrets, status, TokenRequests,
ServiceAccounts, namespaces) goes through :class:`KubeClient`, whose configuration comes from the
client's own loaders: in-cluster (the projected token re-read as the kubelet rotates it), or a
kubeconfig with files or inline data, exec credential plugins, ``proxy-url`` and the
``HTTPS_PROXY``/``NO_PROXY`` environment. A 429 is retried after the server's ``Retry-After``.
Each method maps to one RBAC rule in ``charts/rdsiam/templates/rbac.yaml``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any, Protocol

JsonDict = dict[str, Any]
logger = logging.getLogger("rdsiam.kube")

_SIGV4 = re.compile(r"(X-Amz-(?:Signature|Security-Token|Credential)(?:=|%3D))[^&\s'\"]+", re.IGNORECASE)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")


def scrub(text: str) -> str:
    """An API server's message without token material: an admission webhook or a proxy may quote the
    request (a Secret's DSN, or its data in base64), and these messages go into status, Events and logs."""

    def base64_run(match: re.Match[str]) -> str:
        run = match.group(0).rstrip("=")
        # At each of the four alignments (the run may be glued to a letter before it) and cut to whole
        # groups of four (a run may end mid-group): base64 of a token shows "X-Amz-" at one of them.
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[:len(chunk) - len(chunk) % 4]
            try:
                if b"X-Amz-" in base64.b64decode(chunk):
                    return "<redacted>"
            except ValueError:
                continue
        return match.group(0)

    return _SIGV4.sub(r"\1<redacted>", _BASE64_RUN.sub(base64_run, text))


class ApiError(Exception):
    """A non-2xx answer, or none (504 Timeout, 503 when the server could not be reached). The message is
    the API server's own text (never request bodies)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        message = scrub(message)
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def temporary(self) -> bool:
        return self.status in (409, 429) or self.status >= 500


class Kube(Protocol):
    """What the reconciler and the identities need from Kubernetes (a fake implements it in unit tests)."""

    async def get_secret(self, namespace: str, name: str) -> JsonDict | None: ...
    async def create_secret(self, namespace: str, body: JsonDict) -> JsonDict: ...
    async def replace_secret(self, namespace: str, name: str, body: JsonDict) -> JsonDict: ...
    async def patch_status(self, namespace: str, name: str, status: JsonDict) -> None: ...
    async def post_event(self, namespace: str, body: JsonDict) -> None: ...
    async def get_service_account(self, namespace: str, name: str) -> JsonDict | None: ...
    async def request_token(
        self, namespace: str, name: str, audience: str, seconds: int) -> tuple[str, str | None]: ...
    async def get_namespace(self, name: str) -> JsonDict | None: ...


CR_PATH = "/apis/rdsiam.io/v1alpha1/namespaces/{ns}/rdsiamcredentials/{name}"
TIMEOUT = 10.0  # seconds for one call
RETRIES_429 = 5  # a 429 (or a 503 with Retry-After) is retried this often, after the server's Retry-After


def load_configuration(connections: int = 32) -> Any:
    """The client configuration as kubectl would find it: in-cluster, else ``KUBECONFIG``/~/.kube/config."""
    import urllib3
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        # KUBECONFIG as it is now (the client reads it once, at import); several paths are merged.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    # Retry-After is the server asking for a pause (API priority and fairness, a proxy): honoured for
    # every method, since a 429 means the request was not processed.
    configuration.retries = urllib3.Retry(
        total=RETRIES_429, connect=0, read=0, other=0, status=RETRIES_429, status_forcelist=(429,),
        allowed_methods=None, respect_retry_after_header=True, backoff_factor=0.2, raise_on_status=False)
    configuration.connection_pool_maxsize = connections
    return configuration


class KubeClient:
    """:class:`Kube` over ``kubernetes.client.ApiClient``; each blocking call runs in a worker thread."""

    def __init__(self, api_client: Any, *, workers: int = 16, timeout: float = TIMEOUT) -> None:
        self.api = api_client
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="rdsiam-kube")
        self.writes = 0  # mutating calls made (metrics)
        # Called with (path, status) when a mutating call fails (metrics count these).
        self.on_write_error: Callable[[str, int], None] | None = None

    @classmethod
    def from_environment(cls, workers: int = 16) -> KubeClient:
        from kubernetes import client

        api = client.ApiClient(load_configuration(connections=workers + 4))
        api.user_agent = "rdsiam-operator"
        return cls(api, workers=workers)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()

    async def _call(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
        allow_404: bool = False,
    ) -> JsonDict | None:
        if method != "GET":
            self.writes += 1
        loop = asyncio.get_running_loop()
        status, raw = await loop.run_in_executor(self._pool, self._send, method, path, body, content_type)
        if status == 404 and allow_404:
            return None
        if status >= 400:
            exc = _api_error(status, raw)
            if method != "GET" and self.on_write_error is not None:
                self.on_write_error(path, exc.status)
            raise exc
        return json.loads(raw) if raw else {}

    def _send(self, method: str, path: str, body: Any, content_type: str) -> tuple[int, bytes]:
        """One request (in a worker thread): the status and the raw answer; 503/504 when none came."""
        import urllib3

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            request = self.api.param_serialize(method, path, header_params=headers, body=body,
                                               auth_settings=["BearerToken"])
            response = self.api.call_api(*request, _request_timeout=self.timeout)
            return int(response.status), response.read() or b""
        except (urllib3.exceptions.HTTPError, TimeoutError) as exc:  # no answer: it may not have arrived
            cause = _cause(exc)
            if isinstance(cause, (urllib3.exceptions.ReadTimeoutError, TimeoutError)) and \
                    not isinstance(cause, urllib3.exceptions.NewConnectionError):
                return 504, json.dumps({"reason": "Timeout", "message": (
                    f"no answer from the API server within {self.timeout:g} s")}).encode()
            return 503, json.dumps({"reason": "ServiceUnavailable", "message": (
                f"could not reach the API server ({type(cause).__name__})")}).encode()

    # Secrets: get (conflict check on create), create, update (rotation).
    async def get_secret(self, namespace: str, name: str) -> JsonDict | None:
        return await self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", allow_404=True)

    async def create_secret(self, namespace: str, body: JsonDict) -> JsonDict:
        """Create the Secret; returns ``{"metadata": ...}`` of the created Secret."""
        result = await self._call("POST", f"/api/v1/namespaces/{namespace}/secrets", body)
        return {"metadata": (result or {}).get("metadata") or {}}

    async def replace_secret(self, namespace: str, name: str, body: JsonDict) -> JsonDict:
        """Replace the Secret (optimistic: ``metadata.resourceVersion`` in ``body``)."""
        result = await self._call("PUT", f"/api/v1/namespaces/{namespace}/secrets/{name}", body)
        return {"metadata": (result or {}).get("metadata") or {}}

    async def patch_status(self, namespace: str, name: str, status: JsonDict) -> None:
        await self._call("PATCH", CR_PATH.format(ns=namespace, name=name) + "/status", {"status": status},
                         content_type="application/merge-patch+json")

    async def post_event(self, namespace: str, body: JsonDict) -> None:
        await self._call("POST", f"/api/v1/namespaces/{namespace}/events", body)

    # Identity: ServiceAccount mode reads the SA's role annotation and requests a token for it.
    async def get_service_account(self, namespace: str, name: str) -> JsonDict | None:
        return await self._call("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}", allow_404=True)

    async def request_token(
        self, namespace: str, name: str, audience: str, seconds: int,
    ) -> tuple[str, str | None]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": seconds}}
        result = await self._call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        status = (result or {}).get("status", {})
        return status["token"], status.get("expirationTimestamp")

    # Tenancy policy reads namespace labels/annotations.
    async def get_namespace(self, name: str) -> JsonDict | None:
        return await self._call("GET", f"/api/v1/namespaces/{name}", allow_404=True)


def _cause(exc: BaseException) -> BaseException:
    """urllib3 wraps the real failure (MaxRetryError(reason=ProxyError(...))): the innermost one."""
    seen = exc
    while isinstance(inner := getattr(seen, "reason", None), BaseException):
        seen = inner
    return seen


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        answer = json.loads(raw)
        reason, message = str(answer.get("reason", "")), str(answer.get("message", ""))
    except (ValueError, AttributeError):
        reason, message = "", raw[:200].decode(errors="replace")
    return ApiError(status, reason, message)
