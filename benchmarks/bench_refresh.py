"""Steady-state refreshes against the floor, paired in one process.

    .venv/bin/python benchmarks/bench_refresh.py [--n 2000] [--rounds 6]

bench_scale.py compares a whole operator process, started after a downtime, with the floor in its own
process a few seconds earlier. This VM's speed drifts by up to +-30% between such runs, and a restart
adds start-up work (parsing every spec again, building caches). Here both sides run in one process,
one right after the other, so they meet the same machine:

- the operator's refresh path: its own Scheduler, Reconciler, informers (LIST + WATCH of the resources
  and of their Secrets), Event poster and KubeApi client, wired as ``rdsiam run`` wires them, warm (every
  resource refreshed once before); a round moves the reconciler's clock 11 minutes on, so all N are due
  at once and each refresh is the routine one: sign, one Secret write, one status write, no Event; a
  round ends when the watch echoes of all its writes are handled too;
- the floor (``floor.py``'s PATCH pass): sign, one merge PATCH of a Secret with the same contents.

Both sign with the same cached credentials (no STS here: the identity cache is a stub that returns
them) through the same client to the same Kubernetes API emulator, which runs in the parent process
so that its work is not counted. Rounds alternate; medians and every round are printed: CPU per item
(the process's CPU time) and items per second, and the operator's share of the floor for both.

Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "benchmarks"))

NS, FLOOR_NS = "bench", "floor"


async def measure(server: str, n: int, rounds: int) -> dict[str, Any]:
    """In the child process: the operator's parts and the floor, alternating: (CPU µs per item, items/s)
    per round for each, and the operator's write counts."""
    import floor

    from rdsiam.operator.aws import Credentials, IdentityKey
    from rdsiam.operator.handlers import informers_for, settle_heap
    from rdsiam.operator.kubeapi import KubeApi
    from rdsiam.operator.reconcile import EventPoster, Reconciler
    from rdsiam.operator.scheduler import Scheduler

    creds = Credentials("ASIABENCHREFRESH", "secret", floor.SESSION_TOKEN, None,
                        "arn:aws:sts::123456789012:assumed-role/rdsiam-operator/bench")

    class CachedIdentity:  # what Identities hands out from its cache, without STS
        async def get(self, key: IdentityKey) -> Credentials:
            return creds

    kube = KubeApi(server)
    offset = dt.timedelta(0)
    events = EventPoster(kube)
    reconciler = Reconciler(kube, CachedIdentity(), events=events,  # type: ignore[arg-type]
                            clock=lambda: dt.datetime.now(dt.UTC) + offset)
    scheduler = Scheduler(reconciler)
    informers = informers_for(kube, scheduler, NS)
    echoes = 0  # watch events handled: each refresh echoes twice (its Secret, its resource's status)

    def counted(handle: Any) -> Any:
        def on_event(kind: str, obj: dict[str, Any]) -> None:
            nonlocal echoes
            echoes += 1
            handle(kind, obj)
        return on_event

    for informer in informers:
        informer.on_event = counted(informer.on_event)
    tasks = [asyncio.create_task(i.run()) for i in informers]
    for informer in informers:
        await informer.synced.wait()
    settle_heap()
    scheduler.ready.set()
    scheduler.active.set()
    tasks.append(asyncio.create_task(scheduler.run()))

    async def refreshed(count: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while reconciler.stats.refreshes < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{reconciler.stats.refreshes} of {count} refreshes after {timeout:g} s; "
                                   f"failures: {reconciler.stats.failures}")
            await asyncio.sleep(0.005)

    await refreshed(n)  # first issue: every Secret exists, every spec is parsed
    while not events.queue.empty():  # its Events trail
        await asyncio.sleep(0.05)
    targets = floor.targets(n)
    slots = asyncio.Semaphore(scheduler.concurrency)

    async def floor_one(i: int) -> None:
        async with slots:
            await floor.patch(kube, FLOOR_NS, creds, targets[i], i)

    async def floor_pass() -> None:
        await asyncio.gather(*(floor_one(i) for i in range(n)))

    async def operator_pass() -> None:
        nonlocal offset
        before, seen = reconciler.stats.refreshes, echoes
        offset += dt.timedelta(minutes=11)  # past the interval: all due, routine refreshes
        for key in list(scheduler.bodies):
            scheduler.schedule(key, 0.0)
        await refreshed(before + n)
        deadline = time.monotonic() + 10.0
        while echoes < seen + 2 * n and time.monotonic() < deadline:  # the pass ends with its echoes handled
            await asyncio.sleep(0.001)

    await floor_pass()  # warm the floor's side too
    results: dict[str, list[tuple[float, float]]] = {"floor": [], "operator": []}
    for r in range(rounds):
        order = [("floor", floor_pass), ("operator", operator_pass)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            await asyncio.sleep(0.5)  # the previous pass's watch echoes
            cpu, wall = time.process_time(), time.perf_counter()
            await run()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            results[name].append((cpu / n * 1e6, n / wall))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await events.close()
    await kube.close()
    stats = reconciler.stats
    return {**results, "secret_writes": stats.secret_writes, "status_writes": stats.status_writes,
            "events": stats.events}


def run(n: int, rounds: int) -> dict[str, Any]:
    import bench_scale
    import yaml

    from rdsiam.testing.kube import KubeEmulator

    with KubeEmulator(history_limit=4 * n * (rounds + 2) + 1000) as emu:
        emu.apply_manifest(str(ROOT / "crds"))
        for ns in (NS, FLOOR_NS):
            emu.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        emu.apply_manifest(bench_scale.resources(n, NS))
        emu.apply_manifest([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"floor-{i:05d}",
                                                                                "namespace": FLOOR_NS}}
                            for i in range(n)])
        server = yaml.safe_load(Path(emu.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        out = subprocess.run([sys.executable, __file__, "--child", server, "--n", str(n), "--rounds", str(rounds)],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            raise RuntimeError(f"bench_refresh child failed:\n{out.stderr[-3000:]}")
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def report(n: int, res: dict[str, Any]) -> None:
    fl, op = res["floor"], res["operator"]
    cpu_ratios = [f[0] / o[0] for f, o in zip(fl, op, strict=True)]
    rate_ratios = [o[1] / f[1] for f, o in zip(fl, op, strict=True)]
    secret_writes, status_writes, events = res["secret_writes"], res["status_writes"], res["events"]
    med = statistics.median
    print(f"\n== steady-state refreshes, N = {n:,}, {len(op)} rounds, operator parts and floor in one process ==")
    print(f"  floor (sign + PATCH of the Secret's contents): {med(f[0] for f in fl):.0f} µs CPU per Secret, "
          f"{med(f[1] for f in fl):.0f}/s")
    print(f"  operator (sign + Secret write + status write): {med(o[0] for o in op):.0f} µs CPU per refresh, "
          f"{med(o[1] for o in op):.0f}/s")
    print(f"  operator's share of the floor: CPU {med(cpu_ratios):.2f}, rate {med(rate_ratios):.2f} "
          f"(target >= 0.5); rounds: " + ", ".join(f"{c:.2f}/{r:.2f}" for c, r in zip(cpu_ratios, rate_ratios,
                                                                                      strict=True)))
    total = n * (len(op) + 1)
    print(f"  writes by the operator: {secret_writes / total:.2f} Secret + {status_writes / total:.2f} status "
          f"per refresh, {events} Events (the first issue's)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.child, args.n, args.rounds))))
        return 0
    report(args.n, run(args.n, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
