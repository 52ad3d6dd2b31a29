"""Scale: N RdsIamCredentials, one operator replica, against the floor, in one run.

    .venv/bin/python benchmarks/bench_scale.py --n 1000 --n 5000 [--rotate-seconds 150]

For each N, on the local stack (the Kubernetes API emulator in this process; the operator and the
floor client each in their own process, as in a cluster):

1. start: N resources exist, the operator starts; time until every Secret exists and every resource
   is Ready; the operator's CPU seconds and RSS; API writes by kind (Secret / status / Event).
2. the floor (``floor.py``): a bare client that does only the unavoidable work for N Secrets against
   the same emulator: sign a token with cached credentials (obtained as the operator obtains them) and
   write the Secret once, a POST for a first issue and a PATCH for a refresh, with the contents the
   product promises (and, for comparison, a PATCH of the password alone); the operator's rates as
   fractions of the floor's.
3. idle: the operator's CPU over an idle window (nothing due); with the CPU per refresh from (1),
   the steady-state CPU at a 10-minute interval = idle + N/600 refreshes/s x CPU per refresh.
4. restart: the operator restarts with N fresh Secrets: writes issued (target 0), time to healthy
   and to all resources observed.
5. refresh burst (--rounds, default 3): the operator was down for longer than the refresh interval
   (every Secret's issued-at set back by interval + 1 minute while it is stopped), so all N refreshes
   are due at once when it starts: the refresh rate (one Secret write + one status write each, no
   Event) against the floor's PATCH rate measured just before, on the same server; medians reported.
6. rotation (--rotate-seconds, optional): refreshInterval=1m for all, run for that long; missed
   deadlines = a Secret older than interval + 30 s at any sample (target 0); writes per refresh.

Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from rdsiam.testing.kube import KubeEmulator  # noqa: E402
from rdsiam.testing.operator import OperatorProcess  # noqa: E402
from rdsiam.testing.sts import StsServer  # noqa: E402

HOST = "bench.cluster-abc123def456.us-east-1.rds.amazonaws.com"


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds user+system, RSS MiB) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss


def resources(n: int, ns: str, interval: str = "10m") -> list[dict[str, Any]]:
    return [{"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
             "metadata": {"name": f"db-{i:05d}", "namespace": ns},
             "spec": {"host": HOST, "username": f"user{i}", "database": "app", "refreshInterval": interval}}
            for i in range(n)]


class Counter:
    """In-process views of the emulator's store and request log (no HTTP, no load on the server)."""

    def __init__(self, emu: KubeEmulator) -> None:
        self.emu = emu

    def secrets(self, ns: str) -> list[dict[str, Any]]:
        def fn() -> list[dict[str, Any]]:
            table = self.emu.store.tables.get(("", "secrets"))
            return list(table.scope(ns)) if table else []
        return self.emu.call(fn)

    def ready(self, ns: str) -> int:
        def fn() -> int:
            table = self.emu.store.tables.get(("rdsiam.io", "rdsiamcredentials"))
            count = 0
            for obj in (table.scope(ns) if table else []):
                for c in (obj.get("status") or {}).get("conditions") or []:
                    if c.get("type") == "Ready" and c.get("status") == "True":
                        count += 1
            return count
        return self.emu.call(fn)

    def writes(self, since: float, agent: str = "rdsiam-operator") -> dict[str, int]:
        out = {"secret": 0, "status": 0, "event": 0, "other": 0}
        for r in self.emu.requests:
            if r.time < since or r.method == "GET" or agent not in r.user_agent:
                continue
            if r.resource == "secrets":
                out["secret"] += 1
            elif r.subresource == "status":
                out["status"] += 1
            elif r.resource == "events":
                out["event"] += 1
            else:
                out["other"] += 1
        return out


def wait(what: str, fn: Any, timeout: float, interval: float = 0.25) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if fn():
            return time.monotonic() - start
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout} s")


def quiet(emu: KubeEmulator, seconds: float = 1.0) -> None:
    """Wait until the operator has written nothing for ``seconds`` (its trailing Events are posted)."""
    wait("the trailing Events", lambda: not any(
        r.time > time.time() - seconds and "rdsiam-operator" in r.user_agent and r.method != "GET"
        for r in emu.requests.snapshot()[-200:]), 600)


