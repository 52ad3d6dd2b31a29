"""The demo: the whole product end to end on the local stack, in under a minute (``make demo``).

Starts the Kubernetes API emulator, STS (moto) reached the way IRSA reaches it, a real PostgreSQL
behind an IAM-checking front door, and the operator; applies ``examples/basic``; waits for the
Secret; logs in with the DSN from it; rotates the token; shows a failure explained by
``kubectl describe``. Tokens are never printed: only their length.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("",) * 5


def step(text: str) -> None:
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


class DemoError(Exception):
    """A step the rest of the demo needs did not work: said in one line, with where to look."""


def show(cmd: list[str], env: dict[str, str], *, required: bool = False) -> str:
    print(f"{DIM}$ {' '.join(cmd)}{RESET}", flush=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    print(text.rstrip(), flush=True)
    if required and out.returncode != 0:
        raise DemoError(f"'{' '.join(cmd[:3])} ...' failed (exit {out.returncode}); see its output above")
    return text


def kubectl_json(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run(["kubectl", *args, "-o", "yaml"], env=env, capture_output=True, text=True, check=True)
    return yaml.safe_load(out.stdout)


def wait_for(what: str, fn: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
        except subprocess.CalledProcessError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def main() -> int:
    """Run the demo; on failure one line says what failed and where the operator's log is (kept)."""
    work = Path(tempfile.mkdtemp(prefix="rdsiam-demo-"))
    try:
        _demo(work)
    except (DemoError, TimeoutError, subprocess.CalledProcessError, OSError) as exc:
        print(f"\n{RED}Demo failed: {exc}{RESET}\n  work directory, with the operator's log: {work}", file=sys.stderr)
        return 1
    if not os.environ.get("RDSIAM_DEMO_KEEP"):
        shutil.rmtree(work, ignore_errors=True)  # fake AWS credentials and the log (RDSIAM_DEMO_KEEP=1 keeps them)
    return 0


def _demo(work: Path) -> None:
    import psycopg

    from rdsiam.testing.kube import KubeEmulator
    from rdsiam.testing.operator import OperatorProcess
    from rdsiam.testing.postgres import PostgresServer
    from rdsiam.testing.rds import IamPostgres
    from rdsiam.testing.sts import StsServer

    started = time.monotonic()
    step("Starting the local stack: Kubernetes API emulator, STS (moto), PostgreSQL behind an IAM check")
    with KubeEmulator() as kube, StsServer() as sts, PostgresServer() as pg, IamPostgres(pg, sts.lookup) as rds:
        pg.execute("CREATE DATABASE orders")
        pg.create_user("app_user", rds_iam=True)
        env = {**os.environ, "KUBECONFIG": kube.kubeconfig}
        print(f"  kube-apiserver emulator  {kube.url}")
        print(f"  STS (IRSA endpoint)      {sts.url}")
        print(f"  'RDS' endpoint           {rds.endpoint}:{rds.port} (TLS, IAM tokens only)")

        step("Installing the CRD (kubectl apply -f crds/)")
        show(["kubectl", "apply", "--validate=false", "-f", str(ROOT / "crds")], env, required=True)

        step("Starting the operator (rdsiam run) with IRSA credentials for role rdsiam-operator")
        role = sts.create_role("rdsiam-operator")
        operator = OperatorProcess(kube.kubeconfig, sts.irsa_env(role, str(work)), log_dir=str(work))
        operator.start()
        print(f"  operator healthy; log: {operator.log_path}")
        try:
            step("Applying examples/basic/rdsiamcredential.yaml (pointed at the local endpoint)")
            manifest = yaml.safe_load((ROOT / "examples/basic/rdsiamcredential.yaml").read_text())
            manifest["spec"]["dsn"] = (
                f"postgresql://app_user:$TOKEN@{rds.endpoint}:{rds.port}/orders?sslmode=verify-full"
                f"&sslrootcert={rds.ca_file}&hostaddr=127.0.0.1")
            print(f"  {DIM}(hostaddr=127.0.0.1 makes libpq dial loopback while verifying TLS for the RDS name){RESET}")
            path = work / "orders-db.yaml"
            path.write_text(yaml.safe_dump(manifest))
            show(["kubectl", "create", "namespace", "shop"], env, required=True)
            applied = time.monotonic()
            show(["kubectl", "apply", "--validate=false", "-f", str(path)], env, required=True)

            step("Waiting for the Secret")
            secret = wait_for("Secret shop/orders-db", lambda: kubectl_json(env, "-n", "shop", "get", "secret",
                                                                            "orders-db"))
            print(f"  Secret written {time.monotonic() - applied:.2f} s after kubectl apply")
            data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
            for key in sorted(data):
                shown = f"<IAM token, {len(data[key])} bytes>" if key in ("password", "dsn", "pgpass") \
                    else data[key]
                print(f"  {key:10} {shown}")
            show(["kubectl", "get", "rdsiam", "-n", "shop"], env)

            step("Logging in to the IAM-checking PostgreSQL with the DSN from the Secret")
            first = psycopg.connect(data["dsn"], connect_timeout=5)
            row = first.execute("SELECT current_user").fetchone()
            print(f"  {GREEN}connected as {row[0] if row else '?'} over TLS "
                  f"(verified for {rds.endpoint}): {first.pgconn.ssl_in_use}{RESET}")

            step("Rotating the token (as the 10-minute schedule would; here on request)")
            old_expiry = data["expires-at"]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
            time.sleep(1.1)
            show(["kubectl", "-n", "shop", "annotate", "rdsiam", "orders-db", "--overwrite",
                  f"rdsiam.io/refresh-requested-at={stamp}"], env)

            def rotated() -> dict[str, str] | None:
                s = kubectl_json(env, "-n", "shop", "get", "secret", "orders-db")
                d = {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
                return d if d["password"] != data["password"] else None

            new = wait_for("a new token", rotated)
            print(f"  expires-at {old_expiry} -> {new['expires-at']}; new token {len(new['password'])} bytes")
            print(f"  old connection still works: {first.execute('SELECT 1').fetchone() == (1,)}")
            with psycopg.connect(new["dsn"], connect_timeout=5) as second:
                print(f"  {GREEN}new connection with the new token: {second.execute('SELECT 1').fetchone() == (1,)}"
                      f"{RESET}")
            first.close()
            show(["kubectl", "describe", "rdsiam", "-n", "shop", "orders-db"], env)

            step("A mistake, explained: a CNAME host without signingHost or region")
            bad = {"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
                   "metadata": {"name": "orders-cname", "namespace": "shop"},
                   "spec": {"host": "orders-db.internal.example.com", "username": "app_user"}}
            (work / "bad.yaml").write_text(yaml.safe_dump(bad))
            show(["kubectl", "apply", "--validate=false", "-f", str(work / "bad.yaml")], env)
            wait_for("InvalidSpec", lambda: _reason(env) == "InvalidSpec")
            show(["kubectl", "describe", "rdsiam", "-n", "shop", "orders-cname"], env)
            show(["kubectl", "get", "rdsiam", "-n", "shop"], env)
        finally:
            operator.stop()
    print(f"\n{BOLD}Demo finished in {time.monotonic() - started:.1f} s.{RESET} "
          "Next: README.md, 'Install on a cluster'.")


def _reason(env: dict[str, str]) -> str | None:
    obj = kubectl_json(env, "-n", "shop", "get", "rdsiam", "orders-cname")
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("reason"))
    return None


if __name__ == "__main__":
    raise SystemExit(main())
