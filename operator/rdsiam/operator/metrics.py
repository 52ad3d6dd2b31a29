"""Prometheus metrics (prometheus-client), served on ``--metrics-port``.

- ``rdsiam_refreshes_total{result,reason}``: token refreshes (result ok/error; reason why or what failed)
- ``rdsiam_token_expiry_seconds{namespace,name}``: seconds until each resource's current token expires
- ``rdsiam_sts_requests_total{action,result}`` and ``rdsiam_sts_request_seconds{action}``
- ``rdsiam_kubernetes_write_errors_total{resource,status}``: failed Kubernetes writes (Secrets, status, Events,
  TokenRequests, Leases) by resource and HTTP status (504: no answer, 503: no connection);
  ``rdsiam_kubernetes_writes``: mutating calls made
- ``rdsiam_resources``: resources known to this replica; ``rdsiam_leader``: 1 while this replica acts
"""

from __future__ import annotations

import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from rdsiam.operator.policy import parse_time
from rdsiam.operator.reconcile import EXPIRES_ANN, _owned_by, secret_name_of

REGISTRY = CollectorRegistry(auto_describe=True)
REFRESHES = Counter(
    "rdsiam_refreshes", "Token refreshes by result and reason.", ["result", "reason"], registry=REGISTRY
)
STS_REQUESTS = Counter(
    "rdsiam_sts_requests", "AWS STS calls by action and result.", ["action", "result"], registry=REGISTRY
)
STS_SECONDS = Histogram(
    "rdsiam_sts_request_seconds",
    "AWS STS call latency.",
    ["action"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
KUBE_WRITE_ERRORS = Counter(
    "rdsiam_kubernetes_write_errors",
    "Failed Kubernetes writes by resource and HTTP status (504: no answer, 503: no connection).",
    ["resource", "status"],
    registry=REGISTRY,
)


class _Collected:
    """Collected on scrape from the runtime's state: no per-resource bookkeeping on the hot path."""

    def __init__(self) -> None:
        self.runtime: Any = None

    def collect(self) -> Any:
        runtime = self.runtime
        now = datetime.datetime.now(datetime.UTC)
        family = GaugeMetricFamily(
            "rdsiam_token_expiry_seconds",
            "Seconds until the resource's current token expires.",
            labels=["namespace", "name"],
        )
        # One series per resource, from the Secret its spec names now (a Secret left behind by a renamed
        # spec.target.name is not counted: it would report its stale token as this resource's).
        resources = list(runtime.resources.items()) if runtime else []
        for (ns, name), body in resources:
            secret = runtime.secrets.get((ns, secret_name_of(body)))
            if secret is None or not _owned_by(secret, body.get("metadata", {}).get("uid")):
                continue  # none yet, or not this resource's (a foreign Secret of that name)
            meta = secret["metadata"]
            when = parse_time((meta.get("annotations") or {}).get(EXPIRES_ANN))
            if when:
                family.add_metric([ns, name], (when - now).total_seconds())
        yield family
        known = GaugeMetricFamily("rdsiam_resources", "RdsIamCredential resources known.")
        known.add_metric([], len(resources))
        yield known
        leader = GaugeMetricFamily("rdsiam_leader", "1 while this replica refreshes tokens.")
        leader.add_metric([], 1 if runtime and runtime.active.is_set() else 0)
        yield leader
        writes = GaugeMetricFamily("rdsiam_kubernetes_writes", "Mutating Kubernetes API calls made.")
        writes.add_metric([], runtime.kube.writes if runtime else 0)
        yield writes


COLLECTED = _Collected()
REGISTRY.register(COLLECTED)


def instrument(runtime: Any) -> None:
    """Hook the metrics into the operator's objects (callbacks, not polling)."""
    COLLECTED.runtime = runtime

    def refreshed(body: dict[str, Any], reason: str, expires: datetime.datetime) -> None:
        REFRESHES.labels("ok", reason).inc()

    def failed(body: dict[str, Any], reason: str) -> None:
        REFRESHES.labels("error", reason).inc()

    def sts_call(action: str, seconds: float, error: str | None) -> None:
        STS_REQUESTS.labels(action, "error" if error else "ok").inc()
        STS_SECONDS.labels(action).observe(seconds)

    runtime.reconciler.on_refresh = refreshed
    runtime.reconciler.on_failure = failed
    runtime.identities.on_sts_call = sts_call
    runtime.kube.on_write_error = lambda path, status: KUBE_WRITE_ERRORS.labels(api_resource(path), str(status)).inc()


def api_resource(path: str) -> str:
    """``/api/v1/namespaces/ns/secrets/x`` -> ``secrets``; ``.../rdsiamcredentials/x/status`` ->
    ``rdsiamcredentials/status`` (the RBAC resource, never a name)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    parts = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(parts) > 2 and parts[0] == "namespaces":
        parts = parts[2:]
    return parts[0] + (f"/{parts[2]}" if len(parts) > 2 else "") if parts else "unknown"


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)
