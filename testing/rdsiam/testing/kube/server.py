"""The HTTP face of the emulator: a ``kmock.KubernetesEmulator`` subclass with its own dispatch.

kmock is kept as the base (its ``RawHandler`` request protocol, ``kmock.Request`` objects,
the DSL reactions a test may still add on ``emulator.handler``, its bundled resource
catalogue) but the pieces that do not scale or do not behave like kube-apiserver are
replaced: the dispatch (kmock re-scans the whole request log for each request), request
parsing of Kubernetes paths, the object store, discovery, watch streams, and error bodies.
kmock DSL reactions, when a test registers any, are consulted first on a bounded window
of recent requests; without reactions that code path costs nothing.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp.web
import attrs
import kmock
import yaml

from rdsiam.testing.kube import errors as err
from rdsiam.testing.kube import protobuf
from rdsiam.testing.kube.api import PATCH_TYPES, Api, WriteResult, render
from rdsiam.testing.kube.discovery import VERSION_INFO, Discovery
from rdsiam.testing.kube.errors import ApiError, FieldError
from rdsiam.testing.kube.faults import Fault, FaultSet, RequestLog, RequestRecord
from rdsiam.testing.kube.meta import now_rfc3339
from rdsiam.testing.kube.openapi import OpenAPI
from rdsiam.testing.kube.paths import ResourcePath, parse_resource_path
from rdsiam.testing.kube.resources import Registry, ResourceType
from rdsiam.testing.kube.selectors import FieldSelector, LabelSelector, Selector
from rdsiam.testing.kube.store import DROP, Store, Watcher
from rdsiam.testing.kube.tables import table
from rdsiam.testing.kube.tokens import DEFAULT_EXPIRATION, MAX_EXPIRATION, MIN_EXPIRATION, TokenIssuer

__all__ = ["ApiHandler", "Backend"]

logger = logging.getLogger(__name__)

JSON = "application/json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
# What a watch's events carry, by its Accept header: the object, a Table row (kubectl get -w), or
# PartialObjectMetadata (a metadata informer's watch).
WatchShape = Literal["object", "table", "metadata"]
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
    ("", "pods"): {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
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


def _wants_metadata(accept: str) -> str | None:
    """``PartialObjectMetadata`` or ``PartialObjectMetadataList`` when the first media type asks for it
    (what client-go's metadata informers send), else None."""
    first = accept.split(",")[0] if accept else ""
    if "g=meta.k8s.io" not in first:
        return None
    for part in first.split(";"):
        key, _, value = part.strip().partition("=")
        if key == "as" and value in ("PartialObjectMetadata", "PartialObjectMetadataList"):
            return value
    return None


def _partial(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def _not_acceptable(wanted: str, rtype: ResourceType, is_list: bool) -> err.ApiError:
    """406 for PartialObjectMetadata(List) asked of the other shape, in the real server's words."""
    if rtype.crd is not None:
        go_type = "*unstructured.UnstructuredList" if is_list else "*unstructured.Unstructured"
    else:
        go_type = f"*{rtype.group.split('.')[0] or 'core'}.{rtype.kind}{'List' if is_list else ''}"
    what = f"a list ({go_type})" if is_list else f"not a list ({go_type})"
    return err.ApiError(406, "NotAcceptable", f"you requested {wanted}, but the requested object is {what}")


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


@attrs.define(kw_only=True)
class ApiHandler(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the dispatch replaced by :class:`Api` (see module doc)."""

    backend: Backend

    def __attrs_post_init__(self) -> None:
        # Deliberately not calling super(): kmock's fallback reactions would be matched by
        # re-scanning the request history on each request. Only tests' own reactions remain.
        self._requests = collections.deque(maxlen=1000)  # type: ignore[assignment]

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
            accept=raw.headers.get("Accept", ""),
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
                if fault.latency:
                    await asyncio.sleep(fault.latency)
                if fault.status is not None:
                    response = await self._fault_response(raw, fault, is_watch)
                    record.status = response.status
                    return response
            if self._payloads:
                response_or_none = await self._kmock_reactions(raw, body, rpath)
                if response_or_none is not None:
                    record.status = response_or_none.status
                    return response_or_none
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

    # ------------------------------------------------------------------ kmock DSL

    async def _kmock_reactions(
        self, raw: aiohttp.web.BaseRequest, body: bytes, rpath: ResourcePath | None
    ) -> aiohttp.web.StreamResponse | None:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = kmock.Request(
            id=len(self._requests),
            method=raw.method,
            url=raw.url,
            params=dict(raw.query),
            headers=dict(raw.headers),
            body=body,
            text=body.decode(errors="replace"),
            data=data,
            resource=kmock.resource(rpath.group, rpath.version, rpath.plural) if rpath else None,
            namespace=rpath.namespace if rpath else None,
            name=rpath.name if rpath else None,
            subresource=rpath.subresource if rpath else None,
            raw_request=raw,
        )
        self._requests.append(request)
        try:
            return await kmock.RawHandler._handle(self, request)
        except NotImplementedError:
            return None

    # ------------------------------------------------------------------ faults

    async def _fault_response(
        self, raw: aiohttp.web.BaseRequest, fault: Fault, is_watch: bool
    ) -> aiohttp.web.StreamResponse:
        assert fault.status is not None
        error = err.generic(fault.status, fault.message, fault.reason)
        if fault.retry_after is not None:
            error.headers["Retry-After"] = str(fault.retry_after)
            error.details = {"retryAfterSeconds": fault.retry_after}
        if is_watch and fault.status == 410:
            error = err.expired(fault.message or "too old resource version")
            response = aiohttp.web.StreamResponse(status=200)
            response.content_type = JSON
            await response.prepare(raw)
            await response.write(_dumps({"type": "ERROR", "object": error.status()}) + b"\n")
            await response.write_eof()
            return response
        return _json(error.status(), fault.status, headers=error.headers or None)

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
        dry_run = params.get("dryRun") == "All"
        validation = params.get("fieldValidation", "Warn")
        result: WriteResult
        if method == "POST" and not rpath.name:
            result = backend.api.create(
                rtype, rpath.namespace, self._body(body, raw), dry_run=dry_run, field_validation=validation
            )
            return self._write_response(result, 201)
        if method == "PUT" and rpath.name:
            result = backend.api.replace(
                rtype,
                rpath.namespace,
                rpath.name,
                self._body(body, raw),
                subresource=rpath.subresource,
                dry_run=dry_run,
                field_validation=validation,
            )
            return self._write_response(result, 200)
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
                self._body(body, raw, yaml_ok=True),
                patch_type,
                subresource=rpath.subresource,
                dry_run=dry_run,
                field_validation=validation,
                force=params.get("force") == "true",
            )
            return self._write_response(result, 201 if result.created else 200)
        if method == "DELETE" and rpath.name:
            options = self._body(body, raw) if body.strip() else {}
            if "propagationPolicy" in params:
                options = {**options, "propagationPolicy": params["propagationPolicy"]}
            obj, removed = backend.api.delete(rtype, rpath.namespace, rpath.name, options, dry_run=dry_run)
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
            return _json(obj, 200 if removed else 202)
        if method == "DELETE":
            return self._delete_collection(raw, rtype, rpath)
        raise err.method_not_supported(rtype.group, rtype.plural, method.lower())

    def _body(self, body: bytes, raw: aiohttp.web.BaseRequest, *, yaml_ok: bool = False) -> Any:
        content_type = raw.headers.get("Content-Type", "")
        if content_type.startswith(protobuf.MEDIA_TYPE):
            return protobuf.decode(body)
        try:
            if (yaml_ok and "yaml" in content_type) or "application/yaml" in content_type:
                return yaml.safe_load(body.decode())
            return json.loads(body) if body else None
        except (ValueError, yaml.YAMLError) as exc:
            raise err.bad_request(f"error decoding request body: {exc}") from None

    def _write_response(self, result: WriteResult, status: int) -> aiohttp.web.Response:
        headers = {"Warning": ", ".join(f'299 - "{w}"' for w in result.warnings)} if result.warnings else None
        return _json(result.obj, status, headers=headers)

    def _respond_objects(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, obj: dict[str, Any]
    ) -> aiohttp.web.Response:
        wanted = _wants_metadata(raw.headers.get("Accept", ""))
        if wanted == "PartialObjectMetadata":
            return _json(_partial(obj))
        if wanted:
            raise _not_acceptable(wanted, rtype, is_list=False)
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
        limit = int(raw.query.get("limit") or 0)
        token = raw.query.get("continue")
        continue_token = ""
        remaining = 0
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError, TypeError):
                raise err.bad_request(
                    "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
                ) from None
            items = [o for o in items if [o["metadata"].get("namespace") or "", o["metadata"]["name"]] > start]
        if limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            last = items[-1]["metadata"]
            continue_token = base64.urlsafe_b64encode(
                json.dumps({"start": [last.get("namespace") or "", last["name"]], "rv": rv}).encode()
            ).decode()
        if _wants_table(raw.headers.get("Accept", "")):
            include = raw.query.get("includeObject", "Metadata")
            return _json(
                table(rtype, items, resource_version=rv, include_object=include, continue_token=continue_token),
                content_type=TABLE,
            )
        metadata: dict[str, Any] = {"resourceVersion": rv}
        if continue_token:
            metadata["continue"] = continue_token
            metadata["remainingItemCount"] = remaining
        elif rtype.crd is not None:
            metadata["continue"] = ""  # custom resource lists carry an empty token, built-ins none
        wanted = _wants_metadata(raw.headers.get("Accept", ""))
        if wanted == "PartialObjectMetadataList":
            return _json({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                          "metadata": {k: v for k, v in metadata.items() if v != ""},
                          # a custom resource's empty list is Go's nil slice: null
                          "items": [_partial(o) for o in items] or (None if rtype.crd is not None else [])})
        if wanted:
            raise _not_acceptable(wanted, rtype, is_list=True)
        return _json({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": metadata, "items": items})

    def _delete_collection(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, rpath: ResourcePath
    ) -> aiohttp.web.Response:
        api = self.backend.api
        deleted = []
        for obj in api.list_objects(rtype, self._selector(raw, rtype, rpath)):
            meta = obj["metadata"]
            gone, _ = api.delete(rtype, meta.get("namespace"), meta["name"], {})
            deleted.append(gone)
        return _json(
            {
                "kind": rtype.list_kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self.backend.store.rv)},
                "items": deleted,
            }
        )

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
        elif path == "/.well-known/openid-configuration":
            found = backend.tokens.openid_configuration()
        elif path == "/openid/v1/jwks":
            return _json(backend.tokens.jwks(), content_type="application/jwk-set+json")
        elif path in ("/healthz", "/livez", "/readyz"):
            return aiohttp.web.Response(text="ok", content_type="text/plain")
        elif path == "/":
            paths = [
                "/api",
                "/api/v1",
                "/apis",
                "/healthz",
                "/livez",
                "/readyz",
                "/version",
                "/.well-known/openid-configuration",
                "/openid/v1/jwks",
            ]
            paths += [f"/apis/{g}" for g in backend.registry.groups()]
            return _json({"paths": sorted(paths)})
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
        accept = raw.headers.get("Accept", "")
        shape: WatchShape = "table" if _wants_table(accept) else "metadata" if _wants_metadata(accept) else "object"
        bookmarks = params.get("allowWatchBookmarks") in ("true", "1")
        send_initial = params.get("sendInitialEvents") == "true"
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        rv_param = params.get("resourceVersion") or ""

        # Synchronous part: nothing can happen in between the snapshot and the registration.
        table_ = store.table(rtype.storage_key)
        watcher = Watcher(selector, raw.path)
        initial: list[dict[str, Any]] = []
        gone: str | None = None
        if rv_param in ("", "0") or send_initial:
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
        response.headers["Content-Type"] = TABLE if shape == "table" else JSON
        response.headers["Cache-Control"] = "no-cache, private"
        response.enable_chunked_encoding()
        try:
            await response.prepare(raw)
            record.status = 200
            if gone is not None:
                await response.write(_dumps({"type": "ERROR", "object": err.expired(gone).status()}) + b"\n")
                await response.write_eof()
                return response
            chunk = b"".join(self._event(rtype, "ADDED", obj, shape) for obj in initial)
            if send_initial and bookmarks:
                chunk += self._bookmark(rtype, shape == "metadata", initial_end=True)
            if chunk:
                await response.write(chunk)
            return await self._pump(raw, response, rtype, watcher, shape, bookmarks, timeout)
        finally:
            table_.watchers.discard(watcher)
            backend.watches.discard(watcher)

    async def _pump(
        self,
        raw: aiohttp.web.BaseRequest,
        response: aiohttp.web.StreamResponse,
        rtype: ResourceType,
        watcher: Watcher,
        shape: WatchShape,
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
                            await response.write(self._bookmark(rtype, shape == "metadata"))
                        break
                    if bookmarks:
                        await response.write(self._bookmark(rtype, shape == "metadata"))
                    next_bookmark = loop.time() + interval
                    continue
            else:
                item = queue.get_nowait()
            chunks: list[bytes] = []
            while True:
                if item is None:
                    if chunks:
                        await response.write(b"".join(chunks))
                    await response.write_eof()
                    return response
                if item == DROP:
                    if raw.transport is not None:
                        raw.transport.abort()  # like a broken connection: no final chunk
                    return response
                assert isinstance(item, tuple)
                chunks.append(self._event(rtype, item[0], item[1], shape))
                if queue.empty():
                    break
                item = queue.get_nowait()
            await response.write(b"".join(chunks))
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _event(self, rtype: ResourceType, kind: str, obj: dict[str, Any], shape: WatchShape) -> bytes:
        """One watch line, its object in the ``shape`` the watch asked for."""
        if shape == "metadata":
            payload = _partial(obj)
        else:
            rendered = render(obj, rtype)
            payload = table(rtype, [rendered]) if shape == "table" else rendered
        return _dumps({"type": kind, "object": payload}) + b"\n"

    def _bookmark(self, rtype: ResourceType, metadata_only: bool = False, *, initial_end: bool = False) -> bytes:
        metadata: dict[str, Any] = {"resourceVersion": str(self.backend.store.rv)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        kind, api_version = ("PartialObjectMetadata", "meta.k8s.io/v1") if metadata_only else \
            (rtype.kind, rtype.api_version)
        return _dumps({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": metadata}}) \
            + b"\n"
