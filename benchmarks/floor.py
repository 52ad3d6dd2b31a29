"""The floor: only the unavoidable work per credential, with the operator's own HTTP client,
concurrency and helpers, against the same server.

    python benchmarks/floor.py --kubeconfig PATH --n 1000 [--namespace floor] [--passes create,patch,token]

Each pass signs a token per Secret with cached credentials (from boto3's chain when AWS settings are in
the environment, as the benchmark passes the operator's IRSA settings) and writes the Secret once, without
decoding the answer (a bare client needs nothing from it; the operator needs the Secret's new
resourceVersion from its Secret write, and decodes nothing of its status write):

- ``create``: one POST of the Secret with the contents the product promises (username, password, host,
  port, dbname, dsn, expires-at, pgpass, built by the operator's own ``secret_data``): a first issue's floor.
- ``patch``: one merge PATCH of that existing Secret with new contents: a refresh's floor.
- ``token``: one merge PATCH of the ``password`` key alone (the least any refresh could write).

Prints one JSON line: {"n": N, "create_s": S, "patch_s": S, "token_s": S}.
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

import aiohttp  # noqa: E402
import yaml  # noqa: E402

from rdsiam.operator.aws import Credentials, sign_token  # noqa: E402
from rdsiam.operator.policy import rfc3339  # noqa: E402
from rdsiam.operator.reconcile import secret_data  # noqa: E402
from rdsiam.operator.target import Target, resolve  # noqa: E402

HOST = "bench.cluster-abc123def456.us-east-1.rds.amazonaws.com"
# Without AWS credentials in the environment: a session token as long as STS hands out for an assumed role
# (about 1 KB; signing cost grows with it).
SESSION_TOKEN = "IQoJb3JpZ2luX2VjE" * 60


def cached_credentials() -> Credentials:
    """Credentials as the operator gets them (boto3's chain: IRSA in the benchmark), fetched once."""
    import boto3

    found = boto3.Session().get_credentials()
    if found is None:
        return Credentials("ASIAFLOOR", "secret", SESSION_TOKEN, dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
    frozen = found.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token, None)


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> float:
    slots = asyncio.Semaphore(concurrency)

    async def run(i: int) -> None:
        async with slots:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(n)))
    return time.perf_counter() - start


def targets(n: int) -> list[Target]:
    return [resolve(host=HOST, port=5432, database="app", username=f"user{i}") for i in range(n)]


def contents(creds: Credentials, target: Target) -> dict[str, str]:
    """A fresh token and the Secret's data built from it (base64, as written)."""
    tok = sign_token(creds, target.signing_host, target.port, target.username, target.region)
    data = secret_data(target, tok, rfc3339(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)))
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


class KubeApi:
    """The bare HTTP client of the floor: one aiohttp session, answers read and not decoded."""

    def __init__(self, server: str, headers: dict[str, str]) -> None:
        self.server, self.headers = server.rstrip("/"), headers
        self.session: aiohttp.ClientSession | None = None

    async def _request(self, method: str, path: str, *, body: object, content_type: str = "application/json",
                       decode: str = "none") -> object:
        if self.session is None:
            self.session = aiohttp.ClientSession(headers=self.headers, connector=aiohttp.TCPConnector(limit=32))
        async with self.session.request(method, self.server + path, data=json.dumps(body),
                                        headers={"Content-Type": content_type}) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {raw[:200]!r}")
            return raw

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def secret_path(ns: str, i: int) -> str:
    return f"/api/v1/namespaces/{ns}/secrets/floor-{i:05d}"


async def patch(kube: KubeApi, ns: str, creds: Credentials, target: Target, i: int) -> object:
    """A refresh's floor: sign, then one merge PATCH of the existing Secret ``floor-i``."""
    return await kube._request("PATCH", secret_path(ns, i), body={"data": contents(creds, target)},
                               content_type="application/merge-patch+json", decode="none")


async def main_async(kubeconfig: str, n: int, ns: str, concurrency: int, passes: list[str]) -> dict[str, float]:
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    server = cfg["clusters"][0]["cluster"]["server"]
    token = cfg["users"][0]["user"].get("token")
    kube = KubeApi(server, headers={"Authorization": f"Bearer {token}"} if token else {})
    creds = cached_credentials()
    tgts = targets(n)

    def password(i: int) -> dict[str, str]:
        target = tgts[i]
        tok = sign_token(creds, target.signing_host, target.port, target.username, target.region)
        return {"password": base64.b64encode(tok.encode()).decode()}

    async def create(i: int) -> object:
        return await kube._request("POST", f"/api/v1/namespaces/{ns}/secrets", decode="none", body={
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": f"floor-{i:05d}", "namespace": ns}, "data": contents(creds, tgts[i])})

    async def patch_all(i: int) -> object:
        return await patch(kube, ns, creds, tgts[i], i)

    async def patch_token(i: int) -> object:
        return await kube._request("PATCH", secret_path(ns, i), body={"data": password(i)},
                                   content_type="application/merge-patch+json", decode="none")

    result: dict[str, float] = {"n": n}
    for name, one in (("create", create), ("patch", patch_all), ("token", patch_token)):
        if name in passes:  # "patch" and "token" write the Secrets an earlier "create" made
            result[f"{name}_s"] = await timed(n, concurrency, one)
    await kube.close()
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--namespace", default="floor")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--passes", default="create,patch,token")
    a = p.parse_args()
    print(json.dumps(asyncio.run(main_async(a.kubeconfig, a.n, a.namespace, a.concurrency, a.passes.split(",")))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
