"""Identity: STS calls for N resources that share an assumed role, and for N distinct roles.

    .venv/bin/python benchmarks/bench_identity.py [--n 200]

Target: one AssumeRole per credential lifetime for a shared identity, whatever N; N for N roles.
Also the time until all are Ready in both cases (distinct roles are bound by STS latency).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale import HOST, Counter, wait  # noqa: E402

from rdsiam.testing.kube import KubeEmulator  # noqa: E402
from rdsiam.testing.operator import OperatorProcess  # noqa: E402
from rdsiam.testing.sts import StsServer  # noqa: E402


def creds(n: int, ns: str, roles: list[str]) -> list[dict[str, Any]]:
    return [{"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
             "metadata": {"name": f"db-{i:05d}", "namespace": ns},
             "spec": {"host": HOST, "username": f"user{i}", "assumeRoleArn": roles[i % len(roles)]}}
            for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    n = args.n
    with KubeEmulator() as emu, StsServer() as sts:
        emu.apply_manifest(str(ROOT / "crds"))
        count = Counter(emu)
        shared = sts.create_role("shared-db-connect")
        distinct = [sts.create_role(f"db-connect-{i}") for i in range(n)]
        op = OperatorProcess(emu.kubeconfig, sts.irsa_env(sts.create_role("rdsiam-operator"),
                                                          tempfile.mkdtemp()), ["--log-level", "warning"],
                             metrics=False)
        op.start(timeout=60)
        try:
            rows = []
            for label, roles in (("one shared role", [shared]), (f"{n} distinct roles", distinct)):
                ns = "shared" if len(roles) == 1 else "distinct"
                emu.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
                sts.reset_calls()
                t = time.monotonic()
                emu.apply_manifest(creds(n, ns, roles))
                wait(label, lambda ns=ns: count.ready(ns) >= n, 300, 0.05)
                rows.append((label, sts.calls("AssumeRole"), sts.calls("AssumeRoleWithWebIdentity"),
                             time.monotonic() - t))
        finally:
            op.stop()
    print(f"\n== Identity: {n} resources ==")
    for label, assume, web, seconds in rows:
        print(f"  {label:20} AssumeRole calls {assume:4d} ({assume / n:.3f} per resource), "
              f"AssumeRoleWithWebIdentity {web}, all Ready in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
