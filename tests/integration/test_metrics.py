"""Observability during a real run: the Prometheus page moves with what the operator does, and
``--log-format json`` really writes one JSON object per line."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rdsiam.operator.metrics import api_resource
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture


def scrape(operator: OperatorProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the operator's /metrics; a series served twice fails (a
    dict would keep one of the two and hide it)."""
    samples = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"series served twice: {key}"
            samples[key] = s.value
    return samples


def value(samples: dict[Any, float], metric: str, /, **labels: str) -> float:
    """Sum of the samples of ``metric`` whose labels include ``labels`` (0 when none)."""
    return sum(v for (n, ls), v in samples.items() if n == metric and labels.items() <= dict(ls).items())


def test_metrics_follow_refreshes_expiry_sts_and_write_errors(
    kube: Any,
    kubectl: Kubectl,
    rds: Any,
    namespace: str,
    app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    ns = namespace  # deleted with its content afterwards, so later operators never see it
    operator = operator_factory(args=["--log-format", "json"])
    kubectl.apply([credential(rds, "m1", ns), credential(rds, "m2", ns)])
    for name in ("m1", "m2"):
        kubectl.wait("the Secret", lambda name=name: kubectl.secret_data(name, ns))
    before = scrape(operator)

    # seconds until each resource's token expires: present, and within the token's 15 minutes
    for name in ("m1", "m2"):
        left = value(before, "rdsiam_token_expiry_seconds", namespace=ns, name=name)
        assert 850 < left <= 900, (name, left)
    assert value(before, "rdsiam_refreshes_total", result="ok", reason="SecretMissing") >= 2
    # the operator's identity was resolved with STS (GetCallerIdentity for its principal ARN), timed
    assert value(before, "rdsiam_sts_requests_total", result="ok") > 0
    assert value(before, "rdsiam_sts_request_seconds_count") > 0
    assert value(before, "rdsiam_leader") == 1 and value(before, "rdsiam_resources") >= 2

    # a rotation on request moves the refresh counter by exactly one, with its reason
    time.sleep(1.1)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    first = kubectl.secret_data("m1", ns)
    assert first is not None
    kubectl.run("annotate", "-n", ns, "rdsiam", "m1", f"rdsiam.io/refresh-requested-at={stamp}", "--overwrite")
    kubectl.wait("a new token", lambda: (d := kubectl.secret_data("m1", ns)) and d["password"] != first["password"])
    after = kubectl.wait(
        "the counter",
        lambda: (
            (s := scrape(operator))
            and value(s, "rdsiam_refreshes_total", result="ok", reason="RefreshRequested")
            > value(before, "rdsiam_refreshes_total", result="ok", reason="RefreshRequested")
            and s
        ),
    )
    assert (
        value(after, "rdsiam_refreshes_total", result="ok", reason="RefreshRequested")
        == value(before, "rdsiam_refreshes_total", result="ok", reason="RefreshRequested") + 1
    )
    # ...and the expiry gauge follows the new token's expires-at
    second = kubectl.secret_data("m1", ns)
    assert second is not None and second["expires-at"] > first["expires-at"]
    expires = datetime.datetime.fromisoformat(second["expires-at"].replace("Z", "+00:00"))
    left = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
    assert abs(value(scrape(operator), "rdsiam_token_expiry_seconds", namespace=ns, name="m1") - left) < 2.0

    # a refused Secret write is counted by resource and status, and as a failed refresh with its reason
    kube.inject(rf"^/api/v1/namespaces/{ns}/secrets$", method="POST", status=500, times=1)
    kubectl.apply(credential(rds, "m3", ns))
    kubectl.wait("the Secret after the retry", lambda: kubectl.secret_data("m3", ns), timeout=20)
    failed = scrape(operator)
    assert value(failed, "rdsiam_kubernetes_write_errors_total", resource="secrets", status="500") == 1
    assert value(failed, "rdsiam_refreshes_total", result="error", reason="KubernetesError") >= 1
    assert value(failed, "rdsiam_kubernetes_writes") > 0

    # --log-format json: every line a JSON object, refreshes included (and no token: see operator_factory)
    lines = operator.log().splitlines()
    records = [json.loads(line) for line in lines]
    assert all({"message", "severity", "timestamp"} <= r.keys() for r in records)
    assert any(r["message"].startswith(f"Refreshing {ns}/m1") for r in records)


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces/shop/secrets", "secrets"),
        ("/api/v1/namespaces/shop/secrets/orders-db", "secrets"),
        ("/apis/rdsiam.io/v1alpha1/namespaces/shop/rdsiamcredentials/orders-db/status", "rdsiamcredentials/status"),
        ("/api/v1/namespaces/shop/serviceaccounts/app/token", "serviceaccounts/token"),
        ("/apis/coordination.k8s.io/v1/namespaces/ops/leases/rdsiam-operator", "leases"),
        ("/api/v1/namespaces/shop", "namespaces"),
    ],
)
def test_write_errors_are_labelled_by_resource_never_by_name(path: str, resource: str) -> None:
    assert api_resource(path) == resource


def test_one_expiry_series_per_resource_for_long_names_and_renamed_targets(
    kubectl: Kubectl,
    rds: Any,
    namespace: str,
    app_user: str,  # noqa: F811
    operator_factory: Callable[..., OperatorProcess],
) -> None:
    """A name longer than a label value may be (63) still gets its Secret; renaming spec.target.name leaves
    the old Secret (owned, so deleted with the resource) but not a second, stale expiry series."""
    ns = namespace
    operator = operator_factory()
    long_name = "orders-" + "x" * 70
    kubectl.apply([credential(rds, long_name, ns), credential(rds, "renamed", ns, target={"name": "first"})])
    kubectl.wait("the long name's Secret", lambda: kubectl.secret_data(long_name, ns))
    kubectl.wait("the first Secret", lambda: kubectl.secret_data("first", ns))
    label = kubectl.get("secret", long_name, ns)["metadata"]["labels"]["rdsiam.io/credential"]  # type: ignore[index]
    assert len(label) <= 63 and label.startswith("orders-xxx")

    time.sleep(2.1)  # the second Secret's expires-at (whole seconds) then differs from the first's
    kubectl.apply(credential(rds, "renamed", ns, target={"name": "second"}))
    kubectl.wait("the second Secret", lambda: kubectl.secret_data("second", ns))
    assert kubectl.secret_data("first", ns) is not None  # left in place (documented), never refreshed again

    def series(page: str, name: str) -> list[float]:
        """Every sample of the gauge for ``name`` on the page as served (duplicates kept)."""
        return [s.value for family in text_string_to_metric_families(page) for s in family.samples
                if s.name == "rdsiam_token_expiry_seconds" and s.labels == {"namespace": ns, "name": name}]

    page = kubectl.wait("both series", lambda: (p := operator.metrics()) and series(p, "renamed")
                        and series(p, long_name) and p)
    assert len(series(page, "renamed")) == 1 and len(series(page, long_name)) == 1
    def left(secret: str) -> float:
        data = kubectl.secret_data(secret, ns)
        assert data is not None
        expires = datetime.datetime.fromisoformat(data["expires-at"].replace("Z", "+00:00"))
        return (expires - datetime.datetime.now(datetime.UTC)).total_seconds()

    shown, first, second = series(page, "renamed")[0], left("first"), left("second")
    assert second - first >= 1.0  # two tokens the gauge can tell apart
    assert abs(shown - second) < abs(shown - first)  # the current Secret's token, not the old one's
