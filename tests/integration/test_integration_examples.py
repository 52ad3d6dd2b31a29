"""Every app example in examples/apps runs against the local stack and logs in with the mount."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rdsiam.testing.kubelet import AtomicWriter, secret_payload
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.sts import StsServer

APPS = Path(__file__).resolve().parents[2] / "examples" / "apps"
USER, DB = "rdsiam_example_app", "rdsiam_example_db"
POSTGRES_APPS = [
    "plain_app.py",
    "psycopg_app.py",
    "psycopg2_app.py",
    "sqlalchemy_app.py",
    "sqlalchemy_async_app.py",
    "asyncpg_app.py",
    "django_app.py",
]


@pytest.fixture(scope="module")
def mount(sts: StsServer, rds: IamPostgres, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    postgres.create_user(USER, database=DB)
    token = sts.token_minter("rdsiam-examples", rds.endpoint, rds.port, rds.region)(USER)
    path = tmp_path_factory.mktemp("examples") / "orders-db"
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15)
    AtomicWriter(path).write(
        secret_payload(
            username=USER,
            password=token,
            host=rds.endpoint,
            port=rds.port,
            dbname=DB,
            dsn=rds.dsn(USER, DB, token),
            expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    )
    return path


def run_example(name: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, str(APPS / name)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("name", POSTGRES_APPS)
def test_postgres_example(name: str, mount: Path, rds: IamPostgres) -> None:
    start = len(rds.login_log)
    env = {
        "RDSIAM_MOUNT": str(mount),
        # libpq environment: dial loopback, verify the certificate for the RDS endpoint name
        "PGHOSTADDR": rds.hostaddr,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": rds.ca_file,
        # asyncpg has no hostaddr: dial 127.0.0.1, which the test certificate also names
        "RDS_CA_BUNDLE": rds.ca_file,
        "DB_CONNECT_HOST": rds.hostaddr,
    }
    out = run_example(name, env)
    assert out.strip().splitlines()[-1] == USER
    logins = [a for a in rds.login_log[start:] if a.user == USER]
    assert logins and all(a.accepted and a.method == "iam" and a.tls for a in logins)


def test_deployment_mounts_the_secret_as_a_volume() -> None:
    doc = yaml.safe_load((APPS / "deployment.yaml").read_text())
    pod = doc["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        for mount in container["volumeMounts"]:
            assert "subPath" not in mount and "subPathExpr" not in mount
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert "secret" in mounts[env["RDSIAM_MOUNT"]]
        assert not any("valueFrom" in e for e in container.get("env", []))  # no Secret in env vars
        # the CA bundle the scripts verify the server with is mounted where they look for it
        for name in ("PGSSLROOTCERT", "RDS_CA_BUNDLE"):
            assert "configMap" in mounts[env[name].rpartition("/")[0]], name


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in APPS.glob("*.py")}
    # pymysql_app.py: test_integration_pymysql.py; every.py (the pods' once-a-second loop): tests/e2e
    assert scripts == {*POSTGRES_APPS, "pymysql_app.py", "every.py"}