def run_floor(kubeconfig: str, n: int, ns: str, aws_env: dict[str, str], passes: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(aws_env)
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("floor.py")), "--kubeconfig", kubeconfig,
                          "--n", str(n), "--namespace", ns, "--passes", passes],
                         capture_output=True, text=True, check=True, env=env)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def secret_write_times(emu: KubeEmulator, since: float) -> list[float]:
    """When the operator wrote Secrets after ``since``, in order."""
    return sorted(r.time for r in emu.requests if r.time >= since and r.resource == "secrets" and r.method != "GET"
                  and "rdsiam-operator" in r.user_agent)


def secret_write_span(emu: KubeEmulator, since: float) -> tuple[float, float]:
    """(first to last Secret write by the operator, last write after ``since``) in seconds."""
    times = secret_write_times(emu, since)
    if len(times) < 2:
        return 0.0, 0.0
    return max(times) - min(times), max(times) - since


def age_secrets(emu: KubeEmulator, ns: str, secrets: list[dict[str, Any]], by: dt.timedelta) -> None:
    """Set every Secret's issued-at back, as if the operator had been down for ``by``."""
    client = emu.client()
    for s in secrets:
        ann = s["metadata"]["annotations"]
        issued = dt.datetime.fromisoformat(ann["rdsiam.io/issued-at"].replace("Z", "+00:00")) - by
        client.patch(f"/api/v1/namespaces/{ns}/secrets/{s['metadata']['name']}", {"metadata": {"annotations": {
            "rdsiam.io/issued-at": issued.strftime("%Y-%m-%dT%H:%M:%SZ")}}})


