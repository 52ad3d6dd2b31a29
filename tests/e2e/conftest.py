"""The e2e tier: a real node, the operator as a pod from its own image and chart, apps in pods.

Two ways to run it:

- ``make e2e`` (``scripts/e2e.sh``): builds a one-node cluster here (``tests/e2e/_node.py``) inside a
  network namespace of its own and sets ``RDSIAM_E2E_NODE_IP`` (and ``RDSIAM_E2E_SECOND_IP``). The local
  STS (moto) and the IAM-checking PostgreSQL front doors listen on those addresses, which pods reach;
  CoreDNS answers the examples' RDS endpoint names with them, and each front door's certificate names its
  endpoint (verify-full from the pods).
  The operator is installed with ``helm install charts/rdsiam`` from the image built from the
  repository's Dockerfile, with IRSA set up as EKS's webhook does (a projected token with audience
  ``sts.amazonaws.com``, ``AWS_ROLE_ARN``, ``AWS_WEB_IDENTITY_TOKEN_FILE``).
- ``RDSIAM_E2E_KUBECONFIG=PATH``: the operator-core scenarios against any cluster, with the operator run
  on this machine (``rdsiam run``); a configured cluster that is missing or unreachable fails.

Without either, every test here is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from rdsiam.testing._fixtures_operator import cluster_tokens_and_texts, find_leaks
from rdsiam.testing.faults import FaultProxy
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.mysql import MariaDBServer
from rdsiam.testing.postgres import PostgresError, PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.realapi import helm_path, kubectl_path
from rdsiam.testing.sts import StsServer

from ._node import is_ready

ROOT = Path(__file__).resolve().parents[2]
NODE_IP = os.environ.get("RDSIAM_E2E_NODE_IP", "")
EXTERNAL = os.environ.get("RDSIAM_E2E_KUBECONFIG", "")
SECOND_IP = os.environ.get("RDSIAM_E2E_SECOND_IP", "")
# The examples' endpoints: CoreDNS resolves them to front doors on the node, as a VPC resolves RDS's;
# the signing-host example's CNAME leads to the orders endpoint's front door.
RDS_ENDPOINT = "orders.cluster-abc123def456.us-east-1.rds.amazonaws.com"
REPORTS_ENDPOINT = "reports.cluster-abc123def456.us-east-1.rds.amazonaws.com"
CNAME = "orders-db.internal.example.com"
CATALOG_ENDPOINT = "catalog.cluster-abc123def456.eu-west-1.rds.amazonaws.com"  # examples/mysql
IMAGE_PREFIX = "localhost/rdsiam-e2e"
OPERATOR_IMAGE = f"{IMAGE_PREFIX}/rdsiam"
APP_IMAGE = f"{IMAGE_PREFIX}/app:dev"
PROXY_IMAGE = f"{IMAGE_PREFIX}/rdsiam-proxy:dev"


def lang_image(lang: str) -> str:
    """The image scripts/build-node-images.sh builds from examples/apps/LANG (go, node, java)."""
    return f"{IMAGE_PREFIX}/orders-{lang}:dev"

RELEASE, RELEASE_NS = "rdsiam", "rdsiam-system"
NS = "shop"  # the examples' namespace
OPERATOR_ROLE = "rdsiam-operator"

on_node = pytest.mark.skipif(not NODE_IP, reason="needs the real node: run `make e2e` (scripts/e2e.sh)")


# ---- AWS and the database, reachable from pods ------------------------------------------------

@pytest.fixture(scope="session")
def sts() -> Iterator[StsServer]:
    with StsServer(region="us-east-1", host=NODE_IP or "127.0.0.1") as server:
        yield server


@pytest.fixture(scope="session")
def sts_fault_proxy(sts: StsServer) -> Iterator[FaultProxy]:
    """In front of STS, where the operator pod sends its calls, so a test can deny a role (``sts_faults``)."""
    with FaultProxy(sts.url, identify=sts.arn_of, host=NODE_IP or "127.0.0.1") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def rds_reports(postgres: PostgresServer, sts: StsServer) -> Iterator[IamPostgres]:
    """examples/assume-role's instance: another endpoint (another IP), the same PostgreSQL behind it."""
    if not SECOND_IP:
        pytest.skip("needs the real node's second address: run `make e2e`")
    server = IamPostgres(postgres, sts.lookup, region=sts.region, endpoint=REPORTS_ENDPOINT, port=5432)
    server.hostaddr = SECOND_IP
    with server:
        yield server


