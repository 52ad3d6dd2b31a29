"""The user's path on the real node: the operator as a pod (helm), the examples applied as written, apps
in pods logging in once a second through the kubelet's Secret mount while the token rotates.

Substituted in the examples, and nothing else: the app image (built from examples/apps/Dockerfile, the
way the README tells app teams; `imagePullPolicy: Never`), `refreshInterval: 1m`, the loops' interval
(once a second instead of once a minute; apps/ runs each script with `every.py 1 SCRIPT`), and a name
per Deployment where examples share one. Rotations are also asked for every 20 s, as the README tells
users to force one, so that three fit in about a minute and a half. The RDS
endpoint name is the examples' own: CoreDNS resolves it to the IAM-checking PostgreSQL on the node,
whose certificate names it, so the apps verify it (verify-full) against the `rds-ca-bundle` ConfigMap.
What the front door saw (each login's client address, token generation and verdict) is the record.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from rdsiam.testing import sigv4
from rdsiam.testing._fixtures_operator import find_leaks
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.sts import StsServer

from .conftest import APP_IMAGE, OPERATOR_ROLE, PROXY_IMAGE, ROOT, Release, app_logins, lang_image, on_node

pytestmark = on_node

EXAMPLES = ROOT / "examples"
PLACEHOLDER_IMAGE = "registry.example.com/orders-app:1.0"
LANGUAGES = ("go", "node", "java")  # examples/apps/LANG: an app in another language, its own image
IMAGES = {PLACEHOLDER_IMAGE: APP_IMAGE, "registry.example.com/rdsiam-proxy:0.1.0": PROXY_IMAGE,
          **{f"registry.example.com/orders-app-{lang}:1.0": lang_image(lang) for lang in LANGUAGES}}
ROTATIONS = 3
ROTATE_EVERY = 20.0  # seconds between the rotations the test asks for
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
    text = yaml.safe_dump(doc)
    for placeholder, image in IMAGES.items():
        text = text.replace(placeholder, image)
    out: dict[str, Any] = yaml.safe_load(text)
    pod = out["spec"]["template"]["spec"] if "template" in out.get("spec", {}) else out.get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        if container.get("image") in IMAGES.values():
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
    # The other examples' Secrets, each mounted by an app like apps/ (psycopg): service-account/ (the app
    # runs as the ServiceAccount it signs as), assume-role/ (another endpoint), signing-host/ (a CNAME).
    # Through a CNAME the server's certificate names the RDS endpoint, not the CNAME: verify-ca, as the
    # example's DSN says (the apps/ pod sets PGSSLMODE=verify-full for libpq).
    for name, secret, account, sslmode in (("app-service-account", "orders-db-sa", "orders-app", "verify-full"),
                                           ("app-assume-role", "reports-db-credentials", None, "verify-full"),
                                           ("app-signing-host", "orders-db-cname", None, "verify-ca")):
        doc = renamed(with_image(copy.deepcopy(template)), name)
        doc["spec"]["replicas"] = 1
        pod = doc["spec"]["template"]["spec"]
        if account:
            pod["serviceAccountName"] = account
        container = pod["containers"][0]
        container["command"] = ["python", "/app/every.py", "1", "/app/psycopg_app.py"]
        next(e for e in container["env"] if e["name"] == "PGSSLMODE")["value"] = sslmode
        next(v for v in pod["volumes"] if v["name"] == "orders-db")["secret"]["secretName"] = secret
        docs.append(doc)
    # apps/go, apps/node, apps/java: pgx, node-postgres and HikariCP pools, each reading the token of the
    # mount's current generation for every new connection, as written (their loops open one a second).
    for lang in LANGUAGES:
        docs += [with_image(doc) for doc in documents(EXAMPLES / "apps" / lang / "deployment.yaml")]
    # examples/proxy: `rdsiam proxy` as a native sidecar of apps with no rdsiam code and no token: the Java app's
    # plain HikariCP pool, and psql + pg_dump (loop once a second; a session held 30 s outlives rotations).
    for doc in documents(EXAMPLES / "proxy" / "deployment.yaml"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            container["args"] = [every_second(arg) for arg in container.get("args", [])]
        docs.append(with_image(doc))
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
    shop: str, release: Release, kubectl: Kubectl, doors: list[IamPostgres], sts: StsServer
) -> None:
    # The roles the examples name, with their own trust policies (the local STS does not evaluate them).
    for example, role in (("service-account", "shop-orders-app"), ("assume-role", "shop-reports-db-connect")):
        sts.create_role(role, json.loads((EXAMPLES / example / "trust-policy.json").read_text()))
    creds = []
    for example in ("basic", "service-account", "assume-role", "signing-host"):
        for doc in documents(EXAMPLES / example / "rdsiamcredential.yaml"):
            if doc["kind"] == "RdsIamCredential":
                doc["spec"]["refreshInterval"] = "1m"
                doc["spec"]["verify"] = True  # the README's step 4: the operator pod logs in after each issue
                creds.append((doc["metadata"]["name"], (doc["spec"].get("target") or {}).get("name")
                              or doc["metadata"]["name"]))
            kubectl.apply(doc)
    # The README's DATABASE_URL template with mergePolicy Replace, left to its 1m schedule (never asked to
    # rotate below): its Secret holds that key alone and is still refreshed on time.
    (url_cred,) = [d for d in documents(EXAMPLES / "basic" / "rdsiamcredential.yaml")
                   if d["kind"] == "RdsIamCredential"]
    url_cred["metadata"]["name"] = "orders-db-url"
    url_cred["spec"].update(refreshInterval="1m", target={"template": {"mergePolicy": "Replace", "data": {
        "DATABASE_URL": "postgresql://{{ username | urlquote }}:{{ password | urlquote }}@{{ host }}:{{ port }}/"
                        "{{ dbname | urlquote }}?sslmode=verify-full&sslrootcert=/etc/rds/global-bundle.pem"}}})
    kubectl.apply(url_cred)
    url_applied = time.monotonic()
    for name, _ in creds:
        ready = kubectl.wait("Ready", lambda n=name: (c := kubectl.condition(n, shop)) and c["status"] == "True" and c,
                             timeout=60, interval=0.5)
        assert ready["reason"] == "TokenIssued", (name, ready["reason"])
    first = {secret: kubectl.secret_data(secret, shop) for _, secret in creds}
    url_first = kubectl.wait("the DATABASE_URL Secret", lambda: kubectl.secret_data("orders-db-url", shop), timeout=30)
    assert set(url_first) == {"DATABASE_URL"}, sorted(url_first)
    missing = [secret for secret, data in first.items() if data is None]  # names only: data holds tokens
    assert not missing, missing
    for name, _ in creds:  # the operator's pod resolved the endpoint and verified the server with its CA copy
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

    kubectl.wait("every app pod Running", all_running, timeout=180, interval=1)

    # Rotations as a user asks for them (the README's `kubectl annotate ... refresh-requested-at`), every
    # 20 s rather than waiting for the 1m schedule; each reaches the pods within the kubelet's
    # syncFrequency (10s). The scheduled refresh still runs in between.
    began = time.monotonic()
    deadline = began + ROTATIONS * 60 + 150
    requested = 0.0
    while True:
        seen = app_logins(kubectl, doors)
        rotated = all(len(seen[name]["generations"]) >= ROTATIONS + 1 for name in names)
        if rotated or time.monotonic() > deadline:
            break
        if time.monotonic() - requested >= ROTATE_EVERY:
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for name, _ in creds:
                kubectl.run("annotate", "-n", shop, "rdsiamcredential", name,
                            f"rdsiam.io/refresh-requested-at={now}", "--overwrite")
            requested = time.monotonic()
        time.sleep(2)
    window = time.monotonic() - began
    summary = {name: (seen[name]["ok"], len(seen[name]["failed"]), len(seen[name]["generations"]))
               for name in sorted(names)}
    print(f"in {window:.0f} s: logins ok, failed, token generations per app: {summary}")
    failures = {name: seen[name]["failed"][:2] for name in names if seen[name]["failed"]}
    assert rotated, f"not every app saw {ROTATIONS} rotations: (ok, failed, generations) {summary}; {failures}"
    for name in names:
        assert seen[name]["failed"] == [], (name, seen[name]["failed"][:3])
        assert seen[name]["ok"] >= window / 3, (name, seen[name]["ok"], window)  # about one a second
        # Signed by the operator's IRSA role, or by the role the example names.
        role = {"app-service-account": "shop-orders-app", "app-assume-role": "shop-reports-db-connect"}
        assert seen[name]["principals"] == {role.get(name, OPERATOR_ROLE)}, (name, seen[name]["principals"])

    # The README's step 5: check the mount from inside the app's pod, logging in once.
    check = kubectl.run("exec", "-n", shop, "deploy/orders-app", "--", "rdsiam", "check",
                        "/var/run/secrets/rdsiam/orders-db", "--connect")
    connect = [line for line in check.splitlines() if line.startswith("connect:")]
    assert connect and connect[0].split()[1] == "OK:" and check.rstrip().endswith("OK"), check

    # The Replace Secret: refreshed by its schedule (1m, less up to 10% jitter) and still only its key, which
    # psql in the app's pod logs in with.
    url_now = kubectl.wait("the scheduled refresh of orders-db-url", lambda: (
        d := kubectl.secret_data("orders-db-url", shop)) and d["DATABASE_URL"] != url_first["DATABASE_URL"] and d,
        timeout=max(1.0, url_applied + 75 - time.monotonic()), interval=1)
    assert set(url_now) == {"DATABASE_URL"}, sorted(url_now)
    user = kubectl.run("exec", "-n", shop, "deploy/orders-app", "--", "psql", url_now["DATABASE_URL"], "-Atc",
                       "SELECT current_user")
    assert user.strip() == "app_user", user

    logs = {name: kubectl.run("logs", "-n", shop, f"deployment/{name}", "--all-containers", "--tail=-1")
            for name in names}
    # Through the proxy, sessions opened before a rotation went on after it.
    survived = logs["orders-report-proxy"].count("session survived as app_user")
    assert survived >= 1, logs["orders-report-proxy"][-2000:]
    failed = {name: [line for line in text.splitlines() if "login failed" in line or "FATAL" in line][:3]
              for name, text in logs.items()}
    assert not any(failed.values()), failed
    tokens = [d["password"] for d in first.values() if d]
    tokens += [urllib.parse.unquote(urllib.parse.urlsplit(d["DATABASE_URL"]).password or "")
               for d in (url_first, url_now)]
    tokens += [d["password"] for _, secret in creds if (d := kubectl.secret_data(secret, shop))]
    leaks = find_leaks({**logs, "operator": release.logs()}, tokens)
    assert not leaks, leaks


def test_mysql_example_logs_in_through_the_kubelet_mount(
    shop: str, release: Release, kubectl: Kubectl, rds_mysql: IamMySQL,
) -> None:
    """examples/mysql as written: its Secret and DSN, read in a pod through the PyMySQL integration, which
    logs in to the IAM-checking MySQL front door (TLS verified against the CA bundle); `rdsiam check
    --connect` in the pod logs in with the operator's probe. setup.sql's user is made on MariaDB with
    ``create_user`` (MariaDB has no AWSAuthenticationPlugin)."""
    rds_mysql.create_user("app_user", database="catalog")
    (cred,) = documents(EXAMPLES / "mysql" / "rdsiamcredential.yaml")
    kubectl.apply(cred)
    ready = kubectl.wait("Ready", lambda: (c := kubectl.condition("catalog-db", shop)) and c["status"] == "True"
                         and c, timeout=60, interval=0.5)
    assert ready["reason"] == "TokenIssued"
    data = kubectl.secret_data("catalog-db", shop)
    assert data is not None
    endpoint = "catalog.cluster-abc123def456.eu-west-1.rds.amazonaws.com"
    assert (data["host"], data["port"], data["username"], data["dbname"]) == (endpoint, "3306", "app_user", "catalog")
    token = sigv4.parse_token(data["password"])
    assert (token.host, token.port, token.params["DBUser"]) == (endpoint, 3306, "app_user")
    assert "/eu-west-1/rds-db/" in token.params["X-Amz-Credential"]
    parsed = urllib.parse.urlsplit(data["dsn"])
    assert (parsed.scheme, parsed.hostname, parsed.port) == ("mysql", endpoint, 3306)
    assert urllib.parse.unquote(parsed.password or "") == data["password"], "the DSN's token differs"

    mount = "/var/run/secrets/rdsiam/catalog-db"
    kubectl.apply(with_image({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mysql-client", "namespace": shop},
        "spec": {
            "containers": [{"name": "app", "image": PLACEHOLDER_IMAGE, "command": ["sleep", "3600"],
                            "volumeMounts": [{"name": "db", "mountPath": mount, "readOnly": True},
                                             {"name": "rds-ca", "mountPath": "/etc/rds", "readOnly": True}]}],
            "volumes": [{"name": "db", "secret": {"secretName": "catalog-db", "defaultMode": 0o400}},
                        {"name": "rds-ca", "configMap": {"name": "rds-ca-bundle"}}],
        },
    }))  # fmt: skip
    kubectl.run("wait", "-n", shop, "pod/mysql-client", "--for=condition=Ready", "--timeout=120s")

    def run(*command: str) -> str:
        return kubectl.run("exec", "-n", shop, "mysql-client", "--", *command)

    check = run("rdsiam", "check", mount)
    assert check.rstrip().endswith("OK") and "3306" in check, check
    kwargs = run("python", "-c", "import rdsiam; from rdsiam.integrations import pymysql as p; "
                 f"k = p.connect_kwargs(rdsiam.MountedCredential('{mount}').snapshot()); "
                 "print(k['host'], k['port'], k['user'], k['database'], k['ssl'] is not None)")
    assert kwargs.split() == [endpoint, "3306", "app_user", "catalog", "True"]

    before = len(rds_mysql.login_log)
    user = run("python", "-c", "from rdsiam.integrations import pymysql as p; "
               f"c = p.connect('{mount}', ssl_ca='/etc/rds/global-bundle.pem', ssl_verify_identity=True); "
               "cur = c.cursor(); cur.execute('SELECT CURRENT_USER()'); print(cur.fetchone()[0])")
    assert user.strip().startswith("app_user@"), user
    probe = run("rdsiam", "check", mount, "--connect", "--sslmode", "VERIFY_IDENTITY",
                "--sslrootcert", "/etc/rds/global-bundle.pem")
    assert probe.rstrip().endswith("OK"), probe
    pod_ip = kubectl.get("pod", "mysql-client", shop)["status"]["podIP"]
    logins = [a for a in list(rds_mysql.login_log)[before:] if a.client == pod_ip]
    assert [(a.accepted, a.tls, a.user) for a in logins] == [(True, True, "app_user")] * 2, logins
