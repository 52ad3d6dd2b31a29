"""Helpers of the real-API tier tests (kubectl runner, polling, JWT payload, watch stream)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rdsiam.testing.realapi import RealCluster, kubectl_path

HERE = Path(__file__).parent
DATA = HERE / "data"
REPO = HERE.parent.parent
PROJECT_CRDS = REPO / "crds"


def project_crd_files() -> list[Path]:
    return sorted(PROJECT_CRDS.glob("*.yaml")) if PROJECT_CRDS.is_dir() else []


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kubectl(
    cluster: RealCluster, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    path = kubectl_path()
    if path is None:
        pytest.skip("kubectl not found (neither built by scripts/build-realapi.sh nor on PATH)")
    proc = subprocess.run(
        [str(path), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        env=cluster.env(),
    )
    if check and proc.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def jwt_claims(token: str) -> dict[str, Any]:
    """Payload of a JWT, unverified (the test verifies the signature separately)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
