"""The user's path on the real node: the operator as a pod (helm), the examples applied as written, apps
in pods logging in once a second through the kubelet's Secret mount while the token rotates.

Substituted in the examples, and nothing else: the app image (built from examples/apps/Dockerfile, the
way the README tells app teams; `imagePullPolicy: Never`), `refreshInterval: 1m` (so that three
rotations fit in a few minutes), the loops' interval (once a second instead of once a minute; apps/
runs each script with `every.py 1 SCRIPT`), and a name per Deployment where examples share one. The RDS
endpoint name is the examples' own: CoreDNS resolves it to the IAM-checking PostgreSQL on the node,
whose certificate names it, so the apps verify it (verify-full) against the `rds-ca-bundle` ConfigMap.
What the front door saw (each login's client address, token generation and verdict) is the record.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rdsiam.testing._fixtures_operator import find_leaks
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.sts import StsServer

from .conftest import APP_IMAGE, OPERATOR_ROLE, ROOT, Release, app_logins, on_node, wait_until

pytestmark = on_node

EXAMPLES = ROOT / "examples"
PLACEHOLDER_IMAGE = "registry.example.com/orders-app:1.0"
ROTATIONS = 3
APPS = {  # pod name -> the example script it runs once a second
    "plain": "plain_app.py",
    "psycopg": "psycopg_app.py",
    "psycopg2": "psycopg2_app.py",
    "sqlalchemy": "sqlalchemy_app.py",
    "sqlalchemy-async": "sqlalchemy_async_app.py",
    "asyncpg": "asyncpg_app.py",
    "django": "django_app.py",
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def with_image(doc: dict[str, Any]) -> dict[str, Any]:
    text = yaml.safe_dump(doc).replace(PLACEHOLDER_IMAGE, APP_IMAGE)
    out: dict[str, Any] = yaml.safe_load(text)
    pod = out.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        if container.get("image") == APP_IMAGE:
            container["imagePullPolicy"] = "Never"  # loaded into containerd, no registry here
    return out


def renamed(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A Deployment under another name (several examples share one), its pods labelled app=NAME."""
    doc["metadata"]["name"] = name
    labels = {"app": name}
    doc["spec"]["selector"] = {"matchLabels": labels}
    doc["spec"]["template"]["metadata"]["labels"] = labels
    return doc


def every_second(text: str) -> str:
    """The examples' loops log in once a minute; here once a second."""
    return text.replace("time.sleep(60)", "time.sleep(1)").replace("sleep 60", "sleep 1")


def example_apps() -> list[dict[str, Any]]:
    """Every app manifest of examples/ as a user applies it (image and loop interval substituted)."""
    docs = []
    # basic/: a Deployment with its app inline in a ConfigMap.
    for doc in documents(EXAMPLES / "basic" / "deployment.yaml"):
        if doc["kind"] == "ConfigMap":
            doc["data"] = {k: every_second(v) for k, v in doc["data"].items()}
        docs.append(with_image(doc))
    # apps/: the same Deployment once per script, each run once a second by every.py.
    (template,) = documents(EXAMPLES / "apps" / "deployment.yaml")
    for name, script in APPS.items():
        doc = renamed(with_image(copy.deepcopy(template)), f"app-{name}")
        doc["spec"]["replicas"] = 1
        container = doc["spec"]["template"]["spec"]["containers"][0]
        container["command"] = ["python", "/app/every.py", "1", f"/app/{script}"]
        docs.append(doc)
    # service-account/: signed as the app's own ServiceAccount; the app runs as it too.
    doc = renamed(with_image(copy.deepcopy(template)), "app-service-account")
    doc["spec"]["replicas"] = 1
    pod = doc["spec"]["template"]["spec"]
    pod["serviceAccountName"] = "orders-app"
    pod["containers"][0]["command"] = ["python", "/app/every.py", "1", "/app/psycopg_app.py"]
    next(v for v in pod["volumes"] if v["name"] == "orders-db")["secret"]["secretName"] = "orders-db-sa"
    docs.append(doc)
    # pgpass/: psql as root reading the mounted key, and non-root through the copying sidecar.
    for path, name in (("deployment.yaml", "orders-report"), ("deployment-nonroot.yaml", "orders-report-nonroot")):
        (doc,) = documents(EXAMPLES / "pgpass" / path)
        doc = renamed(with_image(doc), name)
        for container in doc["spec"]["template"]["spec"]["containers"]:
            container["args"] = [every_second(arg) for arg in container.get("args", [])]
        docs.append(doc)
    return docs


