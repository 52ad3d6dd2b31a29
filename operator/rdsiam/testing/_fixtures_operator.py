"""Fixtures that run the operator against the local stack, and the secret-leak guard.

``cluster`` is the API server the scenarios run against: the emulator (``kube``) by default; the
real-API tier overrides it with a kube-apiserver built from Go modules, the e2e tier with a real
cluster. Everything here talks to it through ``kubectl``, so scenarios run unchanged on each.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess

SIGNATURE = re.compile(r"X-Amz-(?:Signature|Credential|Security-Token)(?:=|%3D)", re.IGNORECASE)
ROOT = Path(__file__).resolve().parents[3]


def find_leaks(haystacks: dict[str, str], tokens: list[str]) -> list[str]:
    """Names of the haystacks holding a token, its signature, or SigV4 query parameters."""
    leaks = []
    for name, text in haystacks.items():
        if SIGNATURE.search(text):
            leaks.append(f"{name}: SigV4 query parameters")
        for token in tokens:
            sig = token.rsplit("X-Amz-Signature=", 1)[-1]
            if token in text or (len(sig) >= 16 and sig in text):
                leaks.append(f"{name}: a token")
                break
    return leaks


def cluster_tokens_and_texts(kubectl: Kubectl) -> tuple[list[str], dict[str, str]]:
    """Every managed Secret's password, and what users see (Events, status) to search them in."""
    tokens = []
    for secret in kubectl.list("secrets", selector="app.kubernetes.io/managed-by=rdsiam"):
        data = secret.get("data") or {}
        if "password" in data:
            import base64

            tokens.append(base64.b64decode(data["password"]).decode())
    events = kubectl.list("events")
    creds = kubectl.list("rdsiamcredentials")
    texts = {
        "events": json.dumps([{k: e.get(k) for k in ("reason", "message")} for e in events]),
        "status": json.dumps([c.get("status") for c in creds]),
    }
    return tokens, texts


@pytest.fixture(scope="session")
def cluster(kube: Any) -> Any:
    """The API server under test (has ``.kubeconfig``); the emulator unless a tier overrides it."""
    kubectl = Kubectl(kube.kubeconfig)
    if kubectl.get("crd", "rdsiamcredentials.rdsiam.io") is None:
        kubectl.apply_crds(str(ROOT / "crds"))
    return kube


@pytest.fixture(scope="session")
def kubectl(cluster: Any) -> Kubectl:
    return Kubectl(cluster.kubeconfig)


@pytest.fixture
def ns(kubectl: Kubectl) -> str:
    """A fresh namespace for one test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl.create_namespace(name)
    return name


@pytest.fixture(scope="session")
def operator_env(sts: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The operator pod's AWS environment, as IRSA sets it up on EKS."""
    role = sts.create_role("rdsiam-operator")
    return dict(sts.irsa_env(role, str(tmp_path_factory.mktemp("irsa"))))


@pytest.fixture
def operator_factory(
    cluster: Any, kubectl: Kubectl, operator_env: dict[str, str], tmp_path: Path,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators (``operator_factory(args=[...], env={...})``); all are stopped, then the whole
    operator log (DEBUG), its metrics page, Events and status are searched for tokens."""
    started: list[OperatorProcess] = []

    def make(args: list[str] | None = None, env: dict[str, str] | None = None, start: bool = True) -> OperatorProcess:
        proc = OperatorProcess(cluster.kubeconfig, {**operator_env, **(env or {})}, args or [],
                               log_dir=str(tmp_path / f"op{len(started)}"))
        started.append(proc)
        return proc.start() if start else proc

    yield make
    texts: dict[str, str] = {}
    for i, proc in enumerate(started):
        if proc.metrics_port and proc.proc is not None and proc.proc.poll() is None:
            try:
                texts[f"metrics{i}"] = proc.metrics()
            except OSError:
                pass
        proc.stop()
        texts[f"log{i}"] = proc.log()
    tokens, public = cluster_tokens_and_texts(kubectl)
    texts.update(public)
    leaks = find_leaks(texts, tokens)
    assert not leaks, f"secrets leaked into: {leaks}"


@pytest.fixture
def operator(operator_factory: Callable[..., OperatorProcess]) -> OperatorProcess:
    """A running operator (``rdsiam run``) against ``cluster``, with IRSA credentials from ``sts``."""
    return operator_factory()
