"""Measure the emulator at operator scale: ``python -m rdsiam.testing.kube.bench [--objects 5000]``.

Stores N custom resources and N Secrets, keeps a few watches open (cluster-wide custom
resources, cluster-wide Secrets, Events), then times over HTTP (one keep-alive connection):
GET, merge PATCH, status PATCH and JSON PATCH of single objects, LIST of all objects, and
the initial listing of a watch. Prints a small table; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from rdsiam.testing.kube.client import KubeClient
from rdsiam.testing.kube.emulator import KubeEmulator
from rdsiam.testing.kube.example import EXAMPLE_CRD, GROUP, PLURAL, VERSION, example_object

__all__ = ["main"]


def _timed(samples: int, call: Callable[[int], Any]) -> list[float]:
    durations = []
    for i in range(samples):
        began = time.perf_counter()
        call(i)
        durations.append((time.perf_counter() - began) * 1000)
    return durations


def _row(name: str, durations: list[float]) -> str:
    ordered = sorted(durations)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{name:<44} n={len(ordered):<5} p50={statistics.median(ordered):8.2f} ms  p95={p95:8.2f} ms"


def _watch(client: KubeClient, path: str, counter: list[int], stop: threading.Event) -> None:
    for _event in client.watch(path, timeout_seconds=3600):
        counter[0] += 1
        if stop.is_set():
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=5000, help="custom resources and Secrets each")
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--no-watches", action="store_true", help="measure without the open watches")
    args = parser.parse_args(argv)

    with KubeEmulator() as emu:
        emu.apply_manifest(EXAMPLE_CRD)
        namespaces = [f"bench-{i}" for i in range(args.namespaces)]
        emu.apply_manifest([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in namespaces])
        cr_type = emu.registry.get(GROUP, VERSION, PLURAL)
        secret_type = emu.registry.get("", "v1", "secrets")
        assert cr_type is not None and secret_type is not None
        names = [(namespaces[i % len(namespaces)], f"cred-{i}") for i in range(args.objects)]

        began = time.perf_counter()

        def populate() -> None:
            for ns, name in names:
                cred = emu.api.create(cr_type, ns, example_object(name, ns)).obj
                owner = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "DbCredential",
                    "name": name,
                    "uid": cred["metadata"]["uid"],
                    "controller": True,
                }
                emu.api.create(
                    secret_type,
                    ns,
                    {
                        "metadata": {"name": name, "ownerReferences": [owner]},
                        "stringData": {"password": "x" * 900, "username": "app"},
                    },
                )

        emu.call(populate, timeout=600)
        setup = time.perf_counter() - began
        print(f"stored {args.objects} {PLURAL} + {args.objects} secrets in-process in {setup:.2f} s")

        stop = threading.Event()
        counters: list[list[int]] = []
        watch_paths = (
            [] if args.no_watches else [f"/apis/{GROUP}/{VERSION}/{PLURAL}", "/api/v1/secrets", "/api/v1/events"]
        )
        for path in watch_paths:
            counter = [0]
            counters.append(counter)
            threading.Thread(target=_watch, args=(emu.client(), path, counter, stop), daemon=True).start()
        deadline = time.monotonic() + 60
        while counters and (counters[0][0] < args.objects or counters[1][0] < args.objects):
            assert time.monotonic() < deadline, "watches did not deliver the initial state"
            time.sleep(0.05)
        print(f"{len(watch_paths)} watches open (initial state delivered)")

        client = emu.client()
        rng = random.Random(42)
        cr = f"/apis/{GROUP}/{VERSION}/namespaces/{{}}/{PLURAL}/{{}}"

        def pick() -> tuple[str, str]:
            return names[rng.randrange(len(names))]

        rows = [
            _row("GET one custom resource", _timed(args.samples, lambda i: client.get(cr.format(*pick())))),
            _row(
                "GET one Secret",
                _timed(args.samples, lambda i: client.get("/api/v1/namespaces/{}/secrets/{}".format(*pick()))),
            ),
            _row(
                "PATCH (merge) custom resource labels",
                _timed(
                    args.samples,
                    lambda i: client.patch(cr.format(*pick()), {"metadata": {"labels": {"i": str(i)}}}),
                ),
            ),
            _row(
                "PATCH (merge) custom resource /status",
                _timed(args.samples, lambda i: client.patch(cr.format(*pick()) + "/status", {"status": {"n": i}})),
            ),
        ]

        def json_patch(i: int) -> None:
            path = cr.format(*pick())
            rv = client.get(path)["metadata"]["resourceVersion"]
            client.patch(
                path,
                [
                    {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                    {"op": "add", "path": "/metadata/annotations", "value": {"i": str(i)}},
                ],
                "json",
            )

        rows.append(_row("GET + PATCH (json, with test) custom resource", _timed(args.samples // 2, json_patch)))
        rows.append(
            _row(
                "PATCH (merge) Secret data",
                _timed(
                    args.samples,
                    lambda i: client.patch(
                        "/api/v1/namespaces/{}/secrets/{}".format(*pick()), {"data": {"password": "eA=="}}
                    ),
                ),
            )
        )
        rows.append(
            _row(
                f"LIST all {args.objects} custom resources",
                _timed(10, lambda i: client.list(f"/apis/{GROUP}/{VERSION}/{PLURAL}")),
            )
        )
        rows.append(_row(f"LIST all {args.objects} Secrets", _timed(10, lambda i: client.list("/api/v1/secrets"))))
        rows.append(
            _row(
                "LIST one namespace's custom resources",
                _timed(
                    args.samples,
                    lambda i: client.list(f"/apis/{GROUP}/{VERSION}/namespaces/{pick()[0]}/{PLURAL}"),
                ),
            )
        )
        rows.append(
            _row(
                "LIST Secrets by label selector (none match)",
                _timed(20, lambda i: client.list("/api/v1/secrets", label_selector="app=nope")),
            )
        )

        def initial_watch(i: int) -> None:
            seen = 0
            for event in client.watch(
                f"/apis/{GROUP}/{VERSION}/{PLURAL}",
                send_initial_events=True,
                allow_bookmarks=True,
                timeout_seconds=30,
            ):
                seen += 1
                if event["type"] == "BOOKMARK":
                    break
            assert seen == args.objects + 1

        rows.append(_row(f"WATCH initial events of {args.objects} (to bookmark)", _timed(5, initial_watch)))
        in_process = _timed(args.samples, lambda i: emu.call(lambda: emu.api.get(cr_type, *pick())))
        rows.append(_row("in-process api.get via emu.call (thread hop)", in_process))
        print("\n".join(rows))
        print(f"watch events delivered: {[c[0] for c in counters]}; requests logged: {len(emu.requests)}")
        stop.set()
        client.close()


if __name__ == "__main__":
    main()
