"""The real helm for the chart tests: the binary ``scripts/build-realapi.sh helm`` builds from Go modules.

Without it a test that needs it is skipped with the reason; with ``CI=true`` (as ``scripts/e2e.sh``
treats its tier) it fails instead, so CI never passes without rendering the chart.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from rdsiam.testing.realapi import bin_dir, helm_path

CHART = Path(__file__).resolve().parents[1] / "charts" / "rdsiam"
KUBE_VERSION = "1.33.0"  # a recent Kubernetes; kubernetes-validate has its schemas


class HelmError(Exception):
    """helm exited non-zero; ``returncode`` and ``output`` (stdout + stderr) are kept."""

    def __init__(self, args: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {returncode}:\n{output}")
        self.returncode = returncode
        self.output = output


def binary() -> Path:
    """helm's path; skips the test without it (fails it when CI is set)."""
    path = helm_path()
    if path is None:
        reason = f"helm not found in {bin_dir()}: run scripts/build-realapi.sh helm (needs Go)"
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"{reason}; CI is set, so this is a failure", pytrace=False)
        pytest.skip(reason)
    return path


def run(*args: str, values_files: Sequence[str | Path] = (), values: Mapping[str, Any] | None = None) -> str:
    """``helm ARGS -f FILE...`` (values last, as one more file); stdout, or HelmError."""
    helm = binary()
    with tempfile.TemporaryDirectory(prefix="rdsiam-helm-") as tmp:
        cmd = [*args]
        for path in values_files:
            cmd += ["-f", str(path)]
        if values:
            (Path(tmp) / "values.json").write_text(json.dumps(values))
            cmd += ["-f", str(Path(tmp) / "values.json")]
        home = {"HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp}
        proc = subprocess.run(
            [str(helm), *cmd], capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **home}
        )
    if proc.returncode != 0:
        raise HelmError(cmd, proc.returncode, (proc.stdout + proc.stderr).strip())
    return proc.stdout


_rendered: dict[tuple[Any, ...], list[dict[str, Any]]] = {}


def template(
    chart: Path = CHART,
    *,
    release: str = "rdsiam",
    namespace: str = "rdsiam-system",
    values_files: Sequence[str | Path] = (),
    values: Mapping[str, Any] | None = None,
    kube_version: str = KUBE_VERSION,
) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders; each render runs once per session (callers get copies)."""
    files = tuple(map(str, values_files))
    key = (str(chart), release, namespace, files, json.dumps(values, sort_keys=True), kube_version)
    if key not in _rendered:
        args = ("template", release, str(chart), "--namespace", namespace, "--kube-version", kube_version)
        text = run(*args, values_files=files, values=values)
        _rendered[key] = [doc for doc in yaml.safe_load_all(text) if doc]
    return copy.deepcopy(_rendered[key])
