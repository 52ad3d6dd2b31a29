"""Every example in examples/ (apps/ and pgpass/ have their own tests) runs on the local stack.

Each example's manifests are applied as written, except where they name AWS: the RDS endpoint becomes
the local IAM-checking PostgreSQL (``rds.endpoint``/``port``/``ca_file``, dialled at 127.0.0.1), a
CNAME becomes ``localhost``, and the namespace a fresh one. The roles they name are created in the
local STS with the example's own trust policy (moto's account is the examples' 123456789012, so the
ARNs are the examples' own), and the example's setup.sql runs on the local PostgreSQL. Then the
test checks what a user sees: the Secret, the Ready condition and identity, and a login with the
Secret's DSN. The IAM policies (rds-db:connect) are not evaluated locally; they are checked to be
well-formed and to name the example's database user.

The MySQL example gets its Secret checked (keys, DSN, token signed for the endpoint and region,
read back through the PyMySQL integration), but no login: the IAM-checking server here is
PostgreSQL only, and MariaDB has no AWSAuthenticationPlugin for its setup.sql.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import psycopg
import pytest
import yaml

from rdsiam.testing._fixtures_operator import cluster_tokens_and_texts, find_leaks
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.kubelet import AtomicWriter
from rdsiam.testing.operator import OperatorProcess
from rdsiam.testing.postgres import PostgresError, PostgresServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TESTED_HERE = ("basic", "assume-role", "service-account", "signing-host", "mysql", "app-tests")
SECRET_KEYS = {"username", "password", "host", "port", "dbname", "dsn", "expires-at"}


def documents(example: str) -> list[dict[str, Any]]:
    return [d for p in sorted((EXAMPLES / example).glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def local_host(host: str, rds: Any) -> str:
    """An RDS endpoint becomes the local one; any other name (a CNAME) one that resolves here."""
    return rds.endpoint if host.endswith(".rds.amazonaws.com") else "localhost"


def localize(doc: dict[str, Any], ns: str, rds: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = ns
    spec = doc.get("spec") if doc["kind"] == "RdsIamCredential" else None
    if spec is None:
        return doc
    if spec.get("dsn", "").startswith("postgres"):
        url = urllib.parse.urlsplit(spec["dsn"])
        host = local_host(url.hostname or "", rds)
        query = dict(urllib.parse.parse_qsl(url.query))
        if "sslrootcert" in query:
            query["sslrootcert"] = rds.ca_file
        if host == rds.endpoint:
            query["hostaddr"] = rds.hostaddr
        userinfo = url.netloc.rsplit("@", 1)[0]
        spec["dsn"] = urllib.parse.urlunsplit(
            (url.scheme, f"{userinfo}@{host}:{rds.port}", url.path, urllib.parse.urlencode(query, safe="/"), "")
        )
    if "host" in spec:
        spec["host"], spec["port"] = local_host(spec["host"], rds), rds.port
    if "signingHost" in spec:
        spec["signingHost"] = rds.endpoint
    return doc


def run_setup_sql(postgres: PostgresServer, example: str, database: str) -> None:
    """The example's setup.sql as the master user (the database exists on RDS; here it is created)."""
    if not postgres.execute(f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
        postgres.execute(f'CREATE DATABASE "{database}"')
    sql = re.sub(r"--[^\n]*", "", (EXAMPLES / example / "setup.sql").read_text())
    for statement in filter(None, (s.strip() for s in sql.split(";"))):
        try:
            postgres.execute(statement)
        except PostgresError as exc:
            if exc.sqlstate != "42710":  # duplicate_object: the user exists from an earlier test
                raise


def check_iam_policy(example: str, user: str) -> None:
    policy = json.loads((EXAMPLES / example / "iam-policy.json").read_text())
    statement = policy["Statement"][0]
    assert (policy["Version"], statement["Effect"], statement["Action"]) == ("2012-10-17", "Allow", "rds-db:connect")
    assert re.fullmatch(
        rf"arn:aws:rds-db:[a-z0-9-]+:\d{{12}}:dbuser:(cluster|db)-[A-Z0-9]+/{user}", statement["Resource"]
    ), statement["Resource"]


def apply_and_wait(kubectl: Kubectl, docs: list[dict[str, Any]], ns: str) -> tuple[dict[str, Any], dict[str, str]]:
    kubectl.apply(docs)
    cred = next(d for d in docs if d["kind"] == "RdsIamCredential")
    name = cred["metadata"]["name"]
    secret_name = (cred["spec"].get("target") or {}).get("name", name)
    ready = kubectl.wait(
        "Ready", lambda: (c := kubectl.condition(name, ns)) and c["status"] == "True" and c, timeout=15
    )
    assert ready["reason"] == "TokenIssued"
    obj = kubectl.get("rdsiamcredential", name, ns)
    assert obj is not None and obj["status"]["secretName"] == secret_name
    data = kubectl.secret_data(secret_name, ns)
    assert data is not None
    missing = SECRET_KEYS - set(data)  # key names only: a failing assertion prints what it compares
    assert not missing, missing
    return obj, data


def login(dsn: str, **overrides: str) -> tuple[Any, ...]:
    with psycopg.connect(dsn, connect_timeout=5, **overrides) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row is not None
        return tuple(row)


@pytest.fixture(scope="module")
def namespaces(kube: Any) -> Iterator[list[str]]:
    """The module's namespaces, deleted with their content at its end (after the leak search), so that
    no later operator in the session finds these resources."""
    made: list[str] = []
    yield made
    for name in made:
        kube.delete_namespace(name)


@pytest.fixture
def ns(namespaces: list[str], kubectl: Kubectl) -> str:
    namespaces.append(f"t-{uuid.uuid4().hex[:8]}")
    kubectl.create_namespace(namespaces[-1])
    return namespaces[-1]


@pytest.fixture(scope="module")
def operator(
    namespaces: list[str],
    cluster: Any,
    kubectl: Kubectl,
    operator_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One operator for the module (cluster-wide, like the chart's default), searched for leaks after."""
    proc = OperatorProcess(cluster.kubeconfig, operator_env, log_dir=str(tmp_path_factory.mktemp("examples-op")))
    proc.start()
    yield proc
    texts = {"metrics": proc.metrics()}
    proc.stop()
    texts["log"] = proc.log()
    tokens, public = cluster_tokens_and_texts(kubectl)
    assert not find_leaks({**texts, **public}, tokens)


@pytest.fixture
def local(ns: str, rds: Any) -> Callable[[str], list[dict[str, Any]]]:
    return lambda example: [localize(d, ns, rds) for d in documents(example)]


def test_basic(
    kubectl: Kubectl,
    rds: Any,
    postgres: PostgresServer,
    operator: OperatorProcess,
    ns: str,
    local: Callable[[str], list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    check_iam_policy("basic", "app_user")
    run_setup_sql(postgres, "basic", "orders")
    docs = local("basic")
    obj, data = apply_and_wait(kubectl, docs, ns)
    who = login(data["dsn"])  # out of the assertion, as below: a failure prints no token
    assert who == ("app_user", "orders")
    assert obj["status"]["identity"].startswith("arn:aws:sts::123456789012:assumed-role/rdsiam-operator/")
    secret = kubectl.get("secret", "orders-db", ns)
    assert secret is not None
    assert secret["metadata"]["labels"]["app.kubernetes.io/part-of"] == "orders"
    # The example app (its ConfigMap) logs in through the mounted Secret, as the Deployment runs it.
    app = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["app.py"]
    mount = tmp_path / "orders-db"
    AtomicWriter(mount).write({k: v.encode() for k, v in data.items()})
    (tmp_path / "app.py").write_text(app)
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "app.py")],
        stdout=subprocess.PIPE,
        text=True,
        env={"RDSIAM_MOUNT": str(mount), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(5)
    assert first.startswith("('app_user', datetime.datetime("), first


def test_assume_role(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    postgres: PostgresServer,
    operator: OperatorProcess,
    ns: str,
    local: Callable[[str], list[dict[str, Any]]],
) -> None:
    check_iam_policy("assume-role", "reporter")
    docs = local("assume-role")
    cred = next(d for d in docs if d["kind"] == "RdsIamCredential")
    operator_policy = json.loads((EXAMPLES / "assume-role" / "operator-policy.json").read_text())
    assert operator_policy["Statement"][0]["Resource"] == cred["spec"]["assumeRoleArn"]
    trust = (EXAMPLES / "assume-role" / "trust-policy.json").read_text()
    assert sts.create_role("shop-reports-db-connect", trust) == cred["spec"]["assumeRoleArn"]
    run_setup_sql(postgres, "assume-role", "reports")
    obj, data = apply_and_wait(kubectl, docs, ns)
    assert obj["status"]["identity"].startswith("arn:aws:sts::123456789012:assumed-role/shop-reports-db-connect/")
    who = login(data["dsn"], hostaddr=rds.hostaddr, sslmode="verify-full", sslrootcert=rds.ca_file)
    assert who == ("reporter", "reports")


def test_service_account(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    postgres: PostgresServer,
    operator: OperatorProcess,
    ns: str,
    local: Callable[[str], list[dict[str, Any]]],
) -> None:
    check_iam_policy("service-account", "app_user")
    docs = local("service-account")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    trust = json.loads((EXAMPLES / "service-account" / "trust-policy.json").read_text())
    subject = next(v for k, v in trust["Statement"][0]["Condition"]["StringEquals"].items() if k.endswith(":sub"))
    assert subject == "system:serviceaccount:shop:orders-app"  # the example's namespace and ServiceAccount
    role = sts.create_role("shop-orders-app", trust)
    assert role == sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    run_setup_sql(postgres, "service-account", "orders")
    obj, data = apply_and_wait(kubectl, docs, ns)
    # signed as the ServiceAccount's role, reached with a TokenRequest for that ServiceAccount
    assert obj["status"]["identity"].startswith("arn:aws:sts::123456789012:assumed-role/shop-orders-app/")
    assert f"rdsiam-{ns}-orders-app" in obj["status"]["identity"]
    who = login(data["dsn"], hostaddr=rds.hostaddr, sslmode="verify-full", sslrootcert=rds.ca_file)
    assert who == ("app_user", "orders")


def test_signing_host(
    kubectl: Kubectl,
    rds: Any,
    postgres: PostgresServer,
    operator: OperatorProcess,
    ns: str,
    local: Callable[[str], list[dict[str, Any]]],
) -> None:
    check_iam_policy("signing-host", "app_user")
    run_setup_sql(postgres, "signing-host", "orders")
    _, data = apply_and_wait(kubectl, local("signing-host"), ns)
    assert data["host"] == "localhost"  # the name the client dials (the CNAME) ...
    # Token facts are computed out of the assertions: a failing assertion prints what it compares.
    signed_for_rds = data["password"].startswith(f"{rds.endpoint}:{rds.port}/?Action=connect")
    assert signed_for_rds, "the token is not signed for the RDS endpoint"  # ... signed for RDS
    who = login(data["dsn"])
    assert who == ("app_user", "orders")  # sslmode=verify-ca, as the example says


def test_mysql(
    kubectl: Kubectl,
    operator: OperatorProcess,
    ns: str,
    rds: Any,
    local: Callable[[str], list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    check_iam_policy("mysql", "app_user")
    assert "AWSAuthenticationPlugin" in (EXAMPLES / "mysql" / "setup.sql").read_text()
    obj, data = apply_and_wait(kubectl, local("mysql"), ns)
    host = "catalog.cluster-abc123def456.eu-west-1.rds.amazonaws.com"
    assert "pgpass" not in data
    assert (data["username"], data["host"], data["port"], data["dbname"]) == ("app_user", host, "3306", "catalog")
    token = data["password"]
    # Token facts are computed out of the assertions: a failing assertion prints what it compares.
    signed_for_host = token.startswith(f"{host}:3306/?Action=connect&DBUser=app_user&")
    assert signed_for_host, "the token is not signed for the cluster endpoint and app_user"
    in_region = "%2Feu-west-1%2Frds-db%2Faws4_request" in token
    assert in_region, "the token's scope is not eu-west-1"  # region inferred from the hostname
    url = urllib.parse.urlsplit(data["dsn"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("mysql", host, 3306, "/catalog")
    dsn_has_token = urllib.parse.unquote(url.password or "") == token
    assert dsn_has_token, "the DSN's password is not the token"
    from sqlalchemy.engine import make_url

    sqlalchemy_has_token = make_url(data["dsn"].replace("mysql://", "mysql+pymysql://", 1)).password == token
    assert sqlalchemy_has_token, "SQLAlchemy does not read the token from the DSN"
    # what the app gets through the mounted Secret and the PyMySQL integration
    from rdsiam import MountedCredential
    from rdsiam.integrations.pymysql import connect_kwargs

    AtomicWriter(tmp_path / "catalog-db").write({k: v.encode() for k, v in data.items()})
    kwargs = connect_kwargs(MountedCredential(str(tmp_path / "catalog-db")).snapshot())
    assert (kwargs["user"], kwargs["host"], kwargs["port"], kwargs["database"]) == ("app_user", host, 3306, "catalog")
    pymysql_has_token = kwargs["password"] == token
    assert pymysql_has_token, "connect_kwargs does not pass the token as the password"


def test_every_example_manifest_is_valid() -> None:
    """Built-in kinds against the Kubernetes schemas; RdsIamCredentials are applied by the tests above."""
    kinds = set()
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            kinds.add(doc["kind"])
            if doc["apiVersion"].startswith("rdsiam.io/"):
                continue
            try:
                kubernetes_validate.validate(doc, "1.33.0", strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']}: {str(exc).splitlines()[0]} at {list(exc.path)}")
    assert {"Deployment", "ServiceAccount", "ConfigMap", "RdsIamCredential"} <= kinds
    policies = sorted(EXAMPLES.rglob("*policy.json"))  # IAM policies (apps/node has package.json files)
    assert len(policies) >= 8
    for path in policies:
        policy = json.loads(path.read_text())
        assert policy["Version"] == "2012-10-17" and policy["Statement"], path


def test_every_example_is_run_by_a_test() -> None:
    others = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name)
    for directory in sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()):
        assert directory in TESTED_HERE or f"examples/{directory}" in others, (
            f"examples/{directory} is not run by any test"
        )


def test_the_app_teams_example_runs_as_an_app_teams_suite() -> None:
    """``examples/app-tests`` in a pytest process of its own, without this repository's configuration:
    its fixtures come from the installed ``rdsiam-testing`` plugin, as in an app's repository."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", os.devnull, "--rootdir", ".", "-p", "no:cacheprovider",
         "-W", "error::pytest.PytestUnraisableExceptionWarning"],
        cwd=EXAMPLES / "app-tests", capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"^3 passed in ", done.stdout, re.M), done.stdout[-2000:]
