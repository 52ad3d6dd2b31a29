"""``rdsiam proxy`` against a direct client and PgBouncer, side by side in one run, on loopback.

    .venv/bin/python benchmarks/bench_proxy.py [--seconds 10] [--clients 8] [--logins 50] [--copy-mb 100]

Not part of ``make bench``: the PgBouncer column needs Debian's ``pgbouncer`` (``apt-get install -y pgbouncer``;
skipped with a message without it); pgbench and psql come with PostgreSQL.

What is compared. The upstream of every column is the repository's IAM-checking front door (``rds``: TLS,
a SigV4 check of the token, then a byte relay to a real PostgreSQL over its Unix socket), because the proxy
only logs in with a token; the front door is Python and its cost is in every column alike:
- direct: pgbench/psycopg to the front door with TLS (verify-full against its CA) and the token as password;
- rdsiam proxy: the client on plain loopback TCP to ``rdsiam proxy`` (a subprocess), which opens TLS to the
  front door and logs in with the mounted token per client connection;
- PgBouncer: the client on plain loopback TCP to PgBouncer in session mode, which logs in to the front door
  with TLS (verify-full) and the same token written into its config (what a user gets from a C relay);
- and, for scale, PostgreSQL itself over its Unix socket (no TLS, no front door).
Three figures: pgbench ``-S`` (select-only) TPS and per-query latency (median and p99 from pgbench's
per-transaction log; added latency = proxy minus direct), connection setup (TCP + TLS + login, median of
``--logins`` sequential psycopg connects; added = proxy minus direct), and relay throughput of
``COPY (SELECT ...) TO STDOUT`` of about ``--copy-mb`` MB read by psycopg. No assertion on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import glob
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.sts import StsServer

USER, DB = "bench_proxy", "bench_proxy_db"
RDSIAM = str(Path(sys.executable).with_name("rdsiam"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on {port}")


@contextlib.contextmanager
def running(cmd: list[str], port: int, what: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, what)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pgbench(env: dict[str, str], args: list[str], seconds: int, clients: int,
            workdir: Path) -> tuple[float, list[float]]:
    """(TPS, per-transaction latencies in ms) of ``pgbench -S``."""
    for old in glob.glob(str(workdir / "pgbench_log*")):
        os.unlink(old)
    done = subprocess.run(["pgbench", "-n", "-S", "-c", str(clients), "-j", "2", "-T", str(seconds), "-l",
                           "--log-prefix", str(workdir / "pgbench_log"), *args],
                          env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip()[-500:]}")
    tps = next(float(line.split("=")[1].split()[0]) for line in done.stdout.splitlines() if line.startswith("tps ="))
    latencies = []
    for name in glob.glob(str(workdir / "pgbench_log*")):
        with open(name) as f:
            latencies += [int(line.split()[2]) / 1000 for line in f if line.strip()]
    return tps, latencies


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU of a process and its children so far (Linux /proc)."""
    if proc is None:
        return 0.0
    total = 0.0
    for pid in [proc.pid, *_children(proc.pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[-1]


def connect_times(connect: Callable[[], Any], n: int) -> list[float]:
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        connect().close()
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return times


def copy_rate(conn: psycopg.Connection[Any], mb: int) -> float:
    rows = mb * 1000  # ~1 KB per row
    start = time.perf_counter()
    size = 0
    with conn.cursor() as cur, cur.copy(f"COPY (SELECT repeat('x', 1017) FROM generate_series(1, {rows})) TO STDOUT") \
            as copy:
        for chunk in copy:
            size += len(chunk)
    elapsed = time.perf_counter() - start
    return size / 1e6 / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--logins", type=int, default=50)
    parser.add_argument("--copy-mb", type=int, default=100)
    parser.add_argument("--uvloop-python", metavar="PYTHON",
                        help="also run the proxy on uvloop, with this interpreter (uvloop installed in it; "
                        "default: this one, when it has uvloop: the test environment does)")
    args = parser.parse_args()
    if args.uvloop_python is None and importlib.util.find_spec("uvloop") is not None:
        args.uvloop_python = sys.executable
    pgbouncer = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    work = Path(tempfile.mkdtemp(prefix="rdsiam-bench-proxy-"))
    os.chmod(work, 0o755)
    try:
        return run(args, work, pgbouncer)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, pgbouncer: str | None) -> int:
    with StsServer(region="us-east-1") as sts, PostgresServer() as postgres, \
            IamPostgres(postgres, sts.lookup, region=sts.region) as rds:
        postgres.create_user(USER, database=DB)
        init = subprocess.run(["pgbench", "-i", "-q", "-s", "10", "-h", postgres.socket_dir, "-p", str(postgres.port),
                               "-U", USER, DB], capture_output=True, text=True)
        if init.returncode:
            raise RuntimeError(init.stderr)
        token = sts.token_minter("bench-proxy", rds.endpoint, rds.port)(USER)  # 15 minutes: the whole run
        mount = work / "mount"
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ")
        AtomicWriter(mount).write(secret_payload(username=USER, password=token, host=rds.endpoint, port=rds.port,
                                                 dbname=DB, dsn=rds.dsn(USER, DB, token), expires_at=expires))
        direct_env = {"PGHOST": rds.endpoint, "PGHOSTADDR": rds.hostaddr, "PGPORT": str(rds.port), "PGUSER": USER,
                      "PGDATABASE": DB, "PGPASSWORD": token, "PGSSLMODE": "verify-full",
                      "PGSSLROOTCERT": rds.ca_file}
        local_env = {"PGHOST": "127.0.0.1", "PGUSER": "anyone", "PGDATABASE": DB, "PGSSLMODE": "disable"}
        proxy_port, bouncer_port = free_port(), free_port()
        print(f"python {sys.version.split()[0]}, PostgreSQL {postgres.major_version}, token {len(token)} bytes, "
              f"{os.cpu_count()} CPUs; pgbench -S -c {args.clients} -j 2 -T {args.seconds}, scale 10")
        setups: dict[str, Any] = {
            "PostgreSQL unix socket": ({"PGHOST": postgres.socket_dir, "PGPORT": str(postgres.port), "PGUSER": USER,
                                        "PGDATABASE": DB}, None),
            "direct (TLS to front door)": (direct_env, None),
            "rdsiam proxy": ({**local_env, "PGPORT": str(proxy_port)},
                             ([RDSIAM, "proxy", "--credential", str(mount), "--listen", f"127.0.0.1:{proxy_port}",
                               "--log-level", "warning"], proxy_port)),
        }
        if args.uvloop_python:
            uv_port = free_port()
            setups["rdsiam proxy on uvloop"] = (
                {**local_env, "PGPORT": str(uv_port)},
                ([args.uvloop_python, "-m", "rdsiam.cli", "proxy", "--event-loop", "uvloop", "--credential",
                  str(mount), "--listen", f"127.0.0.1:{uv_port}", "--log-level", "warning"], uv_port))
            os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "operator")
        if pgbouncer:
            ca = work / "ca.pem"  # readable by the postgres user PgBouncer runs as (the front door's dir is not)
            shutil.copy(rds.ca_file, ca)
            os.chmod(ca, 0o644)
            ini = work / "pgbouncer.ini"
            ini.write_text(
                f"[databases]\n{DB} = host=127.0.0.1 port={rds.port} dbname={DB} user={USER} password={token}\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nauth_type = trust\n"
                f"auth_file = {work / 'users.txt'}\npool_mode = session\nmax_client_conn = 100\n"
                f"default_pool_size = {args.clients + 2}\nserver_tls_sslmode = verify-full\n"
                f"server_tls_ca_file = {ca}\nclient_login_timeout = 10\nunix_socket_dir =\n"
                f"logfile = {work / 'pgbouncer.log'}\n"
                f"ignore_startup_parameters = extra_float_digits\n")
            (work / "users.txt").write_text('"anyone" ""\n')
            setups["PgBouncer (session mode)"] = ({**local_env, "PGPORT": str(bouncer_port)},
                                                  (["pgbouncer", "-u", "postgres", str(ini)]
                                                   if os.geteuid() == 0 else [pgbouncer, str(ini)], bouncer_port))
            os.chmod(work, 0o777)
        else:
            print("PgBouncer: not installed (apt-get install -y pgbouncer): its column is skipped")

        results: dict[str, dict[str, float]] = {}
        for name, (env, server) in setups.items():
            with contextlib.ExitStack() as stack:
                proc = None
                if server is not None:
                    proc = stack.enter_context(running(server[0], server[1], name, work / f"{name.split()[0]}.log"))
                cpu_before = cpu_seconds(proc)
                tps, lat = pgbench(env, [], args.seconds, args.clients, work)
                cpu = (cpu_seconds(proc) - cpu_before) / (tps * args.seconds) * 1e6 if proc else 0.0
                kw = {"host": env["PGHOST"], "port": env.get("PGPORT", "5432"), "user": env["PGUSER"],
                      "dbname": env["PGDATABASE"], "password": env.get("PGPASSWORD"),
                      "sslmode": env.get("PGSSLMODE", "disable"), "sslrootcert": env.get("PGSSLROOTCERT"),
                      "hostaddr": env.get("PGHOSTADDR")}
                kw = {k: v for k, v in kw.items() if v is not None}
                setup = connect_times(functools.partial(psycopg.connect, **kw), args.logins)
                with psycopg.connect(**kw) as conn:
                    rate = copy_rate(conn, args.copy_mb)
            results[name] = {"tps": tps, "median": statistics.median(lat), "p99": p99(lat),
                             "setup": statistics.median(setup), "copy": rate, "cpu": cpu}
            r = results[name]
            print(f"  {name:<28} {r['tps']:8.0f} TPS   query median {r['median']:6.3f} ms  p99 {r['p99']:6.3f} ms   "
                  f"connect {r['setup']:6.2f} ms   COPY {r['copy']:6.1f} MB/s"
                  + (f"   relay CPU {cpu:5.1f} us/query" if proc else ""), flush=True)

        d, p = results["direct (TLS to front door)"], results["rdsiam proxy"]
        print("comparisons:")
        if "PgBouncer (session mode)" in results:
            b = results["PgBouncer (session mode)"]
            print(f"  pgbench TPS: proxy / PgBouncer {p['tps'] / b['tps']:.2f} (goal >= 0.8), proxy / direct "
                  f"{p['tps'] / d['tps']:.2f}, PgBouncer / direct {b['tps'] / d['tps']:.2f}")
            print(f"  added per query vs direct: proxy median {p['median'] - d['median']:+.3f} ms, p99 "
                  f"{p['p99'] - d['p99']:+.3f} ms; PgBouncer median {b['median'] - d['median']:+.3f} ms, p99 "
                  f"{b['p99'] - d['p99']:+.3f} ms")
        else:
            print(f"  pgbench TPS: proxy / direct {p['tps'] / d['tps']:.2f}")
            print(f"  added per query vs direct: median {p['median'] - d['median']:+.3f} ms, p99 "
                  f"{p['p99'] - d['p99']:+.3f} ms")
        print(f"  connection setup: proxy {p['setup']:.2f} ms vs direct TLS login {d['setup']:.2f} ms: "
              f"{p['setup'] - d['setup']:+.2f} ms")
        if "rdsiam proxy on uvloop" in results:
            u = results["rdsiam proxy on uvloop"]
            print(f"  on uvloop: {u['tps']:.0f} TPS" + (f", proxy / PgBouncer {u['tps'] / b['tps']:.2f}" if
                  "PgBouncer (session mode)" in results else "") + f", median {u['median'] - d['median']:+.3f} ms, "
                  f"p99 {u['p99'] - d['p99']:+.3f} ms, setup {u['setup'] - d['setup']:+.2f} ms, COPY "
                  f"{u['copy']:.1f} MB/s")
        print(f"  COPY TO STDOUT {args.copy_mb} MB: proxy {p['copy']:.1f} MB/s vs direct {d['copy']:.1f} MB/s "
              f"({p['copy'] / d['copy']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
