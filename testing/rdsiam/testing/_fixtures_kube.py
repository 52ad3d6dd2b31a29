"""pytest fixtures of the Kubernetes API emulator (``rdsiam.testing.kube``).

- ``kube`` (session): a started :class:`~rdsiam.testing.kube.KubeEmulator` (for the demo and the
  quick tiers; its package docstring says what it does not emulate) with the project's CRDs
  (``crds/*.yaml`` at the repository root) applied when that directory exists.
- ``namespace`` (function): a fresh namespace in ``kube``, deleted (with its content) afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdsiam.testing.kube import KubeEmulator

__all__ = ["kube", "namespace", "project_crds"]


def project_crds() -> list[Path]:
    """The CRD manifests of the repository this package was installed from (none when not found)."""
    root = Path(__file__).resolve().parents[3]
    directory = root / "crds"
    return sorted(directory.glob("*.yaml")) if directory.is_dir() else []


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeEmulator]:
    """A running Kubernetes API emulator shared by the test session."""
    with KubeEmulator() as emulator:
        crds = project_crds()
        if crds:
            emulator.apply_manifest(list(crds))
        yield emulator


@pytest.fixture
def namespace(kube: KubeEmulator) -> Iterator[str]:
    """A unique namespace in ``kube`` for one test; deleted with everything in it afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    kube.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.delete_namespace(name)
