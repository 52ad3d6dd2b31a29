"""The operator logs in to kube-apiserver the ways users' kubeconfigs and networks make it.

Each test runs ``rdsiam run`` as a subprocess with a kubeconfig or environment that users have (what kind
and ``aws eks update-kubeconfig`` write, a proxy, many namespaces, a throttling API server) and checks
what the user sees: the resource's Ready condition and its Secret. Each kubeconfig and each server in
front of the API server is first proven with ``kubectl``, so a failure is the operator's. The operators
watch only their test's namespaces: the session's cluster holds other tests' resources.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rdsiam.testing._fixtures_operator import leak_guard
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.operator import OperatorProcess
from rdsiam.testing.realapi import RealCluster

from ._login_helpers import (
    SECRET_WRITE,
    ConnectProxy,
    ThrottlingFrontDoor,
    b64_file,
    write_exec_plugin,
    write_kubeconfig,
)

DSN = "postgresql://app_user:$TOKEN@orders.cluster-abc123.us-east-1.rds.amazonaws.com:5432/orders?sslmode=require"
# The keys the README promises for a PostgreSQL Secret.
SECRET_KEYS = {"username", "password", "host", "port", "dbname", "dsn", "expires-at", "pgpass"}
MANAGED = "app.kubernetes.io/managed-by=rdsiam"


def credential(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"dsn": DSN}}


@pytest.fixture
def run_operator(
    kubectl: Kubectl, operator_env: dict[str, str], tmp_path: Path,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start ``rdsiam run`` with a kubeconfig of the test's (IRSA credentials from ``sts``); afterwards stop
    it and search its DEBUG log, metrics, Events and status for tokens."""
    started: list[OperatorProcess] = []

    def run(kubeconfig: str, args: Sequence[str] = (), env: dict[str, str] | None = None,
            timeout: float = 30.0) -> OperatorProcess:
        proc = OperatorProcess(kubeconfig, {**operator_env, **(env or {})}, list(args),
                               log_dir=str(tmp_path / f"op{len(started)}"))
        started.append(proc)
        return proc.start(timeout)

    yield run
    leaks = leak_guard(started, kubectl)
    assert not leaks, f"secrets leaked into: {leaks}"


def kubectl_can_list(kubectl: Kubectl, kubeconfig: str, namespace: str) -> None:
    """The kubeconfig works for the real kubectl (so a failure later is the operator's)."""
    Kubectl(kubeconfig, kubectl.binary).run("get", "namespace", namespace, "-o", "name")


def wait_ready(kubectl: Kubectl, operator: OperatorProcess, name: str, namespace: str,
               timeout: float = 20.0) -> None:
    """Ready=True with reason TokenIssued, and the Secret with the documented keys (names only are compared:
    the values hold the token)."""
    deadline = time.monotonic() + timeout
    while (cond := kubectl.condition(name, namespace)) is None or cond["status"] != "True":
        assert operator.proc is not None
        if operator.proc.poll() is not None:
            pytest.fail(f"the operator exited ({operator.proc.returncode}); log:\n{operator.log_tail(30)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{namespace}/{name} not Ready within {timeout:.0f} s (condition: {cond}); "
                        f"operator log:\n{operator.log_tail(30)}")
        time.sleep(0.1)
    assert cond["reason"] == "TokenIssued", cond
    data = kubectl.secret_data(name, namespace)
    assert data is not None, f"{namespace}/{name} is Ready but its Secret is missing"
    missing = SECRET_KEYS - set(data)
    assert not missing, f"the Secret lacks {sorted(missing)}"


def test_inline_kubeconfig_data_as_kind_writes_it(
    ns: str, run_operator: Callable[..., OperatorProcess], kubectl: Kubectl, real_cluster: RealCluster,
    tmp_path: Path,
) -> None:
    """A user with the kubeconfig `kind` (or `aws eks update-kubeconfig`, or a cloud console) wrote: the CA
    and the client certificate inline as base64 (`*-data`), no file paths."""
    assert real_cluster.client_cert is not None
    cert, key = real_cluster.client_cert
    kubeconfig = write_kubeconfig(
        tmp_path / "kind.kubeconfig",
        {"server": real_cluster.url, "certificate-authority-data": b64_file(real_cluster.ca_file)},
        {"client-certificate-data": b64_file(cert), "client-key-data": b64_file(key)})
    kubectl_can_list(kubectl, kubeconfig, ns)
    operator = run_operator(kubeconfig, args=["--namespace", ns])
    kubectl.apply(credential("inline", ns))
    wait_ready(kubectl, operator, "inline", ns)


