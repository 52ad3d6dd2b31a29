"""The floor: only the unavoidable work per credential — sign a token with cached credentials and
write it into the Secret once — with the operator's own HTTP client and concurrency, against the same
server.

    python benchmarks/floor.py --kubeconfig PATH --n 1000 [--namespace floor]

Two timed passes over N Secrets: ``create`` (sign + one POST: what a first issue cannot avoid) and
``patch`` (sign + one merge PATCH of the existing Secret: what a refresh cannot avoid).
Prints one JSON line: {"n": N, "create_s": S, "patch_s": S}.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

import yaml  # noqa: E402

from rdsiam.operator.aws import Credentials, sign_token  # noqa: E402
from rdsiam.operator.kubeapi import KubeApi  # noqa: E402

HOST = "bench.cluster-abc123def456.us-east-1.rds.amazonaws.com"


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> float:
    slots = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with slots:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(n)))
    return time.perf_counter() - start


async def main_async(kubeconfig: str, n: int, ns: str, concurrency: int) -> dict[str, float]:
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    server = cfg["clusters"][0]["cluster"]["server"]
    token = cfg["users"][0]["user"].get("token")
    kube = KubeApi(server, headers={"Authorization": f"Bearer {token}"} if token else {})
    creds = Credentials("ASIAFLOOR", "secret", "session-token" * 40, dt.datetime(2099, 1, 1, tzinfo=dt.UTC))

    def data(i: int) -> dict[str, str]:
        tok = sign_token(creds, HOST, 5432, f"user{i}", "us-east-1")
        return {"password": base64.b64encode(tok.encode()).decode()}

    async def create(i: int) -> object:
        return await kube.create_secret(ns, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                             "metadata": {"name": f"floor-{i:05d}", "namespace": ns},
                                             "data": data(i)})

    async def patch(i: int) -> object:
        return await kube._request("PATCH", f"/api/v1/namespaces/{ns}/secrets/floor-{i:05d}",
                                   body={"data": data(i)}, content_type="application/merge-patch+json")

    result = {"n": n, "create_s": await timed(n, concurrency, create), "patch_s": await timed(n, concurrency, patch)}
    await kube.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--namespace", default="floor")
    p.add_argument("--concurrency", type=int, default=16)
    a = p.parse_args()
    print(json.dumps(asyncio.run(main_async(a.kubeconfig, a.n, a.namespace, a.concurrency))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
