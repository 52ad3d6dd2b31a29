"""Refreshes against the floor, paired in one process.

    .venv/bin/python benchmarks/bench_refresh.py [--n 2000] [--rounds 6] [--count-n 300]

bench_scale.py compares a whole operator process, started after a downtime, with the floor in its own
process a few seconds earlier. This VM's speed drifts by up to +-30% between such runs. Here both sides
run in one process, one right after the other, so they meet the same machine:

- the operator's refresh path: its own Scheduler, Reconciler, informers (LIST + WATCH of the resources
  and of their Secrets), Event poster and KubeApi client, wired as ``rdsiam run`` wires them; a round
  moves the reconciler's clock 11 minutes on, so all N are due at once and each refresh is the routine
  one: sign, one Secret write, one status write, no Event; a round ends when the watch events of all its
  writes are handled too. Two kinds of operator round: steady state (every spec parsed before), and the
  first refresh after a restart (the parsed specs dropped first; the pass then hands the scheduler its
  resources as a listing, where a new process parses, resolves and hashes every spec, and refreshes them;
  bench_scale.py's burst measures the same in a real restart);
- the floor (``floor.py``'s PATCH pass): sign, one merge PATCH of a Secret with the same contents.

Both sign with the same cached credentials (no STS here: the identity cache is a stub that returns
them) through the same client to the same Kubernetes API emulator, which runs in the parent process
so that its work is not counted. Rounds alternate; medians and every round are printed: CPU per item
(the process's CPU time) and items per second, and the operator's share of the floor for both.

Then, when valgrind is installed (``--count-n 0`` skips it), the instructions per item of each kind of
pass, counted by cachegrind in separate children (one that only sets up, subtracted): the same on every
run within about 1%, where CPU time swings by a third, so this is the figure to compare code changes
by. It counts user-space instructions only; memory stalls and the kernel's share are in the CPU times.

Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "benchmarks"))

NS, FLOOR_NS = "bench", "floor"


async def measure(server: str, n: int, rounds: int, only: str | None = None) -> dict[str, Any]:
    """In the child process: the operator's parts and the floor, alternating: (CPU µs per item, items/s)
    per round for each, and the operator's write counts. ``only``: set up, then run ``rounds`` passes of
    that kind alone ("none": no pass), for counting instructions."""
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
    scheduler = Scheduler(reconciler, fetch=kube.get_credential)
    informers = informers_for(kube, scheduler, NS)
    # Refreshes made and watch events handled (each refresh echoes twice: its Secret, its resource's
    # status), counted in callbacks (where the operator's metrics count refreshes) rather than polled,
    # so a pass costs the same instructions however long it takes.
    progress = {"refreshes": 0, "echoes": 0}
    goal = {"refreshes": 0, "echoes": 0}
    reached = asyncio.Event()

    def tick(what: str) -> None:
        progress[what] += 1
        if all(progress[k] >= goal[k] for k in goal):
            reached.set()

    def counted(handle: Any) -> Any:
        def on_event(kind: str, obj: dict[str, Any]) -> None:
            handle(kind, obj)
            tick("echoes")
        return on_event

    reconciler.on_refresh = lambda body, reason, expires: tick("refreshes")
    for informer in informers:
        informer.on_event = counted(informer.on_event)
    tasks = [asyncio.create_task(i.run()) for i in informers]
    for informer in informers:
        await informer.synced.wait()
    settle_heap()
    scheduler.ready.set()
    scheduler.active.set()

    def expect(refreshes: int, echoes: int) -> None:
        goal.update(refreshes=progress["refreshes"] + refreshes, echoes=progress["echoes"] + echoes)
        reached.clear()

    async def arrived(timeout: float = 600.0) -> None:
        try:
            await asyncio.wait_for(reached.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{progress} of {goal} after {timeout:g} s; failures: {reconciler.stats.failures}"
                               ) from None

    expect(n, 2 * n)  # first issue: every Secret created (and echoed), every spec parsed
    tasks.append(asyncio.create_task(scheduler.run()))
    await arrived()
    while not events.queue.empty():  # its Events trail
        await asyncio.sleep(0.05)
    targets = floor.targets(n)
    slots = asyncio.Semaphore(scheduler.concurrency)

    async def floor_one(i: int) -> None:
        async with slots:
            await floor.patch(kube, FLOOR_NS, creds, targets[i], i)

    async def floor_pass() -> None:
        await asyncio.gather(*(floor_one(i) for i in range(n)))

    async def operator_pass(relisted: bool = False) -> None:
        nonlocal offset
        if relisted:  # as a new process does with its first listing: every spec parsed, one after another
            scheduler.replace_credentials(list(scheduler.bodies.values()))
        offset += dt.timedelta(minutes=11)  # past the interval: all due, routine refreshes
        expect(n, 2 * n)  # the pass ends with its writes' echoes handled
        for key in list(scheduler.bodies):
            scheduler.schedule(key, 0.0)
        await arrived()

    def forget_parsed() -> None:
        # As in a new process: every spec parsed, resolved and hashed again. Dropped before the pass is
        # timed: a new process has no old ones to free.
        reconciler._parsed.clear()

    await floor_pass()  # warm the floor's side too
    async def restarted_pass() -> None:
        await operator_pass(relisted=True)

    passes = {"floor": floor_pass, "operator": operator_pass, "restarted": restarted_pass}
    before = {"restarted": forget_parsed}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in passes}
    for r in range(rounds):
        order = list(passes.items()) if only is None else [] if only == "none" else [(only, passes[only])]
        for name, run in order if r % 2 == 0 else order[::-1]:
            if name in before:
                before[name]()
            await asyncio.sleep(0.5)
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


def run(n: int, rounds: int, only: str | None = None, valgrind: list[str] | None = None) -> dict[str, Any]:
    """A fresh emulator with N resources in this process; the measuring child against it (under
    ``valgrind`` when given)."""
    import bench_scale
    import yaml

    from rdsiam.testing.kube import KubeEmulator

    with KubeEmulator(history_limit=4 * n * (3 * rounds + 2) + 1000) as emu:
        emu.apply_manifest(str(ROOT / "crds"))
        for ns in (NS, FLOOR_NS):
            emu.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        emu.apply_manifest(bench_scale.resources(n, NS))
        emu.apply_manifest([{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"floor-{i:05d}",
                                                                                "namespace": FLOOR_NS}}
                            for i in range(n)])
        server = yaml.safe_load(Path(emu.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["PYTHONHASHSEED"] = "0"
        command = [*(valgrind or []), sys.executable, __file__, "--child", server, "--n", str(n),
                   "--rounds", str(rounds), *(["--only", only] if only else [])]
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode:
            raise RuntimeError(f"bench_refresh child failed:\n{out.stderr[-3000:]}")
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def instructions(n: int, passes: int) -> dict[str, float] | None:
    """Instructions per item of each kind of pass, counted by valgrind's cachegrind (deterministic, unlike
    CPU time on a shared VM): a child that sets up and makes ``passes`` passes of one kind, less one that
    only sets up, divided by the items. None without valgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    counts: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("none", "floor", "operator", "restarted"):
            out = Path(tmp) / f"{kind}.out"
            run(n, passes, kind, [valgrind, "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"])
            summary = next(line for line in out.read_text().splitlines() if line.startswith("summary:"))
            counts[kind] = float(summary.split()[1])
    return {kind: (counts[kind] - counts["none"]) / (n * passes) for kind in ("floor", "operator", "restarted")}