def test_exec_credential_plugin(
    ns: str, run_operator: Callable[..., OperatorProcess], kubectl: Kubectl, real_cluster: RealCluster,
    tmp_path: Path,
) -> None:
    """A user whose kubeconfig gets its token from an exec plugin (`aws eks get-token`, `gke-gcloud-auth-plugin`,
    `kubelogin`): the operator must run the plugin and send the token it prints."""
    user, runs = write_exec_plugin(tmp_path, real_cluster.token, "client.authentication.k8s.io/v1beta1")
    kubeconfig = write_kubeconfig(
        tmp_path / "exec.kubeconfig", {"server": real_cluster.url, "certificate-authority": real_cluster.ca_file},
        user)
    kubectl_can_list(kubectl, kubeconfig, ns)
    by_kubectl = len(runs.read_text().splitlines())
    assert by_kubectl >= 1, "kubectl did not run the plugin"
    operator = run_operator(kubeconfig, args=["--namespace", ns])
    kubectl.apply(credential("exec", ns))
    wait_ready(kubectl, operator, "exec", ns)
    by_operator = runs.read_text().splitlines()[by_kubectl:]
    assert by_operator, "Ready, but the operator never ran the exec plugin"
    pid = operator.proc.pid if operator.proc else None
    print(f"exec plugin runs by the operator: {len(by_operator)} (parent pids {sorted(set(by_operator))}, "
          f"operator pid {pid})")


@pytest.fixture
def connect_proxy() -> Iterator[ConnectProxy]:
    """An HTTP CONNECT proxy that alone resolves the name ``kubernetes`` (to 127.0.0.1)."""
    with ConnectProxy(hosts={"kubernetes": "127.0.0.1"}) as proxy:
        yield proxy


def test_https_proxy_from_the_environment(
    ns: str, connect_proxy: ConnectProxy, run_operator: Callable[..., OperatorProcess], kubectl: Kubectl,
    real_cluster: RealCluster, tmp_path: Path,
) -> None:
    """A user whose cluster is reached only through a corporate proxy (`HTTPS_PROXY`): the API server's name
    resolves only at the proxy, so every connection that bypasses the proxy fails.

    A name, not 127.0.0.1, also because Go never proxies loopback addresses (kubectl); the Python clients
    (the kubernetes client, aiohttp with ``trust_env``) bypass only the hosts ``NO_PROXY`` lists, and it is
    set empty so nothing inherited interferes. ``kubernetes`` is in the serving certificate.
    """
    proxy = connect_proxy
    target = f"kubernetes:{real_cluster.url.rpartition(':')[2]}"
    cluster = {"server": f"https://{target}", "certificate-authority": real_cluster.ca_file}
    user = {"token": real_cluster.token}
    # The proxy works: kubectl through it (a kubeconfig's proxy-url).
    kubectl_can_list(kubectl, write_kubeconfig(tmp_path / "via-proxy-url.kubeconfig",
                                               {**cluster, "proxy-url": proxy.url}, user), ns)
    assert proxy.tunnels and {t.target for t in proxy.tunnels} == {target}, "kubectl went around the proxy"
    proxy.tunnels.clear()

    env = {"HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
    operator = run_operator(write_kubeconfig(tmp_path / "proxied.kubeconfig", cluster, user),
                            args=["--namespace", ns], env=env)
    kubectl.apply(credential("proxied", ns))
    wait_ready(kubectl, operator, "proxied", ns)
    tunnels = list(proxy.tunnels)
    assert tunnels, "Ready, but no connection went through the proxy"
    assert {t.target for t in tunnels} == {target}, [t.target for t in tunnels]
    assert any(t.counts[0] and t.counts[1] for t in tunnels), "the proxy relayed no bytes"
    # Who connected (aiohttp: kopf; none: urllib3, the kubernetes client), and how many stay open (watches).
    agents: dict[str, list[int]] = {}
    for t in tunnels:
        agents.setdefault(t.user_agent or "(none)", [0, 0])[t.closed is None] += 1
    print("CONNECTs by User-Agent [closed, still open]:", agents)


@pytest.fixture
def fifty_namespaces(real_cluster: RealCluster) -> Iterator[list[str]]:
    prefix = f"tenant-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i:02d}" for i in range(50)]
    for name in names:
        status, body = real_cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        assert status == 201, body
    yield names
    for name in names:
        real_cluster.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.mark.slow
