"""The MySQL login probe (``spec.verify``, ``rdsiam check --connect``) against PyMySQL on the same servers.

    .venv/bin/python benchmarks/bench_mysql_probe.py [--n 50]

Each sample is one whole login as an app would make it: TCP, TLS verified against the server's CA (with the
host name), login, ``SELECT 1``, close. Two servers: the IAM-checking MySQL front door (the token goes through
``mysql_clear_password`` and is checked with SigV4, then the login is relayed to MariaDB) and MariaDB itself
(a user without a password, so the login is the server's own method). Probe and PyMySQL alternate, so
both see the same machine load; the first of each is dropped as warm-up. Prints medians, p90 and the
ratio; no assertion on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import time
from collections.abc import Callable

import pymysql

from rdsiam import _mysqlwire
from rdsiam.testing.mysql import MariaDBServer
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.sts import StsServer

USER, OPEN_USER, DB = "bench_app", "bench_open", "bench_db"


def pymysql_login(host: str, port: int, user: str, password: str, ca: str) -> None:
    # CA and host name verified, like the probe's VERIFY_IDENTITY (the certificates also name 127.0.0.1)
    ctx = ssl.create_default_context(cafile=ca)
    conn = pymysql.connect(host=host, port=port, user=user, password=password, database=DB, ssl=ctx,
                           connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchall()
    finally:
        conn.close()


LOOP = asyncio.new_event_loop()  # one long-lived loop, as in the operator


def probe_login(host: str, port: int, user: str, password: str, ca: str, hostaddr: str) -> None:
    result = LOOP.run_until_complete(_mysqlwire.probe(host, port, user, password, DB, ssl_mode="VERIFY_IDENTITY",
                                                      ssl_ca=ca, hostaddr=hostaddr))
    if not result.ok:
        raise RuntimeError(f"probe failed: {result.kind} {result.message}")


def sample(n: int, runs: dict[str, Callable[[], None]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(n + 1):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if i:  # the first is a warm-up
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def report(title: str, times: dict[str, list[float]]) -> None:
    print(title)
    medians = {}
    for name, ms in times.items():
        medians[name] = statistics.median(ms)
        p90 = statistics.quantiles(ms, n=10)[-1]
        print(f"  {name:<28} median {medians[name]:7.2f} ms   p90 {p90:7.2f} ms   ({len(ms)} logins)")
    probe, baseline = medians["rdsiam probe"], medians["PyMySQL"]
    print(f"  probe / PyMySQL: {probe / baseline:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    with StsServer(region="us-east-1") as sts, MariaDBServer() as mariadb, \
            IamMySQL(mariadb, sts.lookup, region=sts.region) as rds:
        rds.create_user(USER, database=DB)
        mariadb.create_user(OPEN_USER, "", database=DB)
        token = sts.token_minter("bench-mysql-probe", rds.endpoint, rds.port)(USER)  # valid 15 min: enough
        version = mariadb.execute("SELECT VERSION()")[0][0]
        print(f"python {sys.version.split()[0]}, PyMySQL {pymysql.__version__}, {version}")
        report(f"IAM front door ({rds.endpoint}, token {len(token)} bytes):", sample(args.n, {
            "rdsiam probe": lambda: probe_login(rds.endpoint, rds.port, USER, token, rds.ca_file, rds.hostaddr),
            "PyMySQL": lambda: pymysql_login(rds.hostaddr, rds.port, USER, token, rds.ca_file),
        }))
        report("MariaDB directly (TLS, a user without a password):", sample(args.n, {
            "rdsiam probe": lambda: probe_login("localhost", mariadb.port, OPEN_USER, "", mariadb.ca_file,
                                                mariadb.host),
            "PyMySQL": lambda: pymysql_login(mariadb.host, mariadb.port, OPEN_USER, "", mariadb.ca_file),
        }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