def report(n: int, res: dict[str, Any], counted: dict[str, float] | None, counted_n: int) -> None:
    fl = res["floor"]
    med = statistics.median
    print(f"\n== refreshes, N = {n:,}, {len(fl)} rounds, operator parts and floor in one process ==")
    print(f"  floor (sign + PATCH of the Secret's contents): {med(f[0] for f in fl):.0f} µs CPU per Secret, "
          f"{med(f[1] for f in fl):.0f}/s")
    for name, what in (("operator", "steady state"), ("restarted", "first refresh after a restart")):
        op = res[name]
        cpu_ratios = [f[0] / o[0] for f, o in zip(fl, op, strict=True)]
        rate_ratios = [o[1] / f[1] for f, o in zip(fl, op, strict=True)]
        print(f"  operator, {what} (sign + Secret write + status write): {med(o[0] for o in op):.0f} µs CPU per "
              f"refresh, {med(o[1] for o in op):.0f}/s")
        print(f"    share of the floor: CPU {med(cpu_ratios):.2f}, rate {med(rate_ratios):.2f} (target >= 0.5); "
              "rounds: " + ", ".join(f"{c:.2f}/{r:.2f}" for c, r in zip(cpu_ratios, rate_ratios, strict=True)))
    total = n * (2 * len(fl) + 1)
    print(f"  writes by the operator: {res['secret_writes'] / total:.2f} Secret + {res['status_writes'] / total:.2f} "
          f"status per refresh, {res['events']} Events (the first issue's)")
    if counted is None:
        print("  instructions: not counted (" + ("--count-n 0" if not counted_n else "valgrind is not installed") + ")")
        return
    fi = counted["floor"]
    print(f"  instructions per item (valgrind cachegrind, N = {counted_n:,}; the same on any run): floor "
          f"{fi / 1e6:.2f} M; operator steady state {counted['operator'] / 1e6:.2f} M -> {fi / counted['operator']:.2f}"
          f" of the floor; first refresh after a restart {counted['restarted'] / 1e6:.2f} M -> "
          f"{fi / counted['restarted']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count-n", type=int, default=300,
                        help="resources for the instruction count under valgrind (0: do not count)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["none", "floor", "operator", "restarted"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.child, args.n, args.rounds, args.only))))
        return 0
    timed = run(args.n, args.rounds)
    counted = instructions(args.count_n, 2) if args.count_n else None
    report(args.n, timed, counted, args.count_n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