@pytest.fixture(scope="session")
def rds(postgres: PostgresServer, sts: StsServer) -> Iterator[IamPostgres]:
    if NODE_IP:
        server = IamPostgres(postgres, sts.lookup, region=sts.region, endpoint=RDS_ENDPOINT, port=5432)
        server.hostaddr = NODE_IP  # where it listens; pods reach it by RDS_ENDPOINT through CoreDNS
    else:
        server = IamPostgres(postgres, sts.lookup, region=sts.region)
    with server:
        yield server


@pytest.fixture(scope="session")
def rds_mysql(mariadb: MariaDBServer, sts: StsServer) -> Iterator[IamMySQL]:
    """examples/mysql's instance: the IAM-checking MySQL front door on the node, before a real MariaDB."""
    if not NODE_IP:
        pytest.skip("needs the real node: run `make e2e`")
    server = IamMySQL(mariadb, sts.lookup, region="eu-west-1", endpoint=CATALOG_ENDPOINT, port=3306)
    server.hostaddr = NODE_IP
    with server:
        yield server


# ---- the cluster ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def node() -> Iterator[Any]:
    if not NODE_IP:
        pytest.skip("no real node here: `make e2e` (scripts/e2e.sh) builds and starts one")
    from tests.e2e._node import RealNode

    ok, reason = RealNode.node_available()
    if not ok:
        pytest.fail(f"the real node cannot start: {reason}", pytrace=False)
    hosts = {RDS_ENDPOINT: NODE_IP, CNAME: NODE_IP, REPORTS_ENDPOINT: SECOND_IP or NODE_IP, CATALOG_ENDPOINT: NODE_IP}
    with RealNode(NODE_IP, hosts=hosts) as real:
        yield real


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``last`` (the release's end: failover, upgrade, uninstall) run after all others."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


class _Cluster:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Any:
    if NODE_IP:
        return request.getfixturevalue("node")
    if not EXTERNAL:
        pytest.skip("no cluster: `make e2e` builds a real node here; or set RDSIAM_E2E_KUBECONFIG")
    # Asked for a cluster: one that is missing or unreachable is a failure, not a skip.
    if not Path(EXTERNAL).is_file():
        pytest.fail(f"RDSIAM_E2E_KUBECONFIG={EXTERNAL} does not exist", pytrace=False)
    kubectl = Kubectl(EXTERNAL)
    try:
        kubectl.run("version", "--request-timeout=5s")
    except Exception as exc:
        pytest.fail(f"the cluster in RDSIAM_E2E_KUBECONFIG is not reachable: {exc}", pytrace=False)
    kubectl.apply_crds(str(ROOT / "crds"))
    return _Cluster(EXTERNAL)


@pytest.fixture(scope="session")
def kubectl(cluster: Any) -> Kubectl:
    binary = kubectl_path()
    return Kubectl(cluster.kubeconfig, str(binary) if binary else None)


# ---- the operator as users deploy it ------------------------------------------------------------

@dataclass
class Release:
    """The operator installed with ``helm install charts/rdsiam``."""

    name: str
    namespace: str
    kubectl: Kubectl
    helm: list[str]
    chart: Path
    env: dict[str, str] = field(default_factory=dict)

    archived: list[str] = field(default_factory=list)  # logs of pods deleted since

    def pods(self) -> list[dict[str, Any]]:
        return self.kubectl.list("pods", self.namespace, selector=f"app.kubernetes.io/instance={self.name}")

    def logs(self) -> str:
        """Every operator log of the session: the pods' now (and their previous containers') and the
        logs of pods deleted since (``archive_logs``)."""
        out = list(self.archived)
        for pod in self.pods():
            name = pod["metadata"]["name"]
            out.append(self.kubectl.run("logs", "-n", self.namespace, name, "--all-containers", check=False))
            out.append(self.kubectl.run("logs", "-n", self.namespace, name, "--previous", check=False))
        return "\n".join(out)

    def archive_logs(self) -> None:
        """Keep the pods' logs before they are deleted (for the leak checks at the end)."""
        self.archived.append(self.logs())
        del self.archived[:-1]

    def run_helm(self, *args: str) -> str:
        done = subprocess.run([*self.helm, *args], capture_output=True, text=True, env=self.env, timeout=300,
                              check=False)
        if done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args[:2])} failed: {done.stderr.strip()[-3000:]}")
        return done.stdout

    def wait_ready(self, replicas: int = 1, timeout: float = 180) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            pods = [p for p in self.pods() if not p["metadata"].get("deletionTimestamp")]
            ok = [p for p in pods if is_ready(p)]
            return ok if len(ok) >= replicas else None

        return self.kubectl.wait("the operator pod Ready", ready, timeout=timeout, interval=1)


