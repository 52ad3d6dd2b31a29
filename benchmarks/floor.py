"""The floor: only the unavoidable work per credential — sign a token with cached credentials and
write the Secret once — with the operator's own HTTP client and concurrency, against the same server.

    python benchmarks/floor.py --kubeconfig PATH --n 1000 [--namespace floor]

Prints one JSON line: {"n": N, "seconds": S}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

import yaml  # noqa: E402

from rdsiam.operator.aws import Credentials, sign_token  # noqa: E402
from rdsiam.operator.kubeapi import KubeApi  # noqa: E402

HOST = "bench.cluster-abc123def456.us-east-1.rds.amazonaws.com"


async def main_async(kubeconfig: str, n: int, ns: str, concurrency: int) -> float:
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    server = cfg["clusters"][0]["cluster"]["server"]
    token = cfg["users"][0]["user"].get("token")
    kube = KubeApi(server, headers={"Authorization": f"Bearer {token}"} if token else {})
    creds = Credentials("ASIAFLOOR", "secret", "session-token" * 40, dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            tok = sign_token(creds, HOST, 5432, f"user{i}", "us-east-1")
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": f"floor-{i:05d}", "namespace": ns},
                    "data": {"password": base64.b64encode(tok.encode()).decode()}}
            await kube.create_secret(ns, body)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    await kube.close()
    return elapsed


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--namespace", default="floor")
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args()
    seconds = asyncio.run(main_async(a.kubeconfig, a.n, a.namespace, a.concurrency))
    print(json.dumps({"n": a.n, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
