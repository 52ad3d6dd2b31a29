"""The HTTP face of the emulator: an ``aiohttp`` low-level handler routing to :class:`Api`.

Serves resources (JSON bodies, plus the protobuf bodies ``kubectl create``/``delete`` send),
Table output for ``kubectl get``, watches, TokenRequest and the non-resource endpoints kubectl
needs (discovery, ``/version``, a minimal ``/openapi/v3``); logs every request and answers
injected faults first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import yaml

from rdsiam.testing.kube import errors as err
from rdsiam.testing.kube import protobuf
from rdsiam.testing.kube.api import PATCH_TYPES, Api, WriteResult, render
from rdsiam.testing.kube.discovery import VERSION_INFO, Discovery
from rdsiam.testing.kube.errors import ApiError, FieldError
from rdsiam.testing.kube.faults import FaultSet, RequestLog, RequestRecord
from rdsiam.testing.kube.meta import now_rfc3339
from rdsiam.testing.kube.openapi import OpenAPI
from rdsiam.testing.kube.paths import ResourcePath, parse_resource_path
from rdsiam.testing.kube.resources import Registry, ResourceType
from rdsiam.testing.kube.selectors import FieldSelector, LabelSelector, Selector
from rdsiam.testing.kube.store import Store, Watcher
from rdsiam.testing.kube.tables import table
from rdsiam.testing.kube.tokens import DEFAULT_EXPIRATION, MAX_EXPIRATION, MIN_EXPIRATION, TokenIssuer

__all__ = ["ApiHandler", "Backend"]

logger = logging.getLogger(__name__)

JSON = "application/json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_EVENT_FIELDS = {
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
}
_EXTRA_FIELDS: dict[tuple[str, str], set[str]] = {
    ("", "events"): _EVENT_FIELDS,
    ("", "secrets"): {"type"},
    ("", "namespaces"): {"status.phase"},
}


@dataclass
class Backend:
    """Everything the handler serves from; owned by the emulator."""

    registry: Registry
    store: Store
    api: Api
    tokens: TokenIssuer
    faults: FaultSet
    log: RequestLog
    server_address: str = "127.0.0.1:0"
    bookmark_interval: float = 60.0
    watches: set[Watcher] = field(default_factory=set)
    discovery: Discovery = field(init=False)
    openapi: OpenAPI = field(init=False)

    def __post_init__(self) -> None:
        self.discovery = Discovery(self.registry)
        self.openapi = OpenAPI(self.registry)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _json(
    body: Any, status: int = 200, content_type: str = JSON, headers: dict[str, str] | None = None
) -> aiohttp.web.Response:
    response = aiohttp.web.Response(body=_dumps(body), status=status, headers=headers)
    response.content_type = content_type.split(";")[0]
    if ";" in content_type:
        response.headers["Content-Type"] = content_type
    return response


def _supported_fields(rtype: ResourceType) -> set[str]:
    fields = {"metadata.name", "metadata.namespace"}
    fields |= _EXTRA_FIELDS.get((rtype.group, rtype.plural), set())
    fields |= set(rtype.selectable_fields)
    return fields


def _meta_only(rtype: ResourceType) -> bool:
    """Built-ins selectable by metadata only word an unknown field label differently."""
    return rtype.crd is None and (rtype.group, rtype.plural) not in _EXTRA_FIELDS


def _wants_table(accept: str) -> bool:
    first = accept.split(",")[0] if accept else ""
    return "as=Table" in first and "g=meta.k8s.io" in first


def _verb(method: str, rpath: ResourcePath, is_watch: bool) -> str:
    if method == "GET":
        return "watch" if is_watch else ("get" if rpath.name else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if rpath.name else "deletecollection"
    return method.lower()


class ApiHandler:
    """The ``aiohttp.web.Server`` handler: logs the request, answers a matching fault, else serves it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        backend = self.backend
        path = raw.path
        rpath = parse_resource_path(path) if path.startswith("/api") else None
        is_watch = raw.method == "GET" and raw.query.get("watch") in ("true", "1")
        record = RequestRecord(
            raw.method,
            path,
            dict(raw.query),
            raw.headers.get("User-Agent", ""),
            content_type=raw.headers.get("Content-Type", ""),
        )
        if rpath is not None:
            record.verb = _verb(raw.method, rpath, is_watch)
            record.group, record.version, record.resource = rpath.group, rpath.version, rpath.plural
            record.subresource = rpath.subresource or ""
            record.namespace, record.name = rpath.namespace or "", rpath.name or ""
            if (
                rpath.group == ""
                and rpath.plural == "namespaces"
                and rpath.name
                and not rpath.subresource
                and raw.method == "GET"
                and not is_watch
            ):
                record.namespace = ""
        backend.log.append(record)
        response: aiohttp.web.StreamResponse
        try:
            fault = backend.faults.take(raw.method, path, raw.query_string, is_watch)
            if fault is not None:
                response = await self._fault_response(raw, fault.status, is_watch)
                record.status = response.status
                return response
            response = await self._serve(raw, body, rpath, is_watch, record)
        except ApiError as exc:
            response = _json(exc.status(), exc.code, headers=exc.headers or None)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            logger.exception("The Kubernetes emulator failed on %s %s", raw.method, path)
            response = _json(err.internal(f"{type(exc).__name__}: {exc}").status(), 500)
        record.status = response.status
        return response

    # ------------------------------------------------------------------ faults

    async def _fault_response(
        self, raw: aiohttp.web.BaseRequest, status: int, is_watch: bool
    ) -> aiohttp.web.StreamResponse:
        error = err.generic(status)
        if is_watch and status == 410:
            error = err.expired("too old resource version")
            response = aiohttp.web.StreamResponse(status=200)
            response.content_type = JSON
            await response.prepare(raw)
            await response.write(_dumps({"type": "ERROR", "object": error.status()}) + b"\n")
            await response.write_eof()
            return response
        return _json(error.status(), status)

    # ------------------------------------------------------------------ routing

    async def _serve(
        self,
        raw: aiohttp.web.BaseRequest,
        body: bytes,
        rpath: ResourcePath | None,
        is_watch: bool,
        record: RequestRecord,
    ) -> aiohttp.web.StreamResponse:
        if rpath is None:
            return self._serve_non_resource(raw)
        backend = self.backend
        rtype = backend.registry.get(rpath.group, rpath.version, rpath.plural)
        if rtype is None:
            raise err.generic(404)
        if rpath.subresource == "token" and rtype.group == "" and rtype.plural == "serviceaccounts":
            if raw.method != "POST":
                raise err.method_not_supported("", "serviceaccounts/token", raw.method.lower())
            return self._token_request(raw, rtype, rpath, body)
        if rpath.subresource not in (None, "status"):
            raise err.generic(404)
        method = raw.method
        if method == "GET":
            if is_watch:
                return await self._watch_response(raw, rtype, rpath, record)
            if rpath.name:
                obj = backend.api.get(rtype, rpath.namespace, rpath.name)
                if rpath.subresource == "status" and not rtype.has_status:
                    raise err.generic(404)
                return self._respond_objects(raw, rtype, obj)
            return self._list_response(raw, rtype, rpath)
        params = raw.query
        result: WriteResult
        if method == "POST" and not rpath.name:
            result = backend.api.create(rtype, rpath.namespace, self._body(body, raw))
            return _json(result.obj, 201)
        if method == "PUT" and rpath.name:
            result = backend.api.replace(
                rtype, rpath.namespace, rpath.name, self._body(body, raw), subresource=rpath.subresource
            )
            return _json(result.obj, 200)
        if method == "PATCH" and rpath.name:
            content_type = raw.headers.get("Content-Type", "").split(";")[0].strip()
            patch_type = PATCH_TYPES.get(content_type)
            if patch_type is None:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - "
                    f"accepted media types include: {', '.join(PATCH_TYPES)}",
                    {},
                )
            result = backend.api.patch(
                rtype,
                rpath.namespace,
                rpath.name,
                self._body(body, raw),
                patch_type,
                subresource=rpath.subresource,
            )
            return _json(result.obj, 200)
        if method == "DELETE" and rpath.name:
            options = self._body(body, raw) if body.strip() else {}
            if "propagationPolicy" in params:
                options = {**options, "propagationPolicy": params["propagationPolicy"]}
            obj, removed = backend.api.delete(rtype, rpath.namespace, rpath.name, options)
            if removed:
                details = {
                    "name": rpath.name,
                    "group": rtype.group,
                    "kind": rtype.plural,
                    "uid": obj["metadata"].get("uid"),
                }
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {k: v for k, v in details.items() if v},
                }
                return _json(status, 200)
            return _json(obj, 202)
        raise err.method_not_supported(rtype.group, rtype.plural, method.lower())

    def _body(self, body: bytes, raw: aiohttp.web.BaseRequest) -> Any:
        content_type = raw.headers.get("Content-Type", "")
        if content_type.startswith(protobuf.MEDIA_TYPE):
            return protobuf.decode(body)
        try:
            if "application/yaml" in content_type:
                return yaml.safe_load(body.decode())
            return json.loads(body) if body else None
        except (ValueError, yaml.YAMLError) as exc:
            raise err.bad_request(f"error decoding request body: {exc}") from None

    def _respond_objects(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, obj: dict[str, Any]
    ) -> aiohttp.web.Response:
        if _wants_table(raw.headers.get("Accept", "")):
            include = raw.query.get("includeObject", "Metadata")
            return _json(table(rtype, [obj], include_object=include), content_type=TABLE)
        return _json(obj)

    def _selector(self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, rpath: ResourcePath) -> Selector:
        labels = raw.query.get("labelSelector")
        fields = raw.query.get("fieldSelector")
        if rpath.name:  # GET .../NAME?watch=true: the deprecated single-object watch
            fields = f"metadata.name={rpath.name}" + (f",{fields}" if fields else "")
        return Selector(
            rpath.namespace if rtype.namespaced else None,
            LabelSelector(labels) if labels else None,
            FieldSelector(fields, _supported_fields(rtype), meta_only_wording=_meta_only(rtype)) if fields else None,
        )

    def _list_response(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, rpath: ResourcePath
    ) -> aiohttp.web.Response:
        backend = self.backend
        if rtype.namespaced is False and rpath.namespace:
            raise err.generic(404)
        items = backend.api.list_objects(rtype, self._selector(raw, rtype, rpath))
        rv = str(backend.store.rv)
        # No pagination: ``limit`` is ignored and everything comes in one answer (kubectl takes that).
        if _wants_table(raw.headers.get("Accept", "")):
            include = raw.query.get("includeObject", "Metadata")
            return _json(table(rtype, items, resource_version=rv, include_object=include), content_type=TABLE)
        metadata: dict[str, Any] = {"resourceVersion": rv}
        if rtype.crd is not None:
            metadata["continue"] = ""  # custom resource lists carry an empty token, built-ins none
        return _json({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": metadata, "items": items})

    # ------------------------------------------------------------------ TokenRequest

    def _token_request(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, rpath: ResourcePath, body: bytes
    ) -> aiohttp.web.Response:
        backend = self.backend
        assert rpath.name is not None
        sa = backend.api.get(rtype, rpath.namespace, rpath.name)
        request = self._body(body, raw) if body else {}
        spec = dict((request or {}).get("spec") or {})
        audiences = list(spec.get("audiences") or [backend.tokens.issuer])
        expiration = int(spec.get("expirationSeconds") or DEFAULT_EXPIRATION)
        if expiration < MIN_EXPIRATION:
            raise err.invalid(
                "authentication.k8s.io",
                "TokenRequest",
                "",  # the real server names no object here
                [
                    FieldError.invalid(
                        "spec.expirationSeconds",
                        expiration,
                        "may not specify a duration less than 10 minutes",
                    )
                ],
            )
        if expiration > MAX_EXPIRATION:
            raise err.invalid(
                "authentication.k8s.io",
                "TokenRequest",
                "",  # the real server names no object here
                [
                    FieldError.invalid(
                        "spec.expirationSeconds",
                        expiration,
                        "may not specify a duration larger than 2^32 seconds",
                    )
                ],
            )
        token, expires_at = backend.tokens.mint(
            rpath.namespace or "", rpath.name, sa["metadata"]["uid"], audiences, expiration
        )
        return _json(
            {
                "kind": "TokenRequest",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {
                    "name": rpath.name,
                    "namespace": rpath.namespace,
                    "uid": sa["metadata"]["uid"],
                    "creationTimestamp": now_rfc3339(),
                },
                "spec": {
                    "audiences": audiences,
                    "expirationSeconds": expiration,
                    "boundObjectRef": spec.get("boundObjectRef"),
                },
                "status": {"token": token, "expirationTimestamp": expires_at},
            },
            201,
        )

    # ------------------------------------------------------------------ non-resource

    def _serve_non_resource(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.Response:
        backend = self.backend
        discovery = backend.discovery
        path = raw.path.rstrip("/") or "/"
        if raw.method != "GET":
            raise err.generic(405)
        if path == "/api":
            return _json(discovery.api(backend.server_address))
        if path == "/apis":
            return _json(discovery.groups())
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            found = discovery.resource_list("", parts[1])
        elif parts[0] == "apis" and len(parts) == 2:
            found = discovery.group(parts[1])
        elif parts[0] == "apis" and len(parts) == 3:
            found = discovery.resource_list(parts[1], parts[2])
        elif path == "/openapi/v3":
            found = backend.openapi.index()
        elif path.startswith("/openapi/v3/"):
            found = backend.openapi.document(path[len("/openapi/v3/") :])
        elif path == "/version":
            found = dict(VERSION_INFO)
        elif path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok", content_type="text/plain")
        else:
            found = None
        if found is None:
            raise err.generic(404)
        return _json(found)

    # ------------------------------------------------------------------ watch

    async def _watch_response(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, rpath: ResourcePath, record: RequestRecord
    ) -> aiohttp.web.StreamResponse:
        backend = self.backend
        store = backend.store
        params = raw.query
        selector = self._selector(raw, rtype, rpath)
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        rv_param = params.get("resourceVersion") or ""

        # Synchronous part: nothing can happen in between the snapshot and the registration.
        table_ = store.table(rtype.storage_key)
        watcher = Watcher(selector, raw.path)
        initial: list[dict[str, Any]] = []
        gone: str | None = None
        if rv_param in ("", "0"):
            initial = backend.api.list_objects(rtype, selector)
        else:
            try:
                since = int(rv_param)
            except ValueError:
                raise err.bad_request(
                    f'resourceVersion: Invalid value: "{rv_param}": strconv.ParseUint: '
                    f'parsing "{rv_param}": invalid syntax'
                ) from None
            events = table_.events_since(since)
            if events is None:
                gone = f"too old resource version: {since} ({table_.floor + 1})"
            else:
                for event in events:
                    watcher.offer(event)
        if gone is None:
            table_.watchers.add(watcher)
            backend.watches.add(watcher)

        response = aiohttp.web.StreamResponse(status=200)
        response.headers["Content-Type"] = JSON
        response.headers["Cache-Control"] = "no-cache, private"
        response.enable_chunked_encoding()
        try:
            await response.prepare(raw)
            record.status = 200
            if gone is not None:
                await response.write(_dumps({"type": "ERROR", "object": err.expired(gone).status()}) + b"\n")
                await response.write_eof()
                return response
            chunk = b"".join(self._event(rtype, "ADDED", obj) for obj in initial)
            if chunk:
                await response.write(chunk)
            return await self._pump(response, rtype, watcher, bookmarks, timeout)
        finally:
            table_.watchers.discard(watcher)
            backend.watches.discard(watcher)

    async def _pump(
        self,
        response: aiohttp.web.StreamResponse,
        rtype: ResourceType,
        watcher: Watcher,
        bookmarks: bool,
        timeout: float | None,
    ) -> aiohttp.web.StreamResponse:
        loop = asyncio.get_running_loop()
        interval = self.backend.bookmark_interval
        deadline = loop.time() + timeout if timeout is not None else None
        next_bookmark = loop.time() + interval
        queue = watcher.queue
        while True:
            now = loop.time()
            wait = next_bookmark - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            if queue.empty():
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=max(wait, 0))
                except TimeoutError:
                    if not queue.empty():
                        continue
                    if deadline is not None and loop.time() >= deadline:
                        if bookmarks:
                            await response.write(self._bookmark(rtype))
                        break
                    if bookmarks:
                        await response.write(self._bookmark(rtype))
                    next_bookmark = loop.time() + interval
                    continue
            else:
                item = queue.get_nowait()
            chunks: list[bytes] = []
            while True:
                if item is None:  # end_watches() or shutdown: end the stream the normal way
                    if chunks:
                        await response.write(b"".join(chunks))
                    await response.write_eof()
                    return response
                chunks.append(self._event(rtype, item[0], item[1]))
                if queue.empty():
                    break
                item = queue.get_nowait()
            await response.write(b"".join(chunks))
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _event(self, rtype: ResourceType, kind: str, obj: dict[str, Any]) -> bytes:
        return _dumps({"type": kind, "object": render(obj, rtype)}) + b"\n"

    def _bookmark(self, rtype: ResourceType) -> bytes:
        metadata = {"resourceVersion": str(self.backend.store.rv)}
        return _dumps({"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version,
                                                      "metadata": metadata}}) + b"\n"