def operator_values(sts: StsServer, sts_url: str, role_arn: str) -> dict[str, Any]:
    """The README's rdsiam-values.yaml (image substituted), plus what EKS's pod identity webhook injects
    for IRSA (no webhook runs here) and the local STS endpoint."""
    token_dir = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
    return {
        # The README's values:
        "image": {"repository": OPERATOR_IMAGE, "tag": "dev", "pullPolicy": "Never"},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": role_arn}},
        "extraVolumes": [
            {"name": "rds-ca", "configMap": {"name": "rds-ca-bundle"}},
            # The webhook's projected web identity token:
            {
                "name": "aws-iam-token",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 86400,
                                                 "path": "token"}}
                    ]
                },
            },
        ],
        "extraVolumeMounts": [
            {"name": "rds-ca", "mountPath": "/etc/rds", "readOnly": True},
            {"name": "aws-iam-token", "mountPath": token_dir, "readOnly": True},
        ],
        "extraArgs": ["--verify-ca-file=/etc/rds/global-bundle.pem"],
        # The webhook's environment, and the local STS:
        "extraEnv": [
            {"name": "AWS_ROLE_ARN", "value": role_arn},
            {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": f"{token_dir}/token"},
            {"name": "AWS_REGION", "value": sts.region},
            {"name": "AWS_DEFAULT_REGION", "value": sts.region},
            {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
            {"name": "AWS_ENDPOINT_URL_STS", "value": sts_url},
        ],
        "logLevel": "debug",  # the leak checks search the whole log
    }


def ca_bundle(*doors: IamPostgres | IamMySQL) -> Path:
    """The front doors' CAs as the README's global-bundle.pem (AWS's holds every region's CA too)."""
    bundle = Path(doors[0].ca_file).parent / "global-bundle.pem"
    bundle.write_bytes(b"".join(Path(door.ca_file).read_bytes() for door in doors))
    return bundle


@pytest.fixture(scope="session")
def doors(rds: IamPostgres, rds_reports: IamPostgres) -> list[IamPostgres]:
    """Every RDS endpoint on the node (the IAM-checking front doors)."""
    return [rds, rds_reports]


@pytest.fixture(scope="session")
def release(
    node: Any, kubectl: Kubectl, sts: StsServer, sts_fault_proxy: FaultProxy, doors: list[IamPostgres],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    helm = helm_path()
    if helm is None:
        pytest.fail("helm is not built (scripts/build-realapi.sh helm)", pytrace=False)
    role = sts.create_role(OPERATOR_ROLE)
    values = operator_values(sts, sts_fault_proxy.url, role)
    path = tmp_path_factory.mktemp("helm") / "values.json"
    path.write_text(json.dumps(values))
    env = {**os.environ, "KUBECONFIG": node.kubeconfig, "HELM_CACHE_HOME": str(path.parent / "cache"),
           "HELM_CONFIG_HOME": str(path.parent / "config"), "HELM_DATA_HOME": str(path.parent / "data")}
    rel = Release(RELEASE, RELEASE_NS, kubectl, [str(helm)], ROOT / "charts" / "rdsiam", env)
    # The README's install steps, with the image and the AWS settings above.
    kubectl.create_namespace(RELEASE_NS)
    kubectl.run("create", "configmap", "rds-ca-bundle", "-n", RELEASE_NS, f"--from-file={ca_bundle(*doors)}")
    rel.run_helm("install", RELEASE, str(rel.chart), "-n", RELEASE_NS, "-f", str(path),
                 "--wait", "--timeout", "3m")
    rel.wait_ready()
    yield rel
    # Every token the operator wrote, searched for in its whole log (DEBUG), Events and status.
    tokens, texts = cluster_tokens_and_texts(kubectl)
    leaks = find_leaks({**texts, "operator log": rel.logs()}, tokens)
    assert not leaks, f"secrets leaked into: {leaks}"


class InClusterOperator:
    """The scenarios' ``operator`` on the node: the chart's pod; ``restart()`` deletes it as a user would."""

    def __init__(self, release: Release) -> None:
        self.release = release

    def restart(self) -> None:
        kubectl = self.release.kubectl
        old = {p["metadata"]["name"] for p in self.release.pods()}
        self.release.archive_logs()
        kubectl.run("delete", "pod", "-n", self.release.namespace, "--wait=true",
                    "-l", f"app.kubernetes.io/instance={self.release.name}")

        def replaced() -> bool:
            pods = [p for p in self.release.pods() if p["metadata"]["name"] not in old]
            return any(is_ready(p) for p in pods)

        kubectl.wait("a new operator pod Ready", replaced, timeout=120, interval=0.5)


@pytest.fixture
def operator(request: pytest.FixtureRequest) -> Any:
    """On the node: the operator pod the chart runs. Elsewhere: ``rdsiam run`` on this machine."""
    if NODE_IP:
        return InClusterOperator(request.getfixturevalue("release"))
    return request.getfixturevalue("operator_factory")()


def setup_database(postgres: PostgresServer, example: str, database: str) -> None:
    """An example's setup.sql as the master user (on RDS the database exists; here it is created)."""
    if not postgres.execute(f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
        postgres.execute(f'CREATE DATABASE "{database}"')
    sql = re.sub(r"--[^\n]*", "", (ROOT / "examples" / example / "setup.sql").read_text())
    for statement in filter(None, (s.strip() for s in sql.split(";"))):
        try:
            postgres.execute(statement)
        except PostgresError as exc:
            if exc.sqlstate != "42710":  # the user exists already
                raise


@pytest.fixture(scope="session")
def shop(release: Release, kubectl: Kubectl, doors: list[IamPostgres], postgres: PostgresServer,
         rds_mysql: IamMySQL) -> str:
    """The README's step 4: the app's namespace and its copy of the CA bundle; setup.sql on the database.
    Session-wide: the apps started in it keep logging in while later tests restart the operator."""
    kubectl.create_namespace(NS)
    setup_database(postgres, "basic", "orders")
    setup_database(postgres, "assume-role", "reports")
    kubectl.run("create", "configmap", "rds-ca-bundle", "-n", NS, f"--from-file={ca_bundle(*doors, rds_mysql)}")
    return NS


def app_logins(kubectl: Kubectl, doors: list[IamPostgres], since: datetime | None = None) -> dict[str, dict[str, Any]]:
    """What the front doors saw of each app in ``shop`` (by the app label of the pod with that IP): logins
    accepted, failures (reason and detail), token generations (X-Amz-Date) and signing roles."""
    ips = {p["status"]["podIP"]: p["metadata"]["labels"]["app"] for p in kubectl.list("pods", NS)
           if (p.get("status") or {}).get("podIP") and (p["metadata"].get("labels") or {}).get("app")}
    seen: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"ok": 0, "failed": [], "generations": set(), "principals": set()})
    for attempt in [a for door in doors for a in list(door.login_log)]:
        app = ips.get(attempt.client)
        if app is None or (since is not None and attempt.at is not None and attempt.at < since):
            continue
        if attempt.accepted:
            seen[app]["ok"] += 1
            seen[app]["generations"].add(attempt.signed_at)
            seen[app]["principals"].add((attempt.principal_arn or "").split("/")[1])
        else:
            seen[app]["failed"].append(f"{attempt.reason}: {attempt.detail}")
    return seen
