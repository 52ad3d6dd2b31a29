"""A small asyncio Kubernetes API client for exactly the calls the operator makes.

kopf watches the custom resources; everything the operator writes (Secrets, status, Events,
TokenRequests) goes through :class:`KubeApi`, so the calls are few, counted and easy to fake.
Each method maps to one RBAC rule in ``charts/rdsiam/templates/rbac.yaml``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Literal, Protocol

import aiohttp

JsonDict = dict[str, Any]


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
    """What the reconciler needs from Kubernetes (a fake implements it in unit tests)."""

    async def get_secret(self, namespace: str, name: str) -> JsonDict | None: ...
    async def create_secret(self, namespace: str, body: JsonDict) -> JsonDict: ...
    async def replace_secret(self, namespace: str, name: str, body: JsonDict) -> JsonDict: ...
    async def patch_status(self, namespace: str, name: str, status: JsonDict) -> None: ...
    async def post_event(self, namespace: str, body: JsonDict) -> None: ...
    async def get_service_account(self, namespace: str, name: str) -> JsonDict | None: ...
    async def request_token(
        self, namespace: str, name: str, audience: str, seconds: int) -> tuple[str, str | None]: ...
    async def get_namespace(self, name: str) -> JsonDict | None: ...


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
# The pod's ServiceAccount token, projected by the kubelet and replaced before it expires (hourly, by
# default): read again every minute, as client-go does, and at once after a 401.
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
TOKEN_REREAD_SECONDS = 60.0
# A LIST of every managed Secret (with their data) or resource: tens of thousands of objects take longer
# than the client's 10 s for one call; a page of LIST_PAGE objects gets the same allowance.
LIST_TIMEOUT = aiohttp.ClientTimeout(total=120.0)
LIST_PAGE = 500  # objects per page of a LIST (client-go's pager uses 500 too)
logger = logging.getLogger("rdsiam.kubeapi")
Decode = Literal["json", "metadata", "none"]  # how much of an answer KubeApi._request decodes


class KubeApi:
    """Kube over HTTP(S) with aiohttp; built from kopf's ConnectionInfo."""

    CR_PATH = "/apis/rdsiam.io/v1alpha1/namespaces/{ns}/rdsiamcredentials/{name}"

    def __init__(
        self, server: str, *, headers: Mapping[str, str] | None = None, ssl_context: ssl.SSLContext | bool = True,
        timeout: float = 10.0, connections: int = 32, token_file: str | None = None,
    ) -> None:
        """``token_file``: a bearer token file read again every minute and after a 401 (the in-cluster
        ServiceAccount token, which the kubelet rotates); it replaces any ``Authorization`` in ``headers``."""
        self.server = server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "rdsiam-operator", **(headers or {})}
        self._token_file = token_file
        self._auth: dict[str, str] = {}  # {"Authorization": ...} from token_file, sent with each request
        self._auth_read_at = -TOKEN_REREAD_SECONDS
        if token_file is not None:
            self._headers.pop("Authorization", None)
            self._read_token()
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.writes = 0  # count of mutating calls, for benchmarks and tests
        # Called with (path, status) when a mutating call fails (metrics count these).
        self.on_write_error: Callable[[str, int], None] | None = None

    @classmethod
    def from_connection_info(cls, info: Any) -> KubeApi:
        """Build from kopf's ``ConnectionInfo`` (the operator's own login)."""
        ctx: ssl.SSLContext | bool = True
        if info.server.startswith("https"):
            ctx = ssl.create_default_context(
                cafile=str(info.ca_path) if info.ca_path else None,
                cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data)
            if info.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if info.certificate_path and info.private_key_path:
                ctx.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
            elif info.certificate_data and info.private_key_data:
                ctx.load_cert_chain(*_materialise(info.certificate_data, info.private_key_data))
        # In the cluster (kopf read the projected ServiceAccount token): keep reading that file.
        token_file = SERVICE_ACCOUNT_TOKEN if info.token and _file_holds(SERVICE_ACCOUNT_TOKEN, info.token) else None
        return cls(info.server, headers=info.as_http_headers(), ssl_context=ctx, token_file=token_file)

    def _read_token(self) -> bool:
        """Read ``token_file`` again; True when the token changed. A failed read keeps the last token."""
        assert self._token_file is not None
        self._auth_read_at = time.monotonic()
        try:
            with open(self._token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            logger.warning("Could not read the API token file %s (%s); keeping the last token", self._token_file,
                           type(exc).__name__)
            return False
        fresh = {"Authorization": f"Bearer {token}"} if token else {}
        changed = fresh != self._auth
        self._auth = fresh
        return changed

    def _auth_headers(self) -> dict[str, str]:
        """The per-request ``Authorization`` (empty without a token file: the session's headers carry it)."""
        if self._token_file is not None and time.monotonic() - self._auth_read_at >= TOKEN_REREAD_SECONDS:
            self._read_token()
        return self._auth

    async def _request(
        self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
        params: Mapping[str, str] | None = None, allow_404: bool = False, decode: Decode = "json",
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> JsonDict | None:
        """One API call. ``decode``: how much of the answer to decode: ``"json"`` all of it, ``"metadata"``
        the object's metadata alone (:func:`metadata_of`), ``"none"`` nothing (``{}``). ``timeout``: other
        than the client's (a LIST of thousands of objects takes longer than one write)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl))
        data = json.dumps(body) if body is not None else None
        if method != "GET":
            self.writes += 1
        try:
            code, http_reason, raw = await self._send(method, path, data, content_type, params, timeout)
            if code == 401 and self._token_file is not None and self._read_token():
                # The kubelet rotated the token since it was last read: once more with the new one.
                code, http_reason, raw = await self._send(method, path, data, content_type, params, timeout)
        except TimeoutError:  # no answer in time: a temporary API failure like a 504, not a crash
            raise self._failed(method, path, ApiError(
                504, "Timeout", f"no answer from the API server within {(timeout or self._timeout).total:g} s")
            ) from None
        except aiohttp.ClientError as exc:  # refused, reset, DNS, ...: the request may not have arrived
            raise self._failed(method, path, ApiError(
                503, "ServiceUnavailable", f"could not reach the API server ({type(exc).__name__})")) from None
        if code == 404 and allow_404:
            return None
        if code >= 400:
            try:
                status = json.loads(raw)
                reason, message = status.get("reason", ""), status.get("message", "")
            except ValueError:
                reason, message = http_reason or "", raw[:200].decode(errors="replace")
            raise self._failed(method, path, ApiError(code, str(reason), str(message)))
        if not raw or decode == "none":
            return {}
        return metadata_of(raw) if decode == "metadata" else json.loads(raw)

    async def _send(
        self, method: str, path: str, data: str | None, content_type: str, params: Mapping[str, str] | None,
        timeout: aiohttp.ClientTimeout | None,
    ) -> tuple[int, str | None, bytes]:
        assert self._session is not None
        headers = self._auth_headers()
        if data is not None:
            headers = {**headers, "Content-Type": content_type}
        async with self._session.request(
            method, self.server + path, data=data, params=params, headers=headers or None,
            timeout=timeout or self._timeout,
        ) as resp:
            return resp.status, resp.reason, await resp.read()

    def _failed(self, method: str, path: str, exc: ApiError) -> ApiError:
        """Report a failed write (metrics count them by resource and status); returns ``exc`` to raise."""
        if method != "GET" and self.on_write_error is not None:
            self.on_write_error(path, exc.status)
        return exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # Secrets: get (conflict check on create), create, update (rotation).
    async def get_secret(self, namespace: str, name: str) -> JsonDict | None:
        return await self._request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", allow_404=True)

    # A resource whose watch event (metadata only) says its spec or refresh request changed, or that is
    # new: read whole before it is reconciled.
    async def get_credential(self, namespace: str, name: str) -> JsonDict | None:
        return await self._request("GET", self.CR_PATH.format(ns=namespace, name=name), allow_404=True)

    # Informers: LIST then WATCH of RdsIamCredentials and of managed Secrets (list, watch).
    async def list_objects(
        self, path: str, label_selector: str | None = None, each: Callable[[JsonDict], JsonDict] | None = None,
    ) -> JsonDict:
        """A LIST in pages of LIST_PAGE objects (``limit``/``continue``, as client-go's pager does), so no
        single answer holds every Secret with its data. ``each`` is applied to the items of each page as it
        arrives (the Secret informer keeps no data). The listing's resourceVersion is the first page's: every
        page of one listing shares it on a real API server. A continue token that expired (410) ends the
        listing with that error; the informer lists again from the start."""
        params = {"limit": str(LIST_PAGE), **({"labelSelector": label_selector} if label_selector else {})}
        items: list[JsonDict] = []
        version: str | None = None
        while True:
            page = await self._request("GET", path, params=params, timeout=LIST_TIMEOUT)
            assert page is not None
            meta = page.get("metadata") or {}
            if version is None:
                version = meta.get("resourceVersion")
            found = page.get("items") or []
            items.extend(map(each, found) if each is not None else found)
            del page, found
            token = meta.get("continue")
            if not token:
                return {"items": items, "metadata": {"resourceVersion": version}}
            params["continue"] = token

    async def watch_objects(
        self, path: str, resource_version: str, label_selector: str | None = None, timeout: int = 300,
        metadata_only: bool = False,
    ) -> AsyncIterator[JsonDict]:
        """Yield watch events until the server ends the stream (``timeoutSeconds``) or drops it.

        ``metadata_only``: events carry ``PartialObjectMetadata`` (no data), as for client-go's metadata
        informers: the operator's own Secret writes echo back without their tokens.
        """
        if self._session is None or self._session.closed:
            await self._request("GET", "/version")
        assert self._session is not None
        params = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout)}
        if label_selector:
            params["labelSelector"] = label_selector
        headers = {**self._auth_headers(), **({"Accept": METADATA_ONLY} if metadata_only else {})}
        async with self._session.get(
            self.server + path, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout + 30),
            headers=headers or None,
        ) as resp:
            if resp.status == 401 and self._token_file is not None:
                self._read_token()  # the informer watches again soon, with the token read now
            if resp.status >= 400:
                raise ApiError(resp.status, resp.reason or "", (await resp.text())[:200])
            buffer = b""
            async for chunk in resp.content.iter_any():  # no line-length limit: Secrets can be 1 MiB
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)

    # A Secret write answers with the whole Secret; only its metadata (uid, resourceVersion) is decoded:
    # the caller knows the data it wrote, and the data (three copies of the token) is most of the bytes.
    async def create_secret(self, namespace: str, body: JsonDict) -> JsonDict:
        """Create the Secret; returns ``{"metadata": ...}`` of the created Secret."""
        result = await self._request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=body, decode="metadata")
        assert result is not None
        return result

    async def replace_secret(self, namespace: str, name: str, body: JsonDict) -> JsonDict:
        """Replace the Secret (optimistic: ``metadata.resourceVersion`` in ``body``); returns
        ``{"metadata": ...}`` of the written Secret."""
        result = await self._request(
            "PUT", f"/api/v1/namespaces/{namespace}/secrets/{name}", body=body, decode="metadata")
        assert result is not None
        return result

    async def patch_status(self, namespace: str, name: str, status: JsonDict) -> None:
        """Merge-patch the status subresource. The answer (the whole object) is not decoded: the caller
        knows what it wrote, and the watch brings the object."""
        await self._request(
            "PATCH", self.CR_PATH.format(ns=namespace, name=name) + "/status", body={"status": status},
            content_type="application/merge-patch+json", decode="none")

    async def post_event(self, namespace: str, body: JsonDict) -> None:
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", body=body)

    # Identity: ServiceAccount mode reads the SA's role annotation and requests a token for it.
    async def get_service_account(self, namespace: str, name: str) -> JsonDict | None:
        return await self._request(
            "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}", allow_404=True)

    async def request_token(
        self, namespace: str, name: str, audience: str, seconds: int,
    ) -> tuple[str, str | None]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience], "expirationSeconds": seconds}}
        result = await self._request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body=body)
        assert result is not None
        status = result.get("status", {})
        return status["token"], status.get("expirationTimestamp")

    # Tenancy policy reads namespace labels/annotations.
    async def get_namespace(self, name: str) -> JsonDict | None:
        return await self._request("GET", f"/api/v1/namespaces/{name}", allow_404=True)

    # Leader election (replicas > 1).
    async def get_lease(self, namespace: str, name: str) -> JsonDict | None:
        return await self._request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", allow_404=True)

    async def create_lease(self, namespace: str, body: JsonDict) -> JsonDict:
        result = await self._request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=body)
        assert result is not None
        return result

    async def replace_lease(self, namespace: str, name: str, body: JsonDict) -> JsonDict:
        result = await self._request(
            "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", body=body)
        assert result is not None
        return result


# What may come before "metadata" in an API object's JSON for metadata_of to trust the key is the object's
# own: kube-apiserver writes kind and apiVersion first (the emulator apiVersion, kind).
_BEFORE_METADATA = re.compile(rb'\{\s*(?:"(?:kind|apiVersion)"\s*:\s*"[^"\\]*"\s*,\s*)*"metadata"\s*:\s*')
_DECODER = json.JSONDecoder()


def _file_holds(path: str, text: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() == text
    except OSError:
        return False


def metadata_of(raw: bytes) -> JsonDict:
    """``{"metadata": ...}`` of an API object's JSON, decoding the metadata and nothing after it.

    Only when the object starts with its metadata (after ``kind``/``apiVersion``), so the key cannot be
    one inside another field; any other shape is decoded whole and its metadata returned."""
    start = _BEFORE_METADATA.match(raw)
    if start is not None:
        try:
            meta, _ = _DECODER.raw_decode(raw[start.end():].decode())
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            return {"metadata": meta}
    whole = json.loads(raw)
    meta = whole.get("metadata") if isinstance(whole, dict) else None
    return {"metadata": meta if isinstance(meta, dict) else {}}


def _materialise(cert: str | bytes, key: str | bytes) -> tuple[str, str]:
    """load_cert_chain needs files: write inline kubeconfig credentials to private temp files."""
    import tempfile

    paths = []
    for blob in (cert, key):
        fd, path = tempfile.mkstemp(prefix="rdsiam-kube-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob.encode() if isinstance(blob, str) else blob)
        paths.append(path)
    return paths[0], paths[1]
