"""A bounded sample of the generated specs end to end: applied to the real kube-apiserver (the CRD's
schema and CEL rules as a cluster checks them) and served by a running operator.

Each spec is either rejected by the API server (422, and the pure admission check predicted it), or
admitted and then either working (a complete Secret; logins for those pointed at the IAM-checking
PostgreSQL) or refused by the operator with ``Ready=False``, reason ``InvalidSpec``, naming the
``spec.`` field. No other outcome: no crash, no unexpected error in the log, no resource left without
a Ready condition, and a canary applied after all of them is served at once (no stuck worker).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import REQUIRED_KEYS, credential, decode, login, secret, wait_for, wait_settled
from tests.fault._figures import record
from tests.property.strategies import specs
from tests.property.test_spec_properties import admission

E2E_EXAMPLES = 30


def apply(cluster: RealCluster, obj: dict[str, Any]) -> tuple[int, str]:
    """Create it (JSON: YAML would refuse the escapes of generated astral characters); the HTTP status
    and the API server's message."""
    path = f"/apis/rdsiam.io/v1alpha1/namespaces/{obj['metadata']['namespace']}/rdsiamcredentials"
    status, body = cluster.request("POST", path, obj)
    return status, str(body.get("message", "")) if isinstance(body, dict) else ""


def ready(kube: Any, ns: str, name: str) -> dict[str, Any] | None:
    obj = kube.get("rdsiam.io/v1alpha1", "RdsIamCredential", name, ns) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)


def test_generated_specs_through_the_api_and_a_running_operator(
    cluster: RealCluster, sts: Any, rds: Any, spaces: Callable[[str], str], operator_factory: Any, app_user: str,
) -> None:
    kube = cluster
    collected: list[tuple[dict[str, Any], bool]] = []

    @settings(max_examples=E2E_EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(specs(e2e=True), st.booleans())
    def collect(raw: dict[str, Any], at_rds: bool) -> None:
        collected.append((raw, at_rds))

    collect()
    ns = spaces("prop")
    op = operator_factory(args=["--namespace", ns])
    outcomes: Counter[str] = Counter()
    admitted: list[str] = []
    at_rds_names: list[str] = []
    for i, (raw, at_rds) in enumerate(collected):
        name = f"p{i}"
        spec = dict(raw)
        if at_rds:  # the same spec, pointed at the IAM-checking PostgreSQL: it must also log in
            spec = {**spec, "host": rds.endpoint, "port": rds.port, "username": app_user, "database": "postgres",
                    "dsn": credential(rds, name, ns)["spec"]["dsn"]}
            spec.pop("signingHost", None)
            spec.pop("region", None)
            spec.pop("engine", None)
        predicted = admission(spec)
        code, message = apply(cluster, {"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
                                        "metadata": {"name": name, "namespace": ns}, "spec": spec})
        if code not in (200, 201):
            assert code in (400, 422), (code, message[:200])
            assert predicted, f"{name}: the API refused what admission() admits: {message[:200]}"
            outcomes[f"rejected by the API ({code})"] += 1
            continue
        assert not predicted, f"{name}: the API admitted what admission() refuses: {predicted}"
        admitted.append(name)
        if at_rds:
            at_rds_names.append(name)
    started = time.time()
    kube.apply_manifest(credential(rds, "canary", ns))
    wait_for("the canary's Secret", lambda: secret(kube, ns, "canary"), timeout=10)
    canary = time.time() - started

    def undecided() -> list[str]:
        out = []
        for name in admitted:
            cond = ready(kube, ns, name)
            if cond is None or (cond["status"] == "True") != bool(secret(kube, ns, (
                    kube.get("rdsiam.io/v1alpha1", "RdsIamCredential", name, ns) or {}).get("status", {}).get(
                    "secretName") or name)) and cond["reason"] != "InvalidSpec":
                out.append(f"{name}: {cond and cond['reason']}")
        return out

    wait_settled("a Ready condition on every admitted resource", undecided, timeout=30)
    for name in admitted:
        cond = ready(kube, ns, name)
        assert cond is not None
        obj = kube.get("rdsiam.io/v1alpha1", "RdsIamCredential", name, ns) or {}
        if cond["status"] == "True":
            data = decode(secret(kube, ns, obj["status"]["secretName"]) or {})
            assert set(REQUIRED_KEYS) <= set(data), name
            if name in at_rds_names:
                assert login(data) == app_user
                outcomes["admitted and logged in"] += 1
            else:
                outcomes["admitted, Secret written"] += 1
        else:
            assert cond["reason"] == "InvalidSpec", f"{name}: {cond['reason']}: {cond['message']}"
            assert re.search(r"\bspec(\.[A-Za-z]+)*\b", cond["message"]), cond["message"]
            outcomes["refused by the operator (InvalidSpec)"] += 1
    assert not [line for line in op.log().splitlines() if "Unexpected error" in line or "Traceback" in line]
    assert login(decode(secret(kube, ns, "canary") or {})) == app_user
    record("property tests (end to end)", f"{len(collected)} generated specs through kube-apiserver and a running "
           f"operator: {dict(outcomes)}; a canary applied after them was served in {canary:.2f} s")
