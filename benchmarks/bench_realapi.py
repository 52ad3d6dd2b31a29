"""Scale against a real kube-apiserver + etcd: N RdsIamCredentials, one operator replica, per runtime tree.

    .venv/bin/python benchmarks/bench_realapi.py --n 1000 --n 5000 --interval-n 2000 --interval-minutes 10 \\
        --runtime-tree . --runtime-tree /tmp/oldruntime

Each figure comes from a fresh ``RealCluster`` (etcd + kube-apiserver + kube-controller-manager on loopback,
``tests/realapi/README.md``) with kube-apiserver's audit log on for the operator's user only (a ServiceAccount
bound to cluster-admin, so every request the operator makes, kopf's included, is counted by the server).
The operator is ``rdsiam run --concurrency 16`` in its own process with the STS stand-in's IRSA environment;
``--runtime-tree PATH`` puts ``PATH/operator`` first on its PYTHONPATH, so one run measures several runtimes
(e.g. a ``git worktree`` of an older commit); without it, the working tree is measured.

Phase 1, for each N (refreshInterval 10m, spread over --namespaces namespaces, created before the operator
starts and not timed as part of any figure):

- start -> healthy (the liveness endpoint says ready) and -> all N Ready; the operator's RSS and peak
  (VmHWM) at that moment; its CPU (its process group, reaped children included) from start to all Ready,
  per resource, with and without the start-up before healthy; kube-apiserver, etcd and this harness
  (watches + the STS stand-in) CPU over the same span; the operator's API requests by kind.
- idle: the operator's CPU over --idle-seconds once it has stopped writing; the steady state at a 10-minute
  interval = idle + N/600 refreshes/s x CPU per refresh (both CPU-per-refresh figures).
- restart with N fresh Secrets: SIGTERM, start again: time to healthy, every request it makes until
  healthy + --restart-window seconds (target: 0 writes).
- the floor (``floor.py``, once per N, after the operator has stopped, on the same server): a bare client's
  sign + POST of N Secrets, against the operator's first-issue rate (N / (all Ready - healthy)).

Phase 2 (--interval-n M > 0): M resources at refreshInterval 1m, for --interval-minutes once all are Ready:
every --sample-seconds, each Secret's age from its ``rdsiam.io/issued-at`` annotation (watched); a missed
deadline is a (sample, resource) whose Secret is older than 1m + 30 s. Prints misses, resources that missed,
the worst age, refreshes, requests per refresh and CPU.

Prints figures; asserts nothing. Everything (operator, control plane, temporary directories) is cleaned up on
errors and Ctrl-C; a watchdog does it if this process is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "operator"))

from _realapi_helpers import (  # noqa: E402
    AuditLog,
    BenchOperator,
    Mirror,
    Reaper,
    component_pids,
    components_cpu,
    cpu_seconds,
    create_all,
    memory_mib,
    wait_for,
)

from rdsiam.testing.realapi import RealCluster  # noqa: E402
from rdsiam.testing.sts import StsServer  # noqa: E402

HOST = "bench.cluster-abc123def456.us-east-1.rds.amazonaws.com"
API = "/apis/rdsiam.io/v1alpha1"
OPERATOR_NS, OPERATOR_SA = "rdsiam-bench", "rdsiam-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
ISSUED_ANN = "rdsiam.io/issued-at"


@dataclasses.dataclass
class Runtime:
    label: str
    tree: Path

    def env(self) -> dict[str, str]:
        paths = [str(self.tree / "operator"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        return {"PYTHONPATH": os.pathsep.join(paths)}


def runtimes(paths: list[str] | None) -> list[Runtime]:
    out = []
    for text in paths or [str(ROOT)]:
        tree = Path(text).resolve()
        if not (tree / "operator" / "rdsiam" / "cli.py").is_file():
            raise SystemExit(f"--runtime-tree {text}: no operator/rdsiam/cli.py there")
        if tree == ROOT:
            label = "working tree"
        else:
            commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
            label = f"{tree.name} ({commit})" if commit else tree.name
        out.append(Runtime(label, tree))
    return out


def credentials(n: int, namespaces: int, interval: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(n):
        ns = f"bench-{i % namespaces}"
        out.append((f"{API}/namespaces/{ns}/rdsiamcredentials", {
            "apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
            "metadata": {"name": f"db-{i:05d}", "namespace": ns},
            "spec": {"host": HOST, "username": f"user{i}", "database": "app", "refreshInterval": interval}}))
    return out


def is_ready(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def issued_at(obj: dict[str, Any]) -> float | None:
    stamp = ((obj.get("metadata") or {}).get("annotations") or {}).get(ISSUED_ANN)
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Context:
    """What outlives one cluster: options, the work directory, its reaper, the STS stand-in."""

    def __init__(self, args: argparse.Namespace, runtimes: list[Runtime]) -> None:
        self.args, self.runtimes = args, runtimes
        self.work = Path(tempfile.mkdtemp(prefix="rdsiam-bench-realapi-"))
        self.reaper = Reaper(self.work)
        self.sts = StsServer()
        try:
            self.sts.start()
            self.aws_env = dict(self.sts.irsa_env(self.sts.create_role("rdsiam-operator"), str(self.work / "irsa")))
        except BaseException:
            self.close()
            raise
        self.floors_done: set[int] = set()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sts.stop()
        self.reaper.close(keep=self.args.keep)
        if self.args.keep:
            print(f"kept {self.work}")


class Stack:
    """One fresh cluster with the audit log on, the operator's identity, and (later) one operator."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx = ctx
        self.dir = ctx.work / name
        self.dir.mkdir(parents=True)
        self.audit = AuditLog(self.dir, OPERATOR_USER)
        self.cluster = RealCluster(crds=sorted((ROOT / "crds").glob("*.yaml")),
                                   extra_apiserver_args=self.audit.apiserver_args())
        self.mirrors: list[Mirror] = []
        self.operator: BenchOperator | None = None
        self.kubeconfig = ""

    def __enter__(self) -> Stack:
        try:
            self.cluster.start()
            self._identity()
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for mirror in self.mirrors:
            mirror.stop()
        try:
            if self.operator is not None:
                self.operator.stop(timeout=30)
        finally:
            self.cluster.stop()
            if not self.ctx.args.keep:  # tens of MB at N = 10,000; the next cluster needs the disk more
                self.audit.path.unlink(missing_ok=True)

    def _identity(self) -> None:
        c = self.cluster
        c.request("POST", "/api/v1/namespaces", {"metadata": {"name": OPERATOR_NS}})
        c.request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
            "metadata": {"name": "rdsiam-bench-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]})
        self.kubeconfig = c.service_account_kubeconfig(OPERATOR_NS, OPERATOR_SA, expiration_seconds=86400)
        token = json.loads(Path(self.kubeconfig).read_text())["users"][0]["user"]["token"]
        wait_for("the operator's ClusterRoleBinding to take effect", lambda: c.request(
            "GET", f"{API}/rdsiamcredentials?limit=1", token=token)[0] == 200, 60)

    def create(self, n: int, interval: str) -> float:
        began = time.monotonic()
        for i in range(self.ctx.args.namespaces):
            status, body = self.cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": f"bench-{i}"}})
            if status not in (201, 409):
                raise RuntimeError(f"namespace bench-{i}: HTTP {status}: {body}")
        create_all(self.cluster, credentials(n, self.ctx.args.namespaces, interval), timeout=self.ctx.args.timeout)
        return time.monotonic() - began

    def mirror(self, path: str, keep: Any) -> Mirror:
        mirror = Mirror(self.cluster, path, keep)
        self.mirrors.append(mirror)
        if not mirror.synced.wait(120):
            raise TimeoutError(f"listing {path}: {mirror.error or 'no answer'} within 120 s")
        return mirror

    def start_operator(self, runtime: Runtime) -> BenchOperator:
        args = self.ctx.args
        if self.operator is None:
            self.operator = BenchOperator(
                self.kubeconfig, {**self.ctx.aws_env, **runtime.env()},
                ["--log-level", "info", "--concurrency", str(args.concurrency)],
                log_dir=str(self.dir / "operator"), metrics=False, reaper=self.ctx.reaper)
        self.operator.start(timeout=min(args.timeout, 300))
        return self.operator

    def alive(self) -> bool:
        op = self.operator
        if op is None or op.proc is None or op.proc.poll() is not None:
            tail = op.log_tail(30) if op is not None else ""
            raise RuntimeError(f"the operator exited; log:\n{tail}")
        return True


def writes_text(c: Counter[str]) -> str:
    parts = [f"{c[k]} {k}" for k in ("secret", "status", "resource", "event", "lease")]
    parts += [f"{v} {k[6:]}" for k, v in sorted(c.items()) if k.startswith("other:")]
    failed = ", ".join(f"{v} {k[7:]}" for k, v in sorted(c.items()) if k.startswith("failed:"))
    return (f"{c['writes']} writes ({', '.join(parts)}; {c['failed']} failed{': ' + failed if failed else ''}), "
            f"{c['reads']} reads, {c['watchs']} watches")


def run_floor(ctx: Context, stack: Stack, n: int) -> dict[str, Any]:
    """``floor.py`` (the working tree's, else a runtime tree's) against this cluster, as its admin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(ctx.aws_env)
    env["SSL_CERT_FILE"] = stack.cluster.ca_file  # the floor's client trusts the default store
    stack.cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": "floor"}})
    errors = []
    for tree in dict.fromkeys([ROOT, *(r.tree for r in ctx.runtimes)]):
        script = tree / "benchmarks" / "floor.py"
        if not script.is_file():
            continue
        proc = subprocess.run([sys.executable, str(script), "--kubeconfig", stack.cluster.kubeconfig, "--n", str(n),
                               "--namespace", "floor", "--passes", "create"],
                              capture_output=True, text=True, env=env, timeout=ctx.args.timeout)
        if proc.returncode == 0:
            out = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
            out["script"] = "working tree" if tree == ROOT else tree.name
            return out
        errors.append(f"{script}: " + (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1])
    return {"error": "; ".join(errors) or "no floor.py"}


def profile(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """With RDSIAM_BENCH_PROFILE=DIR and py-spy installed: sample the operator (from start to all Ready, and
    the idle window) into DIR/NAME.txt (collapsed stacks, for flame graphs or grep)."""
    where = os.environ.get("RDSIAM_BENCH_PROFILE")
    spy = shutil.which("py-spy")
    if not where or not spy:
        return None
    Path(where).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                             "-o", str(Path(where) / f"{name}.txt")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def phase_start(ctx: Context, runtime: Runtime, n: int) -> dict[str, Any]:
    args = ctx.args
    slug = re.sub(r"[^a-z0-9]+", "-", runtime.label.lower()).strip("-")
    r: dict[str, Any] = {"n": n, "runtime": runtime.label}
    with Stack(ctx, f"start-{n}-{slug}") as st:
        r["setup_s"] = st.create(n, "10m")
        ready = st.mirror(f"{API}/rdsiamcredentials", is_ready)
        secrets = st.mirror("/api/v1/secrets", issued_at)
        pids = component_pids(st.cluster)
        comp0, own0 = components_cpu(pids), own_cpu()

        since = time.time()
        t0 = time.monotonic()
        op = st.start_operator(runtime)
        r["healthy_s"] = time.monotonic() - t0
        cpu_healthy = cpu_seconds(op.pid)
        profiler = profile(op.pid, f"start-{n}-{slug}")
        wait_for(f"all {n} Ready", lambda: st.alive() and sum(ready.values()) >= n, args.timeout, 0.25)
        if profiler is not None:  # py-spy writes its profile when interrupted
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        r["all_ready_s"] = time.monotonic() - t0
        r["cpu_ready_s"] = cpu_seconds(op.pid)
        r["rss_mib"], r["hwm_mib"] = memory_mib(op.pid)
        comp1, own1 = components_cpu(pids), own_cpu()
        r["components_cpu_s"] = {k: comp1[k] - comp0.get(k, 0.0) for k in comp1}
        r["harness_cpu_s"] = own1 - own0
        r["secrets"] = len(secrets.items)
        r["cpu_per_resource_ms"] = r["cpu_ready_s"] / n * 1000
        r["cpu_per_resource_after_healthy_ms"] = (r["cpu_ready_s"] - cpu_healthy) / n * 1000
        r["cpu_healthy_s"] = cpu_healthy

        r["quiet_after_s"] = st.audit.wait_quiet(2.0, args.timeout)
        r["writes_start"] = st.audit.count(since)
        idle_since = time.time()
        cpu_a = cpu_seconds(op.pid)
        profiler = profile(op.pid, f"idle-{n}-{slug}")
        time.sleep(args.idle_seconds)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        st.alive()
        cpu_b = cpu_seconds(op.pid)
        r["rss_idle_mib"], _ = memory_mib(op.pid)
        r["writes_idle"] = st.audit.count(idle_since)
        r["idle_pct"] = (cpu_b - cpu_a) / args.idle_seconds * 100
        per_s = n / 600.0
        r["steady_pct"] = r["idle_pct"] + per_s * r["cpu_per_resource_ms"] / 10
        r["steady_after_healthy_pct"] = r["idle_pct"] + per_s * r["cpu_per_resource_after_healthy_ms"] / 10

        t_stop = time.monotonic()
        op.stop(timeout=30)
        r["stop_s"] = time.monotonic() - t_stop
        since = time.time()
        t1 = time.monotonic()
        st.start_operator(runtime)
        r["restart_healthy_s"] = time.monotonic() - t1
        time.sleep(args.restart_window)
        st.alive()
        r["writes_restart"] = st.audit.count(since)
        r["restart_cpu_s"] = cpu_seconds(op.pid)
        r["restart_rss_mib"], _ = memory_mib(op.pid)
        op.stop(timeout=30)

        if not args.no_floor and n not in ctx.floors_done:
            ctx.floors_done.add(n)
            r["floor"] = run_floor(ctx, st, n)
    return r


def phase_interval(ctx: Context, runtime: Runtime, m: int, minutes: float) -> dict[str, Any]:
    args = ctx.args
    slug = re.sub(r"[^a-z0-9]+", "-", runtime.label.lower()).strip("-")
    interval, grace = 60.0, 30.0
    r: dict[str, Any] = {"m": m, "minutes": minutes, "runtime": runtime.label}
    with Stack(ctx, f"interval-{m}-{slug}") as st:
        st.create(m, "1m")
        ready = st.mirror(f"{API}/rdsiamcredentials", is_ready)
        secrets = st.mirror("/api/v1/secrets", issued_at)
        t0 = time.monotonic()
        op = st.start_operator(runtime)
        wait_for(f"all {m} Ready", lambda: st.alive() and sum(ready.values()) >= m and len(secrets.items) >= m,
                 args.timeout, 0.25)
        r["all_ready_s"] = time.monotonic() - t0
        # The first issue's trailing writes (Events) are not the refreshes': the window opens once they are
        # done, or after 30 s at most (ages are all under the interval until then).
        try:
            r["quiet_after_s"] = st.audit.wait_quiet(2.0, 30.0)
        except TimeoutError:
            r["quiet_after_s"] = None
        since, cpu0 = time.time(), cpu_seconds(op.pid)
        end = time.monotonic() + minutes * 60
        missed, samples, worst, missing = 0, 0, 0.0, 0
        late: set[str] = set()
        while time.monotonic() < end:
            st.alive()
            now = time.time()
            items = dict(secrets.items)
            missing = max(missing, m - len(items))
            for key, issued in items.items():
                age = now - issued
                worst = max(worst, age)
                if age > interval + grace:
                    missed += 1
                    late.add(key)
            samples += 1
            time.sleep(min(args.sample_seconds, max(end - time.monotonic(), 0.0)))
        elapsed = time.time() - since
        r["cpu_pct"] = (cpu_seconds(op.pid) - cpu0) / elapsed * 100
        r["rss_mib"], r["hwm_mib"] = memory_mib(op.pid)
        r.update({"samples": samples, "missed": missed, "late_resources": len(late), "worst_age_s": worst,
                  "most_missing": missing, "writes": st.audit.count(since, since + elapsed),
                  "watch_error": secrets.error})
    return r


def report_start(r: dict[str, Any]) -> None:
    n, tag = r["n"], f"  [{r['runtime']}]"
    print(f"{tag} {n:,} created in {r['setup_s']:.1f} s (not part of any figure)")
    print(f"{tag} start -> healthy {r['healthy_s']:.2f} s; -> all {n:,} Ready {r['all_ready_s']:.2f} s "
          f"({r['secrets']:,} Secrets)")
    print(f"{tag} RSS at all Ready {r['rss_mib']:.0f} MiB (peak VmHWM {r['hwm_mib']:.0f} MiB); idle "
          f"{r['rss_idle_mib']:.0f} MiB")
    comps = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(r["components_cpu_s"].items()))
    print(f"{tag} CPU start -> all Ready: operator {r['cpu_ready_s']:.1f} s ({r['cpu_healthy_s']:.1f} s of it "
          f"before healthy) = {r['cpu_per_resource_ms']:.2f} ms per resource incl. start-up, "
          f"{r['cpu_per_resource_after_healthy_ms']:.2f} ms after healthy; {comps}; harness {r['harness_cpu_s']:.1f} s")
    print(f"{tag} first issue: {writes_text(r['writes_start'])}")
    print(f"{tag} idle ({r['quiet_after_s']:.0f} s after all Ready until quiet, then a window): "
          f"{r['idle_pct']:.2f}% of a core; {r['writes_idle']['writes']} writes")
    print(f"{tag} steady state at a 10-minute interval ~{r['steady_pct']:.2f}% of a core "
          f"(~{r['steady_after_healthy_pct']:.2f}% with the per-refresh CPU after healthy)")
    print(f"{tag} restart with {n:,} fresh Secrets: stopped in {r['stop_s']:.1f} s, healthy in "
          f"{r['restart_healthy_s']:.2f} s; until healthy + window: {writes_text(r['writes_restart'])}; "
          f"CPU {r['restart_cpu_s']:.1f} s, RSS {r['restart_rss_mib']:.0f} MiB")
    floor = r.get("floor")
    if floor and "error" in floor:
        print(f"  [floor] not measured: {floor['error'][:300]}")
    elif floor:
        rate = n / max(r["all_ready_s"] - r["healthy_s"], 1e-9)
        print(f"  [floor] sign + POST of {n:,} Secrets ({floor['script']}'s floor.py, concurrency 16): "
              f"{n / floor['create_s']:.0f}/s; this operator's first issue {rate:.0f}/s -> "
              f"{rate * floor['create_s'] / n:.2f} of the floor")


def report_interval(r: dict[str, Any]) -> None:
    tag, w = f"  [{r['runtime']}]", r["writes"]
    refreshes = max(w["secret"], 1)
    quiet = r["quiet_after_s"]
    print(f"{tag} all {r['m']:,} Ready {r['all_ready_s']:.1f} s after start; "
          + (f"quiet {quiet:.0f} s later" if quiet is not None else "still writing 30 s later")
          + f"; then {r['minutes']:g} min, {r['samples']} samples")
    print(f"{tag} missed deadlines (Secret older than 1m + 30 s) {r['missed']} in {r['late_resources']} "
          f"resources; worst age {r['worst_age_s']:.0f} s; most Secrets missing at a sample {r['most_missing']}")
    print(f"{tag} {writes_text(w)}")
    print(f"{tag} {w['secret']} Secret writes ({w['secret'] / (r['m'] * r['minutes']):.2f} per resource-minute); "
          f"per refresh {w['status'] / refreshes:.2f} status, {w['resource'] / refreshes:.2f} resource, "
          f"{w['event'] / refreshes:.2f} Event writes, {w['reads'] / refreshes:.2f} reads; "
          f"operator CPU {r['cpu_pct']:.1f}% of a core, RSS {r['rss_mib']:.0f} MiB (peak {r['hwm_mib']:.0f})")
    if r["watch_error"]:
        print(f"{tag} (the harness's Secret watch was interrupted at least once: {r['watch_error']})")


def guarded(what: str, fn: Any, *a: Any) -> dict[str, Any] | None:
    """A failed runtime is reported and the others still run; Ctrl-C ends the run."""
    try:
        return dict(fn(*a))
    except Exception as exc:
        print(f"  FAILED {what}: {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
        if os.environ.get("RDSIAM_BENCH_TRACE"):
            traceback.print_exc()
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, action="append",
                        help="phase 1 resource counts, repeatable (default 1000; 0: skip phase 1)")
    parser.add_argument("--interval-n", type=int, default=2000, help="phase 2 resources at 1m (0: skip phase 2)")
    parser.add_argument("--interval-minutes", type=float, default=10.0)
    parser.add_argument("--runtime-tree", action="append", metavar="PATH",
                        help="a source tree whose operator/ runs the operator, repeatable (default: this tree)")
    parser.add_argument("--namespaces", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--restart-window", type=float, default=20.0, help="seconds counted after healthy")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="limit of every wait, seconds")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (operator logs, audit logs)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    ok, reason = RealCluster.available()
    if not ok:
        print(f"skipped: {reason}")
        return 0
    rts = runtimes(args.runtime_tree)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    results: dict[str, list[dict[str, Any]]] = {"start": [], "interval": []}
    ctx = Context(args, rts)
    try:
        for n in [n for n in args.n or [1000] if n > 0]:
            print(f"\n== N = {n:,} RdsIamCredentials (refreshInterval 10m, {args.namespaces} namespaces), one "
                  f"operator (--concurrency {args.concurrency}), real kube-apiserver + etcd ==", flush=True)
            for rt in rts:
                r = guarded(f"{rt.label}, N = {n}", phase_start, ctx, rt, n)
                if r:
                    report_start(r)
                    results["start"].append(r)
                sys.stdout.flush()
        if args.interval_n > 0:
            print(f"\n== {args.interval_n:,} RdsIamCredentials at refreshInterval 1m for {args.interval_minutes:g} "
                  "min ==", flush=True)
            for rt in rts:
                r = guarded(f"{rt.label}, interval phase", phase_interval, ctx, rt, args.interval_n,
                            args.interval_minutes)
                if r:
                    report_interval(r)
                    results["interval"].append(r)
                sys.stdout.flush()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up
        ctx.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=dict))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
