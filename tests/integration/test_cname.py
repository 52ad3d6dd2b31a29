"""``spec.resolveCNAME``: follow the host's CNAME chain to the RDS endpoint, sign for that, keep dialling the
given host, re-resolve on each refresh and report the endpoint in ``status.endpoint``. The operator asks a
DNS server on loopback that the test controls (``RDSIAM_DNS_SERVER``); no global resolver is touched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from rdsiam._check import parse_token
from rdsiam.operator.verify import EndpointNotResolved, make_resolver
from rdsiam.testing.dns import DnsServer
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres

USER = "rdsiam_cname_app"
OTHER_ENDPOINT = "orders.cluster-zzz999.us-east-1.rds.amazonaws.com"


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def dns(dns_server: DnsServer, rds: IamPostgres) -> Iterator[DnsServer]:
    dns_server.clear()
    dns_server.a(rds.endpoint, rds.hostaddr)
    yield dns_server
    dns_server.clear()


@pytest.fixture(scope="module")
def user(postgres: PostgresServer) -> str:
    return postgres.create_user(USER)


@pytest.fixture
def operator(operator_factory: Callable[..., Any], dns: DnsServer) -> Any:
    return operator_factory(env={"RDSIAM_DNS_SERVER": dns.address})


def resource(rds: IamPostgres, name: str, ns: str, host: str, **spec: Any) -> dict[str, Any]:
    dsn = (
        f"postgresql://{USER}@{host}:{rds.port}/postgres?sslmode=verify-ca&sslrootcert={rds.ca_file}"
        f"&hostaddr={rds.hostaddr}"
    )  # verify-ca: the certificate names the RDS endpoint, not the CNAME
    return {
        "apiVersion": "rdsiam.io/v1alpha1",
        "kind": "RdsIamCredential",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"dsn": dsn, "resolveCNAME": True, **spec},
    }


def status(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return dict(((kubectl.get("rdsiamcredential", name, ns) or {}).get("status")) or {})


def request_refresh(kubectl: Kubectl, name: str, ns: str) -> None:
    time.sleep(1.1)  # later than the last issue (one-second resolution)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kubectl.run(
        "annotate", "-n", ns, "rdsiamcredential", name, f"rdsiam.io/refresh-requested-at={stamp}", "--overwrite"
    )


def connected(kubectl: Kubectl, name: str, ns: str, state: str) -> dict[str, Any]:
    return kubectl.wait(
        f"Connected={state}",
        lambda: (c := kubectl.condition(name, ns, "Connected")) and c["status"] == state and c,
        timeout=20,
    )


@pytest.mark.slow  # three refreshes, each requested a second after the last
def test_signs_for_the_endpoint_behind_the_cname_and_follows_it(
    kubectl: Kubectl,
    rds: IamPostgres,
    dns: DnsServer,
    operator: Any,
    ns: str,
    user: str,
) -> None:
    dns.cname("db.internal.example", "alias.internal.example")
    dns.cname("alias.internal.example", rds.endpoint)
    kubectl.apply(resource(rds, "orders", ns, "db.internal.example", verify=True))

    cond = connected(kubectl, "orders", ns, "True")
    assert f"with the token signed for {rds.endpoint}:{rds.port}" in cond["message"]
    assert status(kubectl, "orders", ns)["endpoint"] == f"{rds.endpoint}:{rds.port}"
    data = kubectl.secret_data("orders", ns)
    assert data is not None  # (the data itself is never in an assertion: it holds the token)
    assert data["host"] == "db.internal.example"  # clients keep dialling the CNAME
    token = parse_token(data["password"])
    assert token is not None and (token.host, token.port, token.region) == (rds.endpoint, rds.port, rds.region)
    with psycopg.connect(data["dsn"], connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (USER,)
    assert rds.login_log[-1].accepted and rds.login_log[-1].user == USER
    assert ("db.internal.example", "CNAME") in dns.queries and ("alias.internal.example", "CNAME") in dns.queries

    # The CNAME now points elsewhere: the next refresh signs for the new target.
    dns.cname("alias.internal.example", OTHER_ENDPOINT)
    request_refresh(kubectl, "orders", ns)
    kubectl.wait(
        "status.endpoint to follow",
        lambda: status(kubectl, "orders", ns).get("endpoint") == f"{OTHER_ENDPOINT}:{rds.port}",
        timeout=20,
    )
    data = kubectl.secret_data("orders", ns)
    assert data is not None
    token = parse_token(data["password"])  # what the token says about itself: nothing secret
    assert token is not None and token.host == OTHER_ENDPOINT
    cond = connected(kubectl, "orders", ns, "False")  # this local server is not that endpoint
    assert cond["reason"] == "LoginRejected"
    assert f"signed for {OTHER_ENDPOINT}:{rds.port} (spec.signingHost/resolveCNAME)" in cond["message"]

    dns.cname("alias.internal.example", rds.endpoint)
    request_refresh(kubectl, "orders", ns)
    connected(kubectl, "orders", ns, "True")
    assert status(kubectl, "orders", ns)["endpoint"] == f"{rds.endpoint}:{rds.port}"


@pytest.mark.slow  # waits for the operator's retry with backoff (about 5 s)
def test_no_rds_endpoint_behind_the_host_is_a_clear_failure_and_is_retried(
    kubectl: Kubectl,
    rds: IamPostgres,
    dns: DnsServer,
    operator: Any,
    ns: str,
    user: str,
) -> None:
    dns.a("plain.internal.example", "127.0.0.1")  # not a CNAME (an A record, or a Route 53 alias)
    dns.cname("web.internal.example", "www.example.com")
    dns.a("www.example.com", "127.0.0.1")
    kubectl.apply(
        [
            resource(rds, "plain", ns, "plain.internal.example"),
            resource(rds, "plain-region", ns, "plain.internal.example", region="us-east-1"),
            resource(rds, "web", ns, "web.internal.example"),
            resource(rds, "missing", ns, "missing.internal.example"),
        ]
    )

    def failed(name: str) -> dict[str, Any]:
        return kubectl.wait(
            f"{name} not ready",
            lambda: (c := kubectl.condition(name, ns)) and c["reason"] == "EndpointNotResolved" and c,
            timeout=20,
        )

    for name in ("plain", "plain-region"):  # a region does not make the operator sign for the CNAME itself
        cond = failed(name)
        assert cond["status"] == "False"
        assert "plain.internal.example is not a CNAME" in cond["message"]
        assert "does not sign a token for it" in cond["message"] and "spec.signingHost" in cond["message"]
    assert "web.internal.example -> www.example.com reaches no RDS endpoint" in failed("web")["message"]
    assert "missing.internal.example does not exist in DNS (NXDOMAIN)" in failed("missing")["message"]
    for name in ("plain", "plain-region", "web", "missing"):
        assert kubectl.get("secret", name, ns) is None
    events = kubectl.run("get", "events", "-n", ns, "--field-selector", "involvedObject.name=plain")
    assert "EndpointNotResolved" in events and "Warning" in events

    # Fix DNS only: the operator retries on its own and signs for the endpoint.
    dns.cname("plain.internal.example", rds.endpoint)
    kubectl.wait("plain ready", lambda: (c := kubectl.condition("plain", ns)) and c["status"] == "True", timeout=30)
    assert status(kubectl, "plain", ns)["endpoint"] == f"{rds.endpoint}:{rds.port}"
    data = kubectl.secret_data("plain", ns)
    assert data is not None
    with psycopg.connect(data["dsn"], connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.slow  # one DNS lookup times out (3 s)
def test_dns_outage_is_reported_and_retried(
    kubectl: Kubectl,
    rds: IamPostgres,
    dns: DnsServer,
    operator: Any,
    ns: str,
    user: str,
) -> None:
    dns.cname("db.internal.example", rds.endpoint)
    dns.drop = True
    kubectl.apply(resource(rds, "outage", ns, "db.internal.example"))
    cond = kubectl.wait(
        "EndpointNotResolved",
        lambda: (c := kubectl.condition("outage", ns)) and c["reason"] == "EndpointNotResolved" and c,
        timeout=20,
    )
    assert "looking up the CNAME of db.internal.example failed (no answer within 3 s)" in cond["message"]
    dns.drop = False
    kubectl.wait("ready", lambda: (c := kubectl.condition("outage", ns)) and c["status"] == "True", timeout=30)


def test_an_rds_endpoint_needs_no_lookup(
    kubectl: Kubectl,
    rds: IamPostgres,
    dns: DnsServer,
    operator: Any,
    ns: str,
    user: str,
) -> None:
    kubectl.apply(resource(rds, "direct", ns, rds.endpoint))
    kubectl.wait("ready", lambda: (c := kubectl.condition("direct", ns)) and c["status"] == "True")
    assert status(kubectl, "direct", ns)["endpoint"] == f"{rds.endpoint}:{rds.port}"
    assert not any(name == rds.endpoint for name, _ in dns.queries)


def test_a_two_hop_chain_resolves_with_two_queries(dns: DnsServer, rds: IamPostgres) -> None:
    """A two-hop chain resolves to the endpoint with one CNAME query per hop, every time (nothing cached
    across refreshes, the endpoint itself never asked); a name with no record is refused."""
    dns.cname("db.internal.example", "alias.internal.example")
    dns.cname("alias.internal.example", rds.endpoint)
    resolve = make_resolver(dns.address)

    async def run() -> list[str | None]:
        found = [await resolve("db.internal.example") for _ in range(20)]
        with pytest.raises(EndpointNotResolved):
            await resolve("nothing.internal.example")
        return found

    assert asyncio.run(run()) == [rds.endpoint] * 20
    chain = [("db.internal.example", "CNAME"), ("alias.internal.example", "CNAME")]
    assert dns.queries == chain * 20 + [("nothing.internal.example", "CNAME")]
