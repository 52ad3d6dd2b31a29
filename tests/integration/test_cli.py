"""The `rdsiam` command's subcommands as a user runs them: `token`, `crd`, `--help`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def rdsiam(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rdsiam.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_token_is_what_aws_cli_would_print_and_the_database_accepts_it(
    sts: Any, rds: Any, postgres: Any, tmp_path: Path,
) -> None:
    postgres.create_user("cli_user", rds_iam=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(sts.irsa_env(sts.create_role("cli-user-role"), str(tmp_path)))
    out = rdsiam("token", "--host", rds.endpoint, "--port", str(rds.port), "--user", "cli_user", env=env)
    assert out.returncode == 0, out.stderr[-500:]
    token = out.stdout.strip()
    assert token.startswith(f"{rds.endpoint}:{rds.port}/?Action=connect&DBUser=cli_user&")
    with psycopg.connect(rds.dsn("cli_user", "postgres", token), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("cli_user",)


def test_token_without_aws_credentials_says_what_it_tried_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("")
    (tmp_path / "credentials").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"), AWS_EC2_METADATA_DISABLED="true")
    script = Path(sys.executable).with_name("rdsiam")  # the console script a user runs
    out = subprocess.run(
        [str(script), "token", "--host", "orders.cluster-abc.us-east-1.rds.amazonaws.com", "--port", "5432",
         "--user", "app_user"], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("rdsiam token: no AWS credentials found (tried: ")
    assert "web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE)" in lines[0]
    assert "container credentials (EKS Pod Identity / ECS)" in lines[0]


@pytest.mark.parametrize(("args", "port"), [
    ((), 5432), (("--engine", "mysql"), 3306), (("--engine", "mysql", "--port", "3307"), 3307)])
def test_token_port_defaults_by_engine(args: tuple[str, ...], port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE", AWS_SECRET_ACCESS_KEY="not-a-real-secret")  # signs locally
    host = "orders.cluster-abc.us-east-1.rds.amazonaws.com"
    out = rdsiam("token", "--host", host, "--user", "app_user", *args, env=env)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.startswith(f"{host}:{port}/?Action=connect&DBUser=app_user&")


def test_token_needs_a_region_for_non_rds_hosts() -> None:
    out = rdsiam("token", "--host", "db.internal.example.com", "--user", "u")
    assert out.returncode == 2 and "--region" in out.stderr


def test_crd_prints_the_committed_crd() -> None:
    out = rdsiam("crd")
    assert out.returncode == 0
    assert out.stdout == (ROOT / "crds" / "rdsiam.io_rdsiamcredentials.yaml").read_text()


@pytest.mark.parametrize("command", ["run", "token", "check"])
def test_help(command: str) -> None:
    out = rdsiam(command, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout
