"""A small synchronous JSON client for the Kubernetes API, for tests.

Works against the emulator (plain HTTP) and a real kube-apiserver (HTTPS with a CA file,
a bearer token and/or a client certificate). Paths are the API's own paths, so a test
reads like the HTTP traffic it causes::

    client = KubeClient("http://127.0.0.1:8080", token="...")
    client.create("/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}, "data": {}})
    client.patch("/api/v1/namespaces/default/secrets/s", {"metadata": {"labels": {"a": "b"}}})
    for event in client.watch("/api/v1/namespaces/default/secrets", timeout_seconds=5):
        ...

Errors raise :class:`KubeApiError` carrying the ``Status`` body. Tokens are never put into
exception text or ``repr``.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rdsiam.testing.kube.paths import resource_url

__all__ = ["KubeApiError", "KubeClient", "resource_url"]

_PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}


class KubeApiError(Exception):
    """An HTTP error answered by the API server; ``status`` is the ``Status`` body (if any)."""

    def __init__(self, code: int, status: dict[str, Any] | None, method: str, path: str) -> None:
        self.code = code
        self.status = status or {}
        self.reason = self.status.get("reason", "")
        self.message = self.status.get("message", "")
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: {code} {self.reason}: {self.message}")


class KubeClient:
    """Thread-safe (one keep-alive connection per thread) JSON client; see the module docstring."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_file: str | None = None,
        client_cert: tuple[str, str] | str | None = None,
        *,
        timeout: float = 30.0,
        user_agent: str = "rdsiam-testing-kubeclient",
    ) -> None:
        parsed = urllib.parse.urlsplit(server)
        self.server = server.rstrip("/")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or (443 if self._https else 80)
        self._token = token
        self.timeout = timeout
        self.user_agent = user_agent
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if client_cert is not None:
                if isinstance(client_cert, str):
                    self._ssl.load_cert_chain(client_cert)
                else:
                    self._ssl.load_cert_chain(client_cert[0], client_cert[1])
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"KubeClient({self.server!r})"

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> KubeClient:
        """A client for the (current) context of a kubeconfig file (token, CA file, client cert)."""
        config = yaml.safe_load(Path(path).read_text())
        name = context or config.get("current-context")
        ctx = next(c["context"] for c in config["contexts"] if c["name"] == name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
        user: dict[str, Any] = next((u["user"] for u in config.get("users") or [] if u["name"] == ctx.get("user")), {})
        cert = (user["client-certificate"], user["client-key"]) if user.get("client-certificate") else None
        return cls(
            cluster["server"],
            token=user.get("token"),
            ca_file=cluster.get("certificate-authority"),
            client_cert=cert,
        )

    # ------------------------------------------------------------------ transport

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._new_connection(self.timeout)
            self._local.conn = conn
        return conn

    def _new_connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, content_type: str | None = None, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": self.user_agent}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        raw: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON body (or bytes with ``raw``); raise on >= 400."""
        url = path + ("?" + urllib.parse.urlencode(_clean(params)) if params and _clean(params) else "")
        payload = None
        if body is not None:
            payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = self._headers(content_type if payload is not None else None, accept)
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, url, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                break
            except (
                ConnectionError,
                http.client.RemoteDisconnected,
                http.client.CannotSendRequest,
                http.client.BadStatusLine,
            ):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        if response.status >= 400:
            try:
                status = json.loads(data)
            except ValueError:
                status = {"message": data.decode(errors="replace")[:500]}
            raise KubeApiError(response.status, status if isinstance(status, dict) else None, method, path)
        if raw:
            return data
        return json.loads(data) if data else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ verbs

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", path, params=params)
        return result

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except KubeApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        if label_selector is not None:
            params["labelSelector"] = label_selector
        if field_selector is not None:
            params["fieldSelector"] = field_selector
        return self.get(path, **params)

    def create(self, path: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", path, body=body, params=params)
        return result

    def replace(self, path: str, body: dict[str, Any], **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.request("PUT", path, body=body, params=params)
        return result

    def patch(self, path: str, patch: Any, type: str = "merge", **params: Any) -> dict[str, Any]:
        """``type``: ``merge`` (default), ``json``, ``strategic`` or ``apply`` (set fieldManager)."""
        content_type = _PATCH_TYPES.get(type, type)
        result: dict[str, Any] = self.request("PATCH", path, body=patch, params=params, content_type=content_type)
        return result

    def delete(self, path: str, *, propagation_policy: str | None = None, **params: Any) -> dict[str, Any]:
        body = (
            {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation_policy}
            if propagation_policy
            else None
        )
        result: dict[str, Any] = self.request("DELETE", path, body=body, params=params)
        return result

    def watch(
        self,
        path: str,
        *,
        resource_version: str | None = None,
        timeout_seconds: float | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = False,
        send_initial_events: bool = False,
        read_timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield watch events until the server ends the stream (use ``timeout_seconds``) or the caller stops.

        Runs on its own connection; closing the generator closes the connection.
        """
        params: dict[str, Any] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
            "allowWatchBookmarks": "true" if allow_bookmarks else None,
            "timeoutSeconds": int(timeout_seconds) if timeout_seconds is not None else None,
            "sendInitialEvents": "true" if send_initial_events else None,
            "resourceVersionMatch": "NotOlderThan" if send_initial_events else None,
        }
        url = path + "?" + urllib.parse.urlencode(_clean(params))
        limit = (
            read_timeout
            if read_timeout is not None
            else ((timeout_seconds or 0) + self.timeout if timeout_seconds else None)
        )
        conn = self._new_connection(limit)
        try:
            conn.request("GET", url, headers=self._headers())
            response = conn.getresponse()
            if response.status >= 400:
                data = response.read()
                try:
                    status = json.loads(data)
                except ValueError:
                    status = None
                raise KubeApiError(response.status, status, "GET", path)
            while True:
                line = response.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}
