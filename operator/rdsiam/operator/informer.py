"""LIST then WATCH one kind of object, resuming from the last resourceVersion and re-listing on 410.

The operator keeps two informers per watched scope: RdsIamCredentials, and the Secrets it manages
(label selector ``app.kubernetes.io/managed-by=rdsiam``). A full listing replaces the cache, so
objects deleted while the watch was down are noticed; events then keep it current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NoReturn

from rdsiam.operator.kubeapi import ApiError

logger = logging.getLogger("rdsiam.informer")
JsonDict = dict[str, Any]
# A watch stream ended by the server within SHORT_STREAM seconds of opening is resumed at once the first
# time, then after 0.25 s, doubling for each such stream in a row up to 5 s; a longer-lived stream resets it.
SHORT_STREAM = 5.0
SHORT_STREAM_BACKOFF = 0.25
SHORT_STREAM_BACKOFF_CAP = 5.0


class Informer:
    def __init__(
        self, kube: Any, path: str, *, on_list: Callable[[list[JsonDict]], None],
        on_event: Callable[[str, JsonDict], None], label_selector: str | None = None, name: str = "",
        watch_metadata_only: bool = False, each: Callable[[JsonDict], JsonDict] | None = None,
    ) -> None:
        self.kube, self.path, self.label_selector = kube, path, label_selector
        self.each = each  # applied to every listed object as its page arrives (what the cache keeps of it)
        self.watch_metadata_only = watch_metadata_only  # LIST whole objects, WATCH PartialObjectMetadata
        self.on_list, self.on_event = on_list, on_event
        self.name = name or path
        self.synced = asyncio.Event()
        self.relists = 0

    async def _watch(self, version: str) -> NoReturn:
        """Watch from ``version``, resuming from the last version seen after a stream ends or drops;
        raise (so the caller re-lists) on 410 Gone or after repeated failures.

        A stream the server ends normally is resumed at once, unless several in a row lived less than
        ``SHORT_STREAM`` seconds: then after a delay that doubles with each (a server or proxy closing
        every watch as soon as it opens would otherwise be asked again and again, at full speed).
        """
        loop = asyncio.get_running_loop()
        failures = short = 0
        while True:
            opened = loop.time()
            try:
                async for event in self.kube.watch_objects(self.path, version, self.label_selector,
                                                           metadata_only=self.watch_metadata_only):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":  # 410 Gone after compaction, or another server-side error
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("reason", "")),
                                       str(obj.get("message", ""))[:200])
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    failures = 0
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.on_event(str(kind), obj)
                if loop.time() - opened >= SHORT_STREAM:
                    short = 0
                    continue
                short += 1
                if short == 1:
                    continue  # once may be a coincidence (the server's timeout came due): resume at once
                if short == 2:
                    logger.info("%s: the server ends watches as soon as they open; resuming after a delay",
                                self.name)
                await asyncio.sleep(min(SHORT_STREAM_BACKOFF_CAP, SHORT_STREAM_BACKOFF * 2 ** min(short - 2, 20)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = getattr(exc, "status", None)
                failures += 1
                if status == 410 or failures > 3:
                    raise
                logger.info("%s: watch resuming from %s (%s)", self.name, version, status or type(exc).__name__)
                await asyncio.sleep(min(5.0, 0.2 * 2 ** failures))

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                listing = await self.kube.list_objects(self.path, self.label_selector, each=self.each)
                self.on_list(listing.get("items") or [])
                self.relists += 1
                self.synced.set()
                version = str((listing.get("metadata") or {}).get("resourceVersion") or "0")
                attempt = 0
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = getattr(exc, "status", None)
                logger.info("%s: watch restarting (%s)", self.name, status or type(exc).__name__)
                # (exponent capped: hours of failures must not overflow a float and end the informer)
                delay = min(30.0, 0.5 * 2 ** min(attempt, 20)) if status != 410 else 0.0
                attempt += 1
                await asyncio.sleep(delay)
