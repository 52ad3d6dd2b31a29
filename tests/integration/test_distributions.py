"""The operator's wheel holds the operator and the in-pod library only; the test support is the
``rdsiam-testing`` distribution, which brings the pytest plugin. Both are built from this checkout
and installed into a fresh virtualenv, as a user's ``pip install`` would."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What only tests need: none of it may reach the operator's wheel or its requirements.
TEST_ONLY = ("moto", "kmock", "pytest", "aiohttp", "cel-python", "jsonschema", "pyjwt", "cryptography")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    out = tmp_path_factory.mktemp("wheels")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for tree in ("operator", "testing"):
        shutil.copytree(ROOT / tree, src / tree, ignore=ignore)
    for source in (src, src / "testing"):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "-w", str(out),
             str(source)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    built = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(built) == {"rdsiam", "rdsiam_testing"}, sorted(built)
    yield built


def _metadata(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(f".dist-info/{name}"))
        return zf.read(member).decode()


def _files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return [n for n in zf.namelist() if ".dist-info/" not in n]


def test_the_operator_wheel_holds_no_test_support(wheels: dict[str, Path]) -> None:
    files = _files(wheels["rdsiam"])
    assert "rdsiam/operator/handlers.py" in files and "rdsiam/_mounted.py" in files
    assert [f for f in files if not f.startswith("rdsiam/") or f.startswith("rdsiam/testing/")] == []
    assert "pytest11" not in _metadata(wheels["rdsiam"], "entry_points.txt")
    metadata = _metadata(wheels["rdsiam"], "METADATA").splitlines()
    requires = [line for line in metadata if line.startswith("Requires-Dist:")]
    unconditional = [r for r in requires if "extra ==" not in r]
    assert unconditional == []  # `import rdsiam` needs nothing
    operator = " ".join(r for r in requires if "extra == \"operator\"" in r).lower()
    assert "kopf" in operator and not [name for name in TEST_ONLY if name in operator]
    testing = [r for r in requires if "extra == \"testing\"" in r]
    assert testing == ['Requires-Dist: rdsiam-testing==0.1.0; extra == "testing"']


def test_the_testing_wheel_holds_only_rdsiam_testing_and_registers_the_plugin(wheels: dict[str, Path]) -> None:
    files = _files(wheels["rdsiam_testing"])
    assert "rdsiam/testing/plugin.py" in files
    assert [f for f in files if not f.startswith("rdsiam/testing/")] == []  # never rdsiam/__init__.py
    entry_points = _metadata(wheels["rdsiam_testing"], "entry_points.txt")
    assert "[pytest11]\nrdsiam = rdsiam.testing.plugin" in entry_points


def _python_with(tmp_path: Path, *wheel_files: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
         "--no-deps", *map(str, wheel_files)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


PROBE = """
import importlib.metadata, importlib.util, rdsiam
print(sorted(ep.value for ep in importlib.metadata.entry_points(group="pytest11")))
print(importlib.util.find_spec("rdsiam.testing") is not None)
print(rdsiam.MountedCredential.__name__)
"""


def test_installed_alone_rdsiam_has_no_test_support_and_no_plugin(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = _python_with(tmp_path, wheels["rdsiam"])
    done = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["[]", "False", "MountedCredential"]


def test_installed_together_rdsiam_testing_sits_beside_rdsiam(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = _python_with(tmp_path, wheels["rdsiam"], wheels["rdsiam_testing"])
    done = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:3] == ["['rdsiam.testing.plugin']", "True", "MountedCredential"]


def test_the_plugin_in_this_environment_offers_the_fixtures() -> None:
    import rdsiam.testing.plugin as plugin

    assert all(hasattr(plugin, name) for name in ("kube", "sts", "postgres", "rds", "operator"))
