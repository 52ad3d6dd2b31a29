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
