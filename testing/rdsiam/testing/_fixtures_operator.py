"""Fixtures that run the operator against the local stack, and the secret-leak guard.

``cluster`` is the API server the scenarios run against: the emulator (``kube``) by default; the
real-API tier overrides it with a kube-apiserver built from Go modules, the e2e tier with a real
cluster. Everything here talks to it through ``kubectl``, so scenarios run unchanged on each.

The secret-leak guard has two parts: ``operator_factory`` searches every operator's whole log (DEBUG),
its metrics page, and every Event and status in the cluster for the tokens of every managed Secret
(:func:`leak_guard`); and a ``pytest_runtest_makereport`` hook, active wherever this plugin is, fails
any test whose failure text (assertion introspection, exception messages) or captured output holds a
token or SigV4 query parameters, and redacts them from the report so CI logs never carry one.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess

SIGNATURE = re.compile(r"X-Amz-(?:Signature|Credential|Security-Token)(?:=|%3D)(?!<redacted>)", re.IGNORECASE)
ROOT = Path(__file__).resolve().parents[3]


def _base64_forms(needle: bytes) -> list[str]:
    """The parts of base64(...needle...) that do not depend on what surrounds ``needle`` (3 alignments)."""
    forms = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + needle).decode()
        start, end = -(-8 * offset // 6), 8 * (offset + len(needle)) // 6
        forms.append(encoded[start:end])
    return forms


# SigV4 query parameters inside base64 text: a Secret's data, or anything that encodes one.
_B64_MARKERS = [f for name in (b"X-Amz-Signature", b"X-Amz-Security-Token", b"X-Amz-Credential")
                for sep in (b"=", b"%3D") for f in _base64_forms(name + sep)]


_HEX_RUN = re.compile(r"[0-9a-f]{16,}")


def find_leaks(haystacks: dict[str, str], tokens: list[str]) -> list[str]:
    """Names of the haystacks holding a token (raw, percent-encoded as in a DSN, or base64 as in a
    Secret), its signature or session token, or SigV4 query parameters (raw, encoded or base64).

    Linear in the text, whatever the number of tokens (a test with 1,000 Secrets searches a long
    DEBUG log): signatures are hex and survive every encoding but base64, so hex runs are looked up in
    a set; session tokens are few (one per credential); base64 is caught by its SigV4 markers.
    """
    signatures: set[str] = set()
    parts: set[str] = set()
    for token in tokens:
        params = dict(item.partition("=")[::2] for item in token.partition("?")[2].split("&"))
        signature = params.get("X-Amz-Signature", "")
        if len(signature) >= 16 and _HEX_RUN.fullmatch(signature):
            signatures.add(signature)
        else:  # not SigV4-shaped: look for the token itself
            parts.update({token, quote(token, safe="")})
        session = params.get("X-Amz-Security-Token", "")
        if len(session) >= 16:
            parts.update({session, quote(session, safe="")})
        parts.add(_base64_forms(token.encode())[0])
    lengths = {len(sig) for sig in signatures}
    leaks = []
    for name, text in haystacks.items():
        if SIGNATURE.search(text) or any(marker in text for marker in _B64_MARKERS):
            leaks.append(f"{name}: SigV4 query parameters")
        if any(run[i:i + n] in signatures for run in _HEX_RUN.findall(text) for n in lengths
               for i in range(len(run) - n + 1)) or any(part in text for part in parts):
            leaks.append(f"{name}: a token")
    return leaks


# Also what is left of a parameter name that pytest's truncation ("...-Token=") cut short.
_REDACT = re.compile(r"((?:X-Amz-)?(?:Signature|Credential|Security-Token|-Token)(?:=|%3D))[^&\s'\"<]+",
                     re.IGNORECASE)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


# On a line that shows a token's marks, any long run of the characters a token is made of: pytest may cut
# a long token so that a value's tail survives without its parameter name.
_TOKEN_LINE = re.compile(r"X-Amz-|Action=connect|DBUser=", re.IGNORECASE)
_TOKEN_RUN = re.compile(r"[A-Za-z0-9%+/=._-]{24,}")


def redact(text: str) -> str:
    """``text`` with SigV4 parameter values, base64 runs that hold SigV4 parameters, and long token-like
    runs on lines that show a token's marks, blanked out."""
    text = _REDACT.sub(r"\1<redacted>", text)
    text = "\n".join(_TOKEN_RUN.sub("<redacted>", line) if _TOKEN_LINE.search(line) else line
                     for line in text.split("\n"))
    return _BASE64_RUN.sub(lambda m: "<redacted base64>" if any(k in m.group(0) for k in _B64_MARKERS)
                           else m.group(0), text)


