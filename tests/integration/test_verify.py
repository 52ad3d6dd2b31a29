"""``spec.verify``: after each issue the operator logs in once with the token and reports a ``Connected``
condition whose message says what to check; a failure also posts a Warning Event. End to end through
the operator and kubectl against the IAM-checking PostgreSQL and MySQL front doors and a real MariaDB
(tokens are searched for in the operator's log, Events and status by the ``operator_factory`` fixture at
teardown)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.mysql import MariaDBServer
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.rds_mysql import IamMySQL

GOOD, NO_IAM, UNKNOWN = "rdsiam_verify_ok", "rdsiam_verify_pw", "rdsiam_verify_nobody"
OTHER_ENDPOINT = "orders.cluster-zzz999.us-east-1.rds.amazonaws.com"


@pytest.fixture(scope="module")
def users(postgres: PostgresServer) -> None:
    postgres.create_user(GOOD)
    postgres.create_user(NO_IAM, rds_iam=False)
    postgres.drop_user(UNKNOWN)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


@pytest.fixture
def plain_mysql_port() -> Iterator[int]:
    """A server that greets like MySQL but offers no TLS (no CLIENT_SSL), then hangs up."""
    from rdsiam import _mysqlwire
    from tests.integration.test_verify_probe_mysql import greeting

    class Plain(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(_mysqlwire.packet(0, greeting(_mysqlwire.NEEDED | _mysqlwire.CLIENT_CONNECT_WITH_DB)))
            self.request.settimeout(2)
            with contextlib.suppress(OSError):
                self.request.recv(4096)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Plain) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield int(server.server_address[1])
        server.shutdown()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resource(name: str, ns: str, dsn: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rdsiam.io/v1alpha1",
        "kind": "RdsIamCredential",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"dsn": dsn, "verify": True, **spec},
    }


def rds_dsn(rds: IamPostgres, user: str, *, port: int | None = None, query: str | None = None) -> str:
    query = query or f"sslmode=verify-full&sslrootcert={rds.ca_file}&hostaddr={rds.hostaddr}"
    return f"postgresql://{user}:$TOKEN@{rds.endpoint}:{port or rds.port}/postgres?{query}"


def wait_condition(
    kubectl: Kubectl,
    name: str,
    ns: str,
    type_: str = "Connected",
    check: Callable[[dict[str, Any]], bool] = lambda c: True,
    timeout: float = 20.0,
) -> dict[str, Any]:
    return kubectl.wait(
        f"{type_} on {name}",
        lambda: (c := kubectl.condition(name, ns, type_)) and check(c) and c,
        timeout=timeout,
        interval=0.1,
    )


def warnings(kubectl: Kubectl, ns: str) -> dict[str, str]:
    """The reason of the Warning Events, by resource name."""
    events = json.loads(kubectl.run("get", "events", "-n", ns, "-o", "json"))["items"]
    return {e["involvedObject"]["name"]: e["reason"] for e in events if e.get("type") == "Warning"}


def test_connected_condition_explains_each_outcome(
    kubectl: Kubectl,
    rds: IamPostgres,
    operator_factory: Callable[..., Any],
    ns: str,
    users: None,
    silent_port: int,
    closed_port: int,
) -> None:
    operator_factory(args=["--verify-timeout", "1"])
    cases: dict[str, tuple[dict[str, Any], str, list[str]]] = {
        "good": (
            resource("good", ns, rds_dsn(rds, GOOD)),
            "Connected",
            [f"Logged in as {GOOD} to {rds.endpoint}:{rds.port}/postgres", "over TLS", "SELECT 1 took"],
        ),
        "no-rds-iam": (
            resource("no-rds-iam", ns, rds_dsn(rds, NO_IAM)),
            "LoginRejected",
            [
                f"did not treat '{NO_IAM}' as an IAM user",
                "SCRAM-SHA-256",
                f'GRANT rds_iam TO "{NO_IAM}"',
                "does not exist",
            ],
        ),
        "unknown-user": (
            resource("unknown-user", ns, rds_dsn(rds, UNKNOWN)),
            "LoginRejected",
            [f'CREATE USER "{UNKNOWN}"', f'GRANT rds_iam TO "{UNKNOWN}"', "spec.username"],
        ),
        "no-tls": (
            resource("no-tls", ns, rds_dsn(rds, GOOD, query="sslmode=disable&hostaddr=127.0.0.1")),
            "TLSRequired",
            ["no encryption", "the DSN sets sslmode=disable", "set sslmode=require"],
        ),
        "wrong-signing-host": (
            resource("wrong-signing-host", ns, rds_dsn(rds, GOOD), signingHost=OTHER_ENDPOINT),
            "LoginRejected",
            [
                f'PAM authentication failed for user "{GOOD}"',
                f"(1) the token is signed for {OTHER_ENDPOINT}:{rds.port} (spec.signingHost",
                "rds-db:connect",
            ],
        ),
        "refused": (
            resource("refused", ns, rds_dsn(rds, GOOD, port=closed_port, query="sslmode=require&hostaddr=127.0.0.1")),
            "ConnectionRefused",
            [f"127.0.0.1:{closed_port} refused the connection", "spec.port"],
        ),
        "dns": (
            resource("dns", ns, f"postgresql://{GOOD}@db.invalid:5432/postgres?sslmode=require", region="us-east-1"),
            "DNSError",
            ["cannot resolve 'db.invalid'", "spec.host"],
        ),
        "timeout": (
            resource("timeout", ns, rds_dsn(rds, GOOD, port=silent_port, query="sslmode=require&hostaddr=127.0.0.1")),
            "ConnectTimeout",
            ["no answer to the TLS request within 1 s", "not a PostgreSQL server"],
        ),
    }
    quiet = resource("quiet", ns, rds_dsn(rds, GOOD))
    del quiet["spec"]["verify"]
    kubectl.apply([c[0] for c in cases.values()] + [quiet])

    for name, (_, reason, fragments) in cases.items():
        cond = wait_condition(kubectl, name, ns)
        assert cond["reason"] == reason, (name, cond)
        assert cond["status"] == ("True" if name == "good" else "False")
        for fragment in fragments:
            assert fragment in cond["message"], (name, fragment, cond["message"])
        ready = kubectl.condition(name, ns)  # the token itself was issued either way
        assert ready is not None and (ready["status"], ready["reason"]) == ("True", "TokenIssued")

    # Each failure is also a Warning Event naming the reason; the good one is not.
    seen = kubectl.wait("Warning Events", lambda: (w := warnings(kubectl, ns)) and len(w) >= len(cases) - 1 and w)
    assert seen == {name: reason for name, (_, reason, _) in cases.items() if name != "good"}

    text = kubectl.describe("rdsiamcredential", "wrong-signing-host", ns)
    assert "Connected" in text and "LoginRejected" in text
    assert kubectl.condition("quiet", ns, "Connected") is None
    wait_condition(kubectl, "quiet", ns, "Ready", lambda c: c["status"] == "True")
    assert rds.login_log  # the good case really logged in through the IAM check
    assert any(a.user == GOOD and a.accepted and a.method == "iam" for a in rds.login_log)


def test_fixing_the_cause_turns_connected_true_and_switching_verify_off_removes_it(
    kubectl: Kubectl,
    rds: IamPostgres,
    postgres: PostgresServer,
    operator_factory: Callable[..., Any],
    ns: str,
    users: None,
) -> None:
    user = "rdsiam_verify_later"
    postgres.create_user(user, rds_iam=False)
    operator_factory()
    kubectl.apply(resource("later", ns, rds_dsn(rds, user)))
    cond = wait_condition(kubectl, "later", ns)
    assert (cond["status"], cond["reason"]) == ("False", "LoginRejected")
    postgres.create_user(user, rds_iam=True)  # GRANT rds_iam, as the message said
    time.sleep(1.1)  # the request must be later than the last issue (one-second resolution)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kubectl.run(
        "annotate", "-n", ns, "rdsiamcredential", "later", f"rdsiam.io/refresh-requested-at={stamp}", "--overwrite"
    )
    cond = wait_condition(kubectl, "later", ns, check=lambda c: c["status"] == "True")
    assert cond["reason"] == "Connected"
    kubectl.run("patch", "rdsiamcredential", "later", "-n", ns, "--type", "merge", "-p", '{"spec": {"verify": false}}')
    kubectl.wait("Connected removed", lambda: kubectl.condition("later", ns, "Connected") is None, timeout=20)


def test_a_server_whose_certificate_cannot_be_checked_gets_no_token(
    kubectl: Kubectl, rds: IamPostgres, postgres: PostgresServer, operator_factory: Callable[..., Any], ns: str,
) -> None:
    """The DSN asks for verify-full with the app's CA path, which the operator's pod cannot read: without
    --verify-ca-file the operator does not log in at all (no token to an unchecked server)."""
    user = "rdsiam_verify_noca"
    postgres.create_user(user)
    operator_factory()
    # verify-full, and require with a root certificate (libpq then checks the CA: verify-ca)
    for name, mode in (("noca", "verify-full"), ("noca-require", "require")):
        query = f"sslmode={mode}&sslrootcert=/nonexistent/app/global-bundle.pem&hostaddr={rds.hostaddr}"
        kubectl.apply(resource(name, ns, rds_dsn(rds, user, query=query)))
    for name in ("noca", "noca-require"):
        cond = wait_condition(kubectl, name, ns)
        assert (cond["status"], cond["reason"]) == ("Unknown", "CertificateNotVerifiable"), cond
        assert "/nonexistent/app/global-bundle.pem" in cond["message"] and "--verify-ca-file" in cond["message"]
    assert not [a for a in rds.login_log if a.user == user]  # nothing was sent


def test_the_operators_ca_bundle_checks_the_server_when_the_apps_path_is_not_readable(
    kubectl: Kubectl, rds: IamPostgres, postgres: PostgresServer, operator_factory: Callable[..., Any], ns: str,
) -> None:
    user = "rdsiam_verify_withca"
    postgres.create_user(user)
    operator_factory(args=["--verify-ca-file", str(rds.ca_file)])
    query = f"sslmode=verify-full&sslrootcert=/nonexistent/app/global-bundle.pem&hostaddr={rds.hostaddr}"
    kubectl.apply(resource("withca", ns, rds_dsn(rds, user, query=query)))
    cond = wait_condition(kubectl, "withca", ns)
    assert (cond["status"], cond["reason"]) == ("True", "Connected"), cond
    assert f"checked against the operator's CA bundle {rds.ca_file}" in cond["message"]
    assert any(a.user == user and a.accepted for a in rds.login_log)


def test_connected_reports_how_long_the_login_took(
    kubectl: Kubectl, rds: IamPostgres, operator_factory: Callable[..., Any], ns: str, users: None
) -> None:
    """The Connected message reports how long the login and SELECT 1 took, in whole milliseconds (how
    long it should take is not a test's business: speed is measured in benchmarks/)."""
    operator_factory()
    kubectl.apply([resource(f"lat{i}", ns, rds_dsn(rds, GOOD)) for i in range(5)])
    for i in range(5):
        cond = wait_condition(kubectl, f"lat{i}", ns)
        assert cond["status"] == "True", cond
        assert re.search(r"; login and SELECT 1 took [0-9]+ ms\.", cond["message"]), cond["message"]


MY_GOOD, MY_GONE, MY_DB = "rdsiam_verify_my", "rdsiam_verify_my_gone", "rdsiam_verify_db"
MY_PW, MY_OPEN = "rdsiam_verify_my_pw", "rdsiam_verify_open"  # MariaDB's own users: a password, none


@pytest.fixture(scope="module")
def mysql_users(rds_mysql: IamMySQL, mariadb: MariaDBServer) -> None:
    rds_mysql.create_user(MY_GOOD, database=MY_DB)
    rds_mysql.create_user(MY_GONE, database="rdsiam_verify_gone")
    mariadb.execute("DROP DATABASE `rdsiam_verify_gone`")  # the grant stays: 1049 Unknown database
    mariadb.create_user(MY_PW, "a-real-password", database=MY_DB)  # a password user, not IAM
    mariadb.create_user(MY_OPEN, "", database=MY_DB)  # no password at all


def mysql_dsn(host: str, port: int, user: str, db: str = MY_DB, query: str = "") -> str:
    return f"mysql://{user}:$TOKEN@{host}:{port}/{db}?{query}&hostaddr=127.0.0.1"


def test_mysql_connected_condition_explains_each_outcome(
    kubectl: Kubectl,
    rds_mysql: IamMySQL,
    mariadb: MariaDBServer,
    operator_factory: Callable[..., Any],
    ns: str,
    mysql_users: None,
    silent_port: int,
    closed_port: int,
    plain_mysql_port: int,
) -> None:
    operator_factory(args=["--verify-timeout", "1"])
    at, port = rds_mysql.endpoint, rds_mysql.port
    verified = f"ssl-mode=VERIFY_IDENTITY&ssl-ca={rds_mysql.ca_file}"
    cases: dict[str, tuple[dict[str, Any], str, list[str]]] = {
        "my-good": (
            resource("my-good", ns, mysql_dsn(at, port, MY_GOOD, query=verified)),
            "Connected",
            [f"Logged in as {MY_GOOD} to {at}:{port}/{MY_DB} (10.", "MariaDB", "over TLS", "SELECT 1 took"],
        ),
        "my-signing-host": (
            resource("my-signing-host", ns, mysql_dsn(at, port, MY_GOOD, query=verified), signingHost=OTHER_ENDPOINT),
            "LoginRejected",
            [
                f"ERROR 1045 (28000): Access denied for user '{MY_GOOD}'",
                f"(1) the token is signed for {OTHER_ENDPOINT}:{port} (spec.signingHost",
                "rds-db:connect",
                "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'",
            ],
        ),
        "my-no-tls": (
            resource("my-no-tls", ns, mysql_dsn(at, port, MY_GOOD, query="ssl-mode=DISABLED")),
            "TLSRequired",
            ["the token was not sent", "the DSN sets ssl-mode=DISABLED", "set ssl-mode=REQUIRED"],
        ),
        "my-tls-refused": (  # the DSN asks for TLS, the server offers none
            resource("my-tls-refused", ns, mysql_dsn(at, plain_mysql_port, MY_GOOD, query="ssl-mode=REQUIRED")),
            "TLSRequired",
            [f"{at}:{plain_mysql_port}", "the server does not support TLS (ssl-mode=REQUIRED)",
             "terminates or strips TLS"],
        ),
        "my-wrong-ca": (  # the server's certificate is not signed by the CA the DSN names
            resource("my-wrong-ca", ns, mysql_dsn(at, port, MY_GOOD,
                                                  query=f"ssl-mode=VERIFY_IDENTITY&ssl-ca={mariadb.ca_file}")),
            "TLSError",
            [f"TLS to {at}:{port}", "failed", "certificate verify failed", "must be the RDS CA bundle"],
        ),
        "my-unknown-db": (
            resource("my-unknown-db", ns, mysql_dsn(at, port, MY_GONE, "rdsiam_verify_gone", verified)),
            "LoginRejected",
            [f"The IAM login as '{MY_GONE}' worked", "ERROR 1049 (42000): Unknown database", "spec.database"],
        ),
        "my-not-iam": (
            resource("my-not-iam", ns, mysql_dsn("localhost", mariadb.port, MY_PW,
                                                 query=f"ssl-mode=VERIFY_IDENTITY&ssl-ca={mariadb.ca_file}"),
                     region="us-east-1"),
            "LoginRejected",
            [f"did not treat '{MY_PW}' as an IAM user", "(using password: NO)",
             f"CREATE USER '{MY_PW}'@'%' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'"],
        ),
        "my-open": (  # a MariaDB user without a password: in, but the token was never asked for
            resource("my-open", ns, mysql_dsn("localhost", mariadb.port, MY_OPEN,
                                              query=f"ssl-mode=VERIFY_IDENTITY&ssl-ca={mariadb.ca_file}"),
                     region="us-east-1"),
            "Connected",
            [f"Logged in as {MY_OPEN} to localhost:{mariadb.port}/{MY_DB}", "over TLS",
             f"The server never asked for the token (mysql_native_password): '{MY_OPEN}' logs in without a password"],
        ),
        "my-refused": (
            resource("my-refused", ns, mysql_dsn(at, closed_port, MY_GOOD, query="ssl-mode=REQUIRED")),
            "ConnectionRefused",
            [f"127.0.0.1:{closed_port} refused the connection", "RDS MySQL defaults to 3306"],
        ),
        "my-dns": (
            resource("my-dns", ns, f"mysql://{MY_GOOD}@db.invalid:3306/{MY_DB}?ssl-mode=REQUIRED", region="us-east-1"),
            "DNSError",
            ["cannot resolve 'db.invalid'", "spec.host"],
        ),
        "my-timeout": (
            resource("my-timeout", ns, mysql_dsn(at, silent_port, MY_GOOD, query="ssl-mode=REQUIRED")),
            "ConnectTimeout",
            ["the server did not answer within 1 s (startup)", "is not a MySQL server"],
        ),
    }
    no_ca = "ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem"  # the app's path, not in the operator's pod
    noca = resource("my-noca", ns, mysql_dsn(at, port, MY_GOOD, query=no_ca))
    before = len(rds_mysql.login_log)
    kubectl.apply([c[0] for c in cases.values()] + [noca])

    for name, (_, reason, fragments) in cases.items():
        cond = wait_condition(kubectl, name, ns)
        assert cond["reason"] == reason, (name, cond)
        assert cond["status"] == ("True" if reason == "Connected" else "False")
        for fragment in fragments:
            assert fragment in cond["message"], (name, fragment, cond["message"])
        ready = kubectl.condition(name, ns)
        assert ready is not None and (ready["status"], ready["reason"]) == ("True", "TokenIssued")
    cond = wait_condition(kubectl, "my-noca", ns)
    assert (cond["status"], cond["reason"]) == ("Unknown", "CertificateNotVerifiable"), cond
    assert "ssl-mode=VERIFY_IDENTITY, ssl-ca /nonexistent/ca.pem" in cond["message"]
    failing = {name: reason for name, (_, reason, _) in cases.items() if reason != "Connected"}
    seen = kubectl.wait("Warning Events", lambda: (w := warnings(kubectl, ns)) and len(w) >= len(failing) and w)
    assert seen == failing
    # Unknown is in the condition only: no Warning Event (it would be posted before the TokenIssued one).
    kubectl.wait("my-noca's TokenIssued Event",
                 lambda: "TokenIssued" in kubectl.describe("rdsiamcredential", "my-noca", ns).split("Events:")[-1])
    assert "my-noca" not in warnings(kubectl, ns)
    assert "LoginRejected" in kubectl.describe("rdsiamcredential", "my-signing-host", ns)
    logins = rds_mysql.login_log[before:]
    assert any(a.user == MY_GOOD and a.accepted and a.tls for a in logins)  # through the IAM check
    assert not any(a.tls is False and a.reason != "client_closed" for a in logins)  # never a token in clear