def test_fifty_namespaces(
    fifty_namespaces: list[str], run_operator: Callable[..., OperatorProcess], kubectl: Kubectl,
    real_cluster: RealCluster,
) -> None:
    """A user who limits the operator to their tenants' namespaces: `--namespace` given 50 times, a resource
    in each, applied once the operator runs; all 50 become Ready (and get complete Secrets)."""
    args = [arg for name in fifty_namespaces for arg in ("--namespace", name)]
    operator = run_operator(real_cluster.kubeconfig, args=args, timeout=60.0)
    began = time.monotonic()
    kubectl.apply([credential("db", name) for name in fifty_namespaces])
    wanted = set(fifty_namespaces)
    while True:
        status, body = real_cluster.request("GET", "/apis/rdsiam.io/v1alpha1/rdsiamcredentials")
        assert status == 200, body
        ready = {item["metadata"]["namespace"] for item in body["items"]
                 if item["metadata"]["namespace"] in wanted and any(
                     (c["type"], c["status"], c.get("reason")) == ("Ready", "True", "TokenIssued")
                     for c in (item.get("status") or {}).get("conditions") or [])}
        if ready == wanted:
            break
        assert operator.proc is not None and operator.proc.poll() is None, operator.log_tail(30)
        if time.monotonic() - began > 120:
            pytest.fail(f"{len(ready)} of 50 Ready after 120 s; operator log:\n{operator.log_tail(30)}")
        time.sleep(0.5)
    elapsed = time.monotonic() - began
    status, body = real_cluster.request("GET", f"/api/v1/secrets?labelSelector={MANAGED}")
    assert status == 200
    complete = {s["metadata"]["namespace"] for s in body["items"]
                if s["metadata"]["namespace"] in wanted and SECRET_KEYS <= set(s.get("data") or {})}
    del body  # it holds the tokens
    assert complete == wanted, f"{len(wanted - complete)} namespaces lack a complete Secret"
    print(f"50 namespaces: all Ready {elapsed:.1f} s after kubectl apply")


@pytest.fixture
def throttling_door(real_cluster: RealCluster) -> Iterator[ThrottlingFrontDoor]:
    """A front door to the API server (its own certificate) answering the first three Secret writes 429."""
    assert real_cluster.directory is not None
    pki = real_cluster.directory / "pki"
    certificate = (pki / "apiserver.crt", pki / "apiserver.key")
    with ThrottlingFrontDoor(real_cluster.url, real_cluster.ssl_context(), certificate, limit=3, retry_after=2) as door:
        yield door


@pytest.mark.slow
def test_429_with_retry_after_is_honoured(
    ns: str, throttling_door: ThrottlingFrontDoor, run_operator: Callable[..., OperatorProcess], kubectl: Kubectl,
    real_cluster: RealCluster, tmp_path: Path,
) -> None:
    """A user on a busy cluster whose API Priority and Fairness answers `429 Too Many Requests` with
    `Retry-After: 2` to the first three Secret writes: the operator waits as told each time, the resource ends
    Ready, and `kubectl describe` shows at most one Warning, not one per 429."""
    door = throttling_door
    kubeconfig = write_kubeconfig(tmp_path / "door.kubeconfig",
                                  {"server": door.url, "certificate-authority": real_cluster.ca_file},
                                  {"token": real_cluster.token})
    kubectl_can_list(kubectl, kubeconfig, ns)
    operator = run_operator(kubeconfig, args=["--namespace", ns])
    kubectl.apply(credential("throttled", ns))
    wait_ready(kubectl, operator, "throttled", ns, timeout=30.0)
    writes = [e for e in door.exchanges if e.method in ("POST", "PUT", "PATCH") and SECRET_WRITE.fullmatch(e.path)]
    summary = [(e.method, e.status, round(e.at - writes[0].at, 2)) for e in writes]  # seconds after the first
    assert [e.status for e in writes[:3]] == [429] * 3 and len(writes) > 3, summary
    assert writes[3].at - writes[0].at >= 1.9, f"a Secret write reached the API server too soon after a 429: {summary}"
    # Each attempt waited as the 429 before it told.
    gaps = [b.at - a.at for a, b in zip(writes, writes[1:], strict=False) if a.status == 429]
    assert min(gaps) >= 1.9, f"a write came sooner than Retry-After (method, status, seconds): {summary}"
    time.sleep(1.0)  # time for a late Warning to show up, if there were one
    warnings = [e for e in kubectl.list("events", ns) if e.get("type") == "Warning"
                and (e.get("involvedObject") or e.get("regarding") or {}).get("name") == "throttled"]
    # An Event repeated is one object with a count (kubectl describe: "x3 over 6s"): count occurrences.
    occurrences = sum(max(e.get("count") or 0, (e.get("series") or {}).get("count") or 0, 1) for e in warnings)
    assert occurrences <= 1, [(e.get("reason"), e.get("message"), e.get("count")) for e in warnings]
    print(f"Secret writes (method, status, seconds after the first): {summary}; Warnings: {occurrences}")