_SEEN_TOKENS: list[str] = []  # tokens of namespaces already deleted by the `ns` fixture
_SEEN_TEXTS: dict[str, str] = {}  # and their Events and status, for the leak checks of running operators


def _namespace_tokens(kubectl: Kubectl, namespace: str | None = None) -> list[str]:
    tokens = []
    for secret in kubectl.list("secrets", namespace, selector="app.kubernetes.io/managed-by=rdsiam"):
        data = secret.get("data") or {}
        if "password" in data:
            tokens.append(base64.b64decode(data["password"]).decode())
    return tokens


def cluster_tokens_and_texts(kubectl: Kubectl) -> tuple[list[str], dict[str, str]]:
    """Every managed Secret's password, and what users see (Events, status) to search them in."""
    tokens = _namespace_tokens(kubectl) + _SEEN_TOKENS[-200:]
    texts = {**_public_texts(kubectl), **_SEEN_TEXTS}
    _SEEN_TEXTS.clear()
    return tokens, texts


def _public_texts(kubectl: Kubectl, namespace: str | None = None) -> dict[str, str]:
    events = kubectl.list("events", namespace)
    creds = kubectl.list("rdsiamcredentials", namespace)
    return {
        "events": json.dumps([{k: e.get(k) for k in ("reason", "message")} for e in events]),
        "status": json.dumps([c.get("status") for c in creds]),
    }


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
def ns(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (cluster-wide operators of later tests must
    not see this test's resources). Its tokens are remembered for the leak checks first."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl.create_namespace(name)
    yield name
    _SEEN_TOKENS.extend(_namespace_tokens(kubectl, name))
    _SEEN_TEXTS.update({f"{k} of {name}": v for k, v in _public_texts(kubectl, name).items()})
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator_env(sts: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The operator pod's AWS environment, as IRSA sets it up on EKS."""
    role = sts.create_role("rdsiam-operator")
    return dict(sts.irsa_env(role, str(tmp_path_factory.mktemp("irsa"))))


@pytest.fixture
def operator_kubeconfig(cluster: Any) -> str:
    """The kubeconfig operators run with: the cluster's own, unless a tier puts something in between
    (tests/fault: a fault-injecting proxy)."""
    return str(cluster.kubeconfig)


@pytest.fixture
def operator_factory(
    operator_kubeconfig: str, kubectl: Kubectl, operator_env: dict[str, str], tmp_path: Path,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operators (``operator_factory(args=[...], env={...})``); all are stopped, then the whole
    operator log (DEBUG), its metrics page, Events and status are searched for tokens."""
    started: list[OperatorProcess] = []

    def make(args: list[str] | None = None, env: dict[str, str] | None = None, start: bool = True) -> OperatorProcess:
        proc = OperatorProcess(operator_kubeconfig, {**operator_env, **(env or {})}, args or [],
                               log_dir=str(tmp_path / f"op{len(started)}"))
        started.append(proc)
        return proc.start() if start else proc

    yield make
    leaks = leak_guard(started, kubectl)
    assert not leaks, f"secrets leaked into: {leaks}"


def leak_guard(started: list[OperatorProcess], kubectl: Kubectl) -> list[str]:
    """Stop the operators, then search their whole logs (DEBUG), metrics pages, and every Event and
    status in the cluster for the tokens of every managed Secret; return where they leaked."""
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
    return find_leaks(texts, tokens)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Every test, every phase: a token or SigV4 signature in the failure text (assertion introspection,
    exception messages) or in captured output fails the test, and the report shows it redacted, so CI
    logs never carry one."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    # Sections accumulate over the phases: judge only this phase's own ("Captured stdout call", ...).
    own = {title: content for title, content in report.sections if title.endswith(f" {report.when}")}
    leaks = find_leaks({"exception text": report.longreprtext, **own}, [])
    if leaks or any(find_leaks({"": content}, []) for _, content in report.sections):
        report.sections = [(title, redact(content)) for title, content in report.sections]
    if leaks:
        report.longrepr = (redact(report.longreprtext) + "\n\nrdsiam leak guard: a token or SigV4 signature "
                           f"appeared in this test's {', '.join(sorted({x.split(':')[0] for x in leaks}))} "
                           "(shown redacted above)")
        report.outcome = "failed"


@pytest.fixture
def operator(operator_factory: Callable[..., OperatorProcess]) -> OperatorProcess:
    """A running operator (``rdsiam run``) against ``cluster``, with IRSA credentials from ``sts``."""
    return operator_factory()
