"""Fixtures that run the operator against the local stack, and the secret-leak guard."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdsiam.testing.operator import OperatorProcess

SIGNATURE = re.compile(r"X-Amz-Signature=[0-9a-f]{16,}|X-Amz-Security-Token=|X-Amz-Credential=")


def find_leaks(haystacks: dict[str, str], tokens: list[str]) -> list[str]:
    """Names of the haystacks holding a token, a piece of one, or a SigV4 signature."""
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


def collect_tokens(kube: Any) -> list[str]:
    """Every password held by a managed Secret in the emulator (to search for elsewhere)."""
    client = kube.client()
    out = []
    for secret in client.list("v1", "secrets", label_selector="app.kubernetes.io/managed-by=rdsiam")["items"]:
        data = secret.get("data") or {}
        if "password" in data:
            out.append(base64.b64decode(data["password"]).decode())
    return out


def public_texts(kube: Any) -> dict[str, str]:
    """What users and log collectors see: Events and the resources' status."""
    import json

    client = kube.client()
    events = client.list("v1", "events")["items"]
    creds = client.list("rdsiam.io/v1alpha1", "rdsiamcredentials")["items"]
    return {
        "events": json.dumps([{k: e.get(k) for k in ("reason", "message")} for e in events]),
        "status": json.dumps([c.get("status") for c in creds]),
    }


@pytest.fixture(scope="session")
def operator_env(sts: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The operator pod's AWS environment, as IRSA sets it up on EKS."""
    role = sts.create_role("rdsiam-operator")
    return dict(sts.irsa_env(role, str(tmp_path_factory.mktemp("irsa"))))


@pytest.fixture
def operator_factory(kube: Any, operator_env: dict[str, str], tmp_path: Any) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators (``operator_factory(args=[...], env={...})``); all are stopped and leak-checked."""
    started: list[OperatorProcess] = []

    def make(args: list[str] | None = None, env: dict[str, str] | None = None, start: bool = True) -> OperatorProcess:
        proc = OperatorProcess(kube.kubeconfig, {**operator_env, **(env or {})}, args or [],
                               log_dir=str(tmp_path / f"op{len(started)}"))
        started.append(proc)
        return proc.start() if start else proc

    yield make
    texts = {}
    for i, proc in enumerate(started):
        if proc.metrics_port and proc.proc is not None and proc.proc.poll() is None:
            try:
                texts[f"metrics{i}"] = proc.metrics()
            except OSError:
                pass
        proc.stop()
        texts[f"log{i}"] = proc.log()
    texts.update(public_texts(kube))
    leaks = find_leaks(texts, collect_tokens(kube))
    assert not leaks, f"secrets leaked into: {leaks}"


@pytest.fixture
def operator(operator_factory: Callable[..., OperatorProcess]) -> OperatorProcess:
    """A running operator (``rdsiam run``) against ``kube``, with IRSA credentials from ``sts``."""
    return operator_factory()
