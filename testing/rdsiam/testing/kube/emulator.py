"""``KubeEmulator``: the API server emulator running in a background thread with its own loop."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp.web
import yaml

from rdsiam.testing.kube.api import Api
from rdsiam.testing.kube.client import KubeClient
from rdsiam.testing.kube.errors import ApiError, bad_request
from rdsiam.testing.kube.faults import Fault, FaultSet, RequestLog
from rdsiam.testing.kube.resources import Registry
from rdsiam.testing.kube.server import ApiHandler, Backend
from rdsiam.testing.kube.store import Store
from rdsiam.testing.kube.tokens import TokenIssuer

__all__ = ["DEFAULT_NAMESPACES", "KubeEmulator"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
#: What :meth:`KubeEmulator.apply_manifest` takes: an object, YAML text, a path, or a list of those.
Manifest = dict[str, Any] | str | os.PathLike[str] | list[Any]


class KubeEmulator:
    """A Kubernetes API server emulator on ``host:port`` (port 0 picks a free one).

    Lifecycle: :meth:`start`/:meth:`stop` or a ``with`` block; it serves from a background
    thread with its own asyncio loop (so kopf, which cancels the tasks of its own loop, can
    run beside it). See the package docstring (``rdsiam.testing.kube``) for what is emulated.

    Public surface:

    * :attr:`url`, :attr:`kubeconfig` (bearer :attr:`token`, namespace ``default``),
      :meth:`client` (a :class:`~rdsiam.testing.kube.client.KubeClient`);
    * :meth:`apply_manifest` (create-or-replace from dicts, YAML, files, directories),
      :meth:`get`, :meth:`delete_namespace`, :meth:`call` (run code atomically on the loop);
    * :attr:`requests` (the request log), :meth:`inject` (failing requests), :meth:`end_watches`;
    * :attr:`issuer`, :meth:`verify_token` (ServiceAccount tokens from the TokenRequest API);
    * ``registry``, ``store`` and ``api`` are the internals: use them only inside :meth:`call`.

    ``history_limit`` bounds the watch event history kept per resource (older
    resourceVersions get ``410 Gone``); ``bookmark_interval`` is how often an idle watch
    that allows bookmarks receives one; ``namespaces`` are created at start.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history_limit: int = 10_000,
        request_log_limit: int = 100_000,
        bookmark_interval: float = 60.0,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = 0
        self.namespaces = tuple(namespaces)
        #: The bearer token written into the kubeconfig (any token is accepted).
        self.token = "emulator-" + secrets.token_urlsafe(16)
        self.registry = Registry.with_builtins()
        self.store = Store(history_limit)
        self.tokens = TokenIssuer()
        self.faults = FaultSet()
        self._log = RequestLog(request_log_limit)
        self.api = Api(self.registry, self.store)
        self._backend = Backend(
            self.registry,
            self.store,
            self.api,
            self.tokens,
            self.faults,
            self._log,
            bookmark_interval=bookmark_interval,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._handler: ApiHandler | None = None
        self._web: aiohttp.web.Server | None = None
        self._server: asyncio.Server | None = None
        self._dir: Path | None = None
        self.kubeconfig = ""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> KubeEmulator:
        if self._thread is not None:
            raise RuntimeError("the emulator is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=self._run_loop, args=(loop,), name="kube-emulator", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=30)
            self.tokens.issuer = self.url
            self._backend.server_address = f"{self.host}:{self.port}"
            self._dir = Path(tempfile.mkdtemp(prefix="rdsiam-kube-"))
            self.kubeconfig = str(self._dir / "kubeconfig")
            self._write_kubeconfig(Path(self.kubeconfig))
            for namespace in self.namespaces:
                self.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _astart(self) -> None:
        loop = asyncio.get_running_loop()
        self.api.defer = lambda fn: loop.call_soon(self._run_deferred, fn)
        self._handler = ApiHandler(self._backend)
        self._web = aiohttp.web.Server(self._handler, handler_cancellation=True, access_log=None)
        self._server = await loop.create_server(self._web, self.host, self._requested_port)
        self.port = self._server.sockets[0].getsockname()[1]

    @staticmethod
    def _run_deferred(fn: Callable[[], None]) -> None:
        try:
            fn()
        except ApiError as exc:
            logger.debug("A deferred controller action failed: %s", exc)
        except Exception:
            logger.exception("A deferred controller action failed")

    def stop(self) -> None:
        """Close open watches and connections, stop the loop thread, remove the kubeconfig."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=30)
        self._loop = self._thread = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _astop(self) -> None:
        for watcher in list(self._backend.watches):
            watcher.queue.put_nowait(None)
        await asyncio.sleep(0)
        if self._server is not None:
            self._server.close()
        if self._web is not None:
            await self._web.shutdown(timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    def _write_kubeconfig(self, path: Path) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"},
                }
            ],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the emulator is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> RequestLog:
        """The request log (method, path, query, status, user agent, RBAC verb/group/resource)."""
        return self._log

    @property
    def issuer(self) -> str:
        """The ``iss`` of ServiceAccount tokens (OIDC discovery at ``{issuer}/.well-known/...``)."""
        return self.tokens.issuer

    def verify_token(self, token: str, audience: str | list[str] | None = None) -> dict[str, Any]:
        """Verify a ServiceAccount token minted by this emulator and return its claims."""
        return self.tokens.verify(token, audience)

    # ------------------------------------------------------------------ in-process access

    def call(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Run ``fn`` on the emulator's loop thread (atomically with API requests) and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not started")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def client(self, **kwargs: Any) -> KubeClient:
        """A synchronous JSON client for this emulator (see :class:`KubeClient`)."""
        return KubeClient(self.url, token=self.token, **kwargs)

    def apply_manifest(self, source: Manifest) -> list[dict[str, Any]]:
        """Create or replace objects (CRDs included) from dicts, YAML text, files or directories.

        Namespaced objects without a namespace go to ``default``. A ``status`` in the
        manifest is written too (through the status subresource where there is one).
        """
        documents = _load_documents(source)
        return self.call(lambda: [self._apply_one(doc) for doc in documents])

    def _apply_one(self, doc: dict[str, Any]) -> dict[str, Any]:
        api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        rtype = self.registry.by_kind(api_version, kind)
        if rtype is None:
            raise bad_request(f'no matches for kind "{kind}" in version "{api_version}"')
        meta = doc.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if rtype.namespaced else None
        name = meta.get("name", "")
        existing = self.api.find(rtype, namespace, name) if name else None
        body = copy.deepcopy(doc)
        if existing is None:
            result = self.api.create(rtype, namespace, body).obj
        else:
            body.setdefault("metadata", {})["resourceVersion"] = existing["metadata"]["resourceVersion"]
            result = self.api.replace(rtype, namespace, name, body).obj
        if rtype.has_status and "status" in doc and (rtype.group, rtype.plural) != ("", "namespaces"):
            status_body = {**result, "status": doc["status"]}
            result = self.api.replace(
                rtype, namespace, result["metadata"]["name"], status_body, subresource="status"
            ).obj
        return result

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and (in the background) everything in it; no error if it is gone."""
        ns_type = self.registry.get("", "v1", "namespaces")
        assert ns_type is not None

        def delete() -> None:
            if self.api.find(ns_type, None, name) is not None:
                self.api.delete(ns_type, None, name)

        self.call(delete)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The stored object (a copy) or None; namespaced kinds default to ``default``."""
        rtype = self.registry.by_kind(api_version, kind)
        if rtype is None:
            return None
        ns = (namespace or "default") if rtype.namespaced else None
        found = self.call(lambda: self.api.find(rtype, ns, name))
        return copy.deepcopy(found) if found is not None else None

    # ------------------------------------------------------------------ faults

    def inject(
        self, path: str = ".*", *, status: int, method: str | None = None, times: int | None = 1,
        watch: bool | None = None,
    ) -> Fault:
        """Make matching requests fail with ``status`` (a Status body with the code's usual reason).

        ``path`` is a regular expression searched in the request path (or ``path?query``);
        ``times=None`` keeps the fault forever; ``watch`` restricts it to (non-)watch requests.
        A 410 on a watch request is delivered as an ``ERROR`` event with an ``Expired`` Status,
        like the real server. ``fault.exhausted`` tells when it has fired ``times`` times.
        """
        return self.faults.add(Fault(method=method, path=re.compile(path), status=status, times=times, watch=watch))

    def end_watches(self, path: str | None = None) -> int:
        """End open watch streams (whose path matches the regex) the normal way, as at ``timeoutSeconds``:
        clients resume from their last resourceVersion. Returns how many."""
        pattern = re.compile(path) if path is not None else None

        def end() -> int:
            ended = [w for w in self._backend.watches if pattern is None or pattern.search(w.path)]
            for watcher in ended:
                watcher.queue.put_nowait(None)
            return len(ended)

        return self.call(end)


def _load_documents(source: Manifest) -> list[dict[str, Any]]:
    if isinstance(source, dict):
        return [source]
    if isinstance(source, list):
        return [doc for item in source for doc in _load_documents(item)]
    if isinstance(source, str) and ("\n" in source or not Path(source).exists()):
        return [doc for doc in yaml.safe_load_all(source) if doc]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        return [doc for file in files for doc in _load_documents(file)]
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    expanded = []
    for doc in documents:
        if doc.get("kind", "").endswith("List") and isinstance(doc.get("items"), list):
            expanded.extend(doc["items"])
        else:
            expanded.append(doc)
    return expanded