class CpuSampler:
    """The CPU seconds of a process, sampled every 20 ms from another thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples = pid, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.time(), proc_stats(self.pid)[0]))
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, when: float) -> float:
        return next((c for t, c in self.samples if t >= when), self.samples[-1][1])


def refresh_burst(emu: KubeEmulator, op: OperatorProcess, count: Counter, ns: str, n: int) -> dict[str, Any]:
    """Stop the operator, set every Secret's issued-at back past the interval, start it: all N are due."""
    op.stop()
    age_secrets(emu, ns, count.secrets(ns), dt.timedelta(minutes=11))
    aged = {s["metadata"]["name"]: s["metadata"]["annotations"]["rdsiam.io/issued-at"] for s in count.secrets(ns)}
    since = time.time()
    t0 = time.monotonic()
    op.start(timeout=120)
    assert op.proc is not None
    sampler = CpuSampler(op.proc.pid)
    wait("all refreshed after the downtime", lambda: all(
        s["metadata"]["annotations"]["rdsiam.io/issued-at"] > aged[s["metadata"]["name"]]
        for s in count.secrets(ns)), 600)
    total = time.monotonic() - t0
    wait("all Ready after the burst", lambda: count.ready(ns) >= n, 600)
    sampler.stop()
    times = secret_write_times(emu, since)
    # The middle 60% of the burst: steady refreshing, without the start-up (imports, listing) or the tail.
    a, z = times[len(times) // 5], times[len(times) * 4 // 5]
    middle = len(times) * 4 // 5 - len(times) // 5
    return {"total_s": total, "span_s": times[-1] - times[0], "rate": n / max(times[-1] - times[0], 1e-9),
            "writes": count.writes(since),
            "cpu_per_refresh_ms": (sampler.at(z) - sampler.at(a)) / max(middle, 1) * 1000,
            "busy_pct": (sampler.at(z) - sampler.at(a)) / max(z - a, 1e-9) * 100}


def bench(n: int, rotate_seconds: float, idle_seconds: float, rounds: int = 3) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rdsiam-bench-"))
    with KubeEmulator(history_limit=4 * n + 1000) as emu, StsServer() as sts:
        emu.apply_manifest(str(ROOT / "crds"))
        count = Counter(emu)
        ns, floor_ns = "bench", "floor"
        for name in (ns, floor_ns):
            emu.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        t = time.monotonic()
        emu.apply_manifest(resources(n, ns))
        setup = time.monotonic() - t

        role = sts.create_role("rdsiam-operator")
        aws_env = sts.irsa_env(role, str(work))
        # 2. the floor first (the operator is not running yet: each gets the server to itself).
        floor = run_floor(emu.kubeconfig, n, floor_ns, aws_env, "create")

        # 1. start.
        op = OperatorProcess(emu.kubeconfig, aws_env, ["--log-level", "info"], log_dir=str(work), metrics=False)
        since = time.time()
        t0 = time.monotonic()
        op.start(timeout=120)
        healthy = time.monotonic() - t0
        assert op.proc is not None
        all_secrets = wait("all Secrets", lambda: len(count.secrets(ns)) >= n, 600)
        wait("all Ready", lambda: count.ready(ns) >= n, 600)
        start_total = time.monotonic() - t0
        cpu_start, rss = proc_stats(op.proc.pid)
        writes = count.writes(since)
        issue_span, last_secret = secret_write_span(emu, since)

        # 3. idle: once the trailing first-issue Events are posted.
        quiet(emu)
        cpu_a, _ = proc_stats(op.proc.pid)
        time.sleep(idle_seconds)
        cpu_b, rss_idle = proc_stats(op.proc.pid)
        idle_share = (cpu_b - cpu_a) / idle_seconds
        cpu_per_refresh = cpu_start / n
        steady = idle_share + (n / 600.0) * cpu_per_refresh

        # 4. restart with N fresh Secrets.
        op.stop()
        since = time.time()
        t1 = time.monotonic()
        op.start(timeout=120)
        restart_healthy = time.monotonic() - t1
        time.sleep(5.0)  # a write storm would show up here
        restart_writes = count.writes(since)

        # 5. refresh bursts after a downtime longer than the interval, each right after a floor run on the
        # same server (rounds alternate, so a noisy neighbour hits both sides alike); medians reported.
        bursts, floors = [], []
        for _ in range(rounds):
            floors.append(run_floor(emu.kubeconfig, n, floor_ns, aws_env, "patch,token"))
            bursts.append(refresh_burst(emu, op, count, ns, n))

        def median(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        result: dict[str, Any] = {
            "n": n, "setup_s": setup, "healthy_s": healthy, "all_secrets_s": all_secrets + healthy,
            "all_ready_s": start_total, "rss_mib": rss, "rss_idle_mib": rss_idle,
            "cpu_start_s": cpu_start, "cpu_per_refresh_ms": cpu_per_refresh * 1000,
            "idle_cpu_pct": idle_share * 100, "steady_cpu_pct_10m": steady * 100,
            "writes_start": writes, "floor": floor, "floors": floors, "bursts": bursts,
            "operator_rate": n / max(issue_span, 1e-9), "floor_rate": n / floor["create_s"],
            "issue_span_s": issue_span, "last_secret_s": last_secret,
            "restart_healthy_s": restart_healthy, "restart_writes": restart_writes,
            "burst_total_s": median([b["total_s"] for b in bursts]), "burst_writes": bursts[-1]["writes"],
            "burst_rate": median([b["rate"] for b in bursts]),
            "floor_patch_rate": median([n / f["patch_s"] for f in floors]),
            "floor_token_rate": median([n / f["token_s"] for f in floors]),
            "burst_ratio_to_floor": median([b["rate"] * f["patch_s"] / n for b, f in zip(bursts, floors, strict=True)]),
            "burst_ratio_to_token_floor": median([b["rate"] * f["token_s"] / n
                                                  for b, f in zip(bursts, floors, strict=True)]),
            "burst_cpu_per_refresh_ms": median([b["cpu_per_refresh_ms"] for b in bursts]),
            "burst_busy_pct": median([b["busy_pct"] for b in bursts]),
        }
        result["ratio_to_floor"] = result["operator_rate"] / result["floor_rate"]

        # 6. rotation at a 1-minute interval.
        if rotate_seconds > 0:
            hashes = {s["metadata"]["name"]: s["metadata"]["annotations"]["rdsiam.io/spec-hash"]
                      for s in count.secrets(ns)}
            emu.apply_manifest(resources(n, ns, interval="1m"))  # a spec change: re-mints all at once
            wait("re-mint after spec change", lambda: all(
                s["metadata"]["annotations"]["rdsiam.io/spec-hash"] != hashes[s["metadata"]["name"]]
                for s in count.secrets(ns)), 600)
            quiet(emu)  # the spec change's Events trail; the window holds routine rotations only
            since = time.time()
            cpu_r0, _ = proc_stats(op.proc.pid)
            missed, samples, oldest = 0, 0, 0.0
            end = time.monotonic() + rotate_seconds
            while time.monotonic() < end:
                now = dt.datetime.now(dt.UTC)
                for s in count.secrets(ns):
                    issued = dt.datetime.fromisoformat(
                        s["metadata"]["annotations"]["rdsiam.io/issued-at"].replace("Z", "+00:00"))
                    age = (now - issued).total_seconds()
                    oldest = max(oldest, age)
                    missed += age > 60 + 30
                samples += 1
                time.sleep(5)
            cpu_r1, rss_rot = proc_stats(op.proc.pid)
            w = count.writes(since)
            refreshes = max(w["secret"], 1)
            result.update({
                "rotation_seconds": rotate_seconds, "rotation_samples": samples, "missed_deadlines": missed,
                "oldest_secret_age_s": oldest, "rotation_writes": w,
                "status_writes_per_refresh": w["status"] / refreshes, "events_per_refresh": w["event"] / refreshes,
                "rotation_cpu_pct": (cpu_r1 - cpu_r0) / rotate_seconds * 100,
                "rotation_cpu_per_refresh_ms": (cpu_r1 - cpu_r0) / refreshes * 1000, "rss_rotation_mib": rss_rot,
            })
        op.stop()
    return result


def report(r: dict[str, Any]) -> None:
    n = r["n"]
    print(f"\n== N = {n:,} resources, one replica ==")
    print(f"  operator start -> healthy           {r['healthy_s']:.2f} s")
    print(f"  start -> all Secrets written        {r['last_secret_s']:.2f} s "
          f"(first to last Secret: {r['issue_span_s']:.2f} s)")
    print(f"  start -> all Ready                  {r['all_ready_s']:.2f} s   (target < 60 s)")
    print(f"  first issue rate: operator {r['operator_rate']:.0f}/s, floor (sign + POST) {r['floor_rate']:.0f}/s "
          f"-> {r['ratio_to_floor']:.2f} of the floor")
    w = r["writes_start"]
    print(f"  writes for the first issue: {w['secret']} Secret, {w['status']} status, {w['event']} Event, "
          f"{w['other']} other   ({w['secret'] / n:.2f} Secret + {w['status'] / n:.2f} status per resource)")
    print(f"  RSS {r['rss_mib']:.0f} MiB after start, {r['rss_idle_mib']:.0f} MiB idle   (target < 400 MiB)")
    print(f"  CPU {r['cpu_start_s']:.1f} s for the first issue = {r['cpu_per_refresh_ms']:.2f} ms per refresh "
          "(incl. startup)")
    print(f"  idle CPU {r['idle_cpu_pct']:.2f}% of a core; steady state at a 10-minute interval "
          f"~{r['steady_cpu_pct_10m']:.2f}% (target < 10%)")
    rw = r["restart_writes"]
    print(f"  restart with {n:,} fresh Secrets: healthy in {r['restart_healthy_s']:.2f} s, writes "
          f"{rw['secret']} Secret / {rw['status']} status / {rw['event']} Event   (target 0)")
    bw = r["burst_writes"]
    rounds = len(r["bursts"])
    print(f"  refresh burst after a downtime (median of {rounds}): all {n:,} refreshed {r['burst_total_s']:.2f} s "
          f"after start; writes {bw['secret']} Secret / {bw['status']} status / {bw['event']} Event")
    print(f"    refresh rate: operator {r['burst_rate']:.0f}/s; floor: sign + PATCH of the Secret's contents "
          f"{r['floor_patch_rate']:.0f}/s -> {r['burst_ratio_to_floor']:.2f} of the floor (target >= 0.5); "
          f"sign + PATCH of the password alone {r['floor_token_rate']:.0f}/s -> {r['burst_ratio_to_token_floor']:.2f}")
    print(f"    operator mid-burst: {r['burst_cpu_per_refresh_ms']:.2f} ms CPU per refresh, "
          f"{r['burst_busy_pct']:.0f}% of a core; rounds: " + ", ".join(
              f"{b['rate']:.0f}/s vs {n / f['patch_s']:.0f}/s" for b, f in zip(r["bursts"], r["floors"], strict=True)))
    if "rotation_seconds" in r:
        rw = r["rotation_writes"]
        print(f"  rotation at refreshInterval=1m for {r['rotation_seconds']:.0f} s: {rw['secret']} refreshes, "
              f"missed deadlines {r['missed_deadlines']} (target 0), oldest Secret {r['oldest_secret_age_s']:.0f} s")
        print(f"    per refresh: {r['status_writes_per_refresh']:.2f} status writes, {r['events_per_refresh']:.2f} "
              f"Events; CPU {r['rotation_cpu_pct']:.1f}% of a core = {r['rotation_cpu_per_refresh_ms']:.2f} ms per "
              f"refresh; RSS {r['rss_rotation_mib']:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, action="append", help="resource counts (default 1000 and 5000)")
    parser.add_argument("--rotate-seconds", type=float, default=0.0)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3, help="refresh bursts, each after a floor run")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = []
    for n in args.n or [1000, 5000]:
        r = bench(n, args.rotate_seconds, args.idle_seconds, args.rounds)
        report(r)
        results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