@pytest.mark.timeout(900)
def test_examples_log_in_through_rotations(
    shop: str, release: Release, kubectl: Kubectl, rds: IamPostgres, sts: StsServer
) -> None:
    sa_role = sts.create_role("shop-orders-app", json.loads((EXAMPLES / "service-account" / "trust-policy.json")
                                                            .read_text()))
    creds = []
    for example in ("basic", "service-account"):
        for doc in documents(EXAMPLES / example / "rdsiamcredential.yaml"):
            if doc["kind"] == "RdsIamCredential":
                doc["spec"]["refreshInterval"] = "1m"
                doc["spec"]["verify"] = True  # the README's step 4: the operator pod logs in after each issue
                creds.append(doc["metadata"]["name"])
            kubectl.apply(doc)
    for name in creds:
        ready = kubectl.wait("Ready", lambda n=name: (c := kubectl.condition(n, shop)) and c["status"] == "True" and c,
                             timeout=60, interval=0.5)
        assert ready["reason"] == "TokenIssued", (name, ready["reason"])
    first = [kubectl.secret_data(name, shop) for name in creds]
    assert all(first)
    for name in creds:  # the operator's pod resolved the endpoint and verified the server with its CA copy
        connected = kubectl.wait("Connected", lambda n=name: (c := kubectl.condition(n, shop, "Connected")) and
                                 c["status"] != "Unknown" and c, timeout=60, interval=0.5)
        assert (connected["status"], connected["reason"]) == ("True", "Connected"), connected

    apps = example_apps()
    kubectl.apply(apps)
    names = {d["metadata"]["name"] for d in apps if d["kind"] == "Deployment"}

    def all_running() -> bool:
        running = {p["metadata"]["labels"].get("app") for p in kubectl.list("pods", shop)
                   if (p.get("status") or {}).get("phase") == "Running"}
        return names <= running

    wait_until("every app pod Running", all_running, timeout=180)

    def rotated() -> bool:
        seen = app_logins(kubectl, rds)
        return all(len(seen[name]["generations"]) >= ROTATIONS + 1 for name in names)

    # Three rotations at 1m, each seen ~10 s later through the mount (kubelet syncFrequency 10s).
    wait_until(f"{ROTATIONS} rotations seen by every app", rotated, timeout=ROTATIONS * 60 + 150, interval=5)
    seen = app_logins(kubectl, rds)
    summary = {name: (seen[name]["ok"], len(seen[name]["failed"]), len(seen[name]["generations"]))
               for name in sorted(names)}
    print(f"logins ok, failed, token generations per app: {summary}")
    for name in names:
        assert seen[name]["failed"] == [], (name, seen[name]["failed"][:3])
        assert seen[name]["ok"] >= 60, (name, seen[name]["ok"])  # about one a second
        # Signed by the operator's IRSA role, or (service-account/) by the app ServiceAccount's role.
        role = sa_role.rsplit("/", 1)[1] if name == "app-service-account" else OPERATOR_ROLE
        assert seen[name]["principals"] == {role}, (name, seen[name]["principals"])

    # The README's step 5: check the mount from inside the app's pod, logging in once.
    check = kubectl.run("exec", "-n", shop, "deploy/orders-app", "--", "rdsiam", "check",
                        "/var/run/secrets/rdsiam/orders-db", "--connect")
    connect = [line for line in check.splitlines() if line.startswith("connect:")]
    assert connect and connect[0].split()[1] == "OK:" and check.rstrip().endswith("OK"), check

    logs = {name: kubectl.run("logs", "-n", shop, f"deployment/{name}", "--tail=-1") for name in names}
    failed = {name: [line for line in text.splitlines() if "login failed" in line or "FATAL" in line][:3]
              for name, text in logs.items()}
    assert not any(failed.values()), failed
    tokens = [d["password"] for d in first if d] + [d["password"] for n in creds if (d := kubectl.secret_data(n, shop))]
    leaks = find_leaks({**logs, "operator": release.logs()}, tokens)
    assert not leaks, leaks
