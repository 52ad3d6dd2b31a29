"""Identity modes end to end on the local stack: operator identity, assumed role (with chains), and
the resource's own ServiceAccount; what users see when a ServiceAccount is missing, unannotated, or
its role's trust policy (or AWS) says no.

Each test checks the token the way RDS would: the IAM-checking PostgreSQL lets the DSN from the
Secret in, and the access key that signed it belongs to the expected role session according to the
STS server's own records (``sts.lookup(akid).arn``), which is also what ``status.identity`` shows.

moto evaluates no trust policy, so :class:`TrustingSts` (a proxy in front of it) does what AWS does
for AssumeRoleWithWebIdentity on roles whose trust policy names the emulator's OIDC issuer: verify
the ServiceAccount token's signature, issuer and audience, and its ``sub`` against the policy.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

import psycopg
import pytest

from rdsiam.testing._fixtures_operator import _SEEN_TEXTS, _SEEN_TOKENS, _namespace_tokens, _public_texts
from rdsiam.testing.faults import error_xml
from rdsiam.testing.kubectl import Kubectl
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture

ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"


# ---- helpers shared by the identity test modules -------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def access_key_of(token: str) -> str:
    """The access key id in a token's X-Amz-Credential (the token itself is never printed)."""
    query = dict(parse_qsl(token.split("?", 1)[1]))
    return unquote(query["X-Amz-Credential"]).split("/", 1)[0]


def wait_secret(kubectl: Kubectl, name: str, ns: str, timeout: float = 10.0) -> dict[str, str]:
    return kubectl.wait(f"Secret {ns}/{name}", lambda: kubectl.secret_data(name, ns), timeout=timeout, interval=0.05)


def wait_reason(kubectl: Kubectl, name: str, ns: str, reason: str, timeout: float = 10.0) -> dict[str, Any]:
    return kubectl.wait(
        f"{ns}/{name} Ready reason {reason}",
        lambda: (c := kubectl.condition(name, ns)) and c["reason"] == reason and c,
        timeout=timeout,
        interval=0.1,
    )


def warning_events(kubectl: Kubectl, name: str, ns: str, reason: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        events = json.loads(
            kubectl.run("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json")
        )["items"]
        return [e for e in events if e.get("type") == "Warning" and e.get("reason") == reason]

    return kubectl.wait(f"a Warning {reason} Event for {ns}/{name}", found, timeout=timeout, interval=0.1)


def login_with(rds: Any, data: dict[str, str]) -> Any:
    """Log in with the Secret's DSN as an app would; return the front door's record of it."""
    with psycopg.connect(data["dsn"], connect_timeout=5, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (data["username"],)
    attempt = rds.login_log[-1]
    assert attempt.accepted and attempt.method == "iam"
    own_key = attempt.access_key_id == access_key_of(data["password"])  # out of the assertion: no token shown
    assert own_key, "the database saw another access key than the token's"
    return attempt


def assert_signed_by(sts: Any, rds: Any, kubectl: Kubectl, name: str, ns: str, data: dict[str, str], arn: str) -> None:
    """The DB let the token in, its key is a session of ``arn``, and status/Secret say so (never keys)."""
    attempt = login_with(rds, data)
    issued = sts.lookup(attempt.access_key_id)
    assert issued is not None and issued.arn == arn
    assert attempt.principal_arn == arn
    obj = kubectl.get("rdsiamcredential", name, ns)
    assert obj is not None and obj["status"]["identity"] == arn
    secret = kubectl.get("secret", obj["status"]["secretName"], ns)
    assert secret is not None  # the Secret itself is never in an assertion: it holds the token
    assert secret["metadata"]["annotations"]["rdsiam.io/identity"] == arn
    shown = json.dumps(obj) + kubectl.describe("rdsiamcredential", name, ns)
    # Booleans only: a failure must not print the secret key or the session token (part of the token).
    keys_shown = issued.secret_access_key in shown or (issued.session_token or "-") in shown
    assert not keys_shown, "status or describe shows the session's secret key or token"
    assert attempt.access_key_id not in shown


def assumed(sts: Any, role_arn: str, session: str) -> str:
    return f"arn:aws:sts::{sts.account_id}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/{session}"


def create_service_account(kubectl: Kubectl, ns: str, name: str, role_arn: str | None) -> None:
    annotations = {ROLE_ANNOTATION: role_arn} if role_arn else {}
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        }
    )


def oidc_provider(issuer: str) -> str:
    return issuer.split("://", 1)[-1].rstrip("/")


def irsa_trust_policy(sts: Any, issuer: str, ns: str, sa: str) -> dict[str, Any]:
    """The trust policy EKS docs give for an IRSA role: this cluster's issuer, this ServiceAccount only."""
    provider = oidc_provider(issuer)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": f"arn:aws:iam::{sts.account_id}:oidc-provider/{provider}"},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{provider}:sub": f"system:serviceaccount:{ns}:{sa}",
                        f"{provider}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }


class TrustingSts:
    """A proxy in front of the STS server that evaluates IRSA trust policies, as AWS does.

    For ``AssumeRoleWithWebIdentity`` on a role whose trust policy federates the emulator's issuer:
    the token must verify (signature, issuer, audience ``sts.amazonaws.com``) and every
    ``StringEquals`` condition on ``ISSUER:sub``/``ISSUER:aud`` must hold; otherwise 403
    ``AccessDenied``, the answer AWS gives. Everything else is forwarded untouched.
    """

    def __init__(self, upstream: str, kube: Any, sts: Any) -> None:
        self.upstream = upstream.rstrip("/")
        self.kube, self.sts = kube, sts
        self.provider = oidc_provider(kube.issuer)
        self.decisions: list[tuple[str, str | None, bool]] = []  # (role, sub, allowed)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                params = dict(parse_qsl(body.decode()))
                if params.get("Action") == "AssumeRoleWithWebIdentity" and not proxy.allows(params):
                    self.reply(
                        403,
                        error_xml("AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"),
                        "text/xml",
                    )
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(proxy.upstream + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        self.reply(answer.status, answer.read(), answer.headers.get("Content-Type", "text/xml"))
                except urllib.error.HTTPError as err:
                    self.reply(err.code, err.read(), err.headers.get("Content-Type", "text/xml"))

            def reply(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="trusting-sts", daemon=True)

    def allows(self, params: dict[str, str]) -> bool:
        role_arn = params.get("RoleArn", "")
        iam = self.sts._client("iam")
        try:
            policy = iam.get_role(RoleName=role_arn.rsplit("/", 1)[-1])["Role"]["AssumeRolePolicyDocument"]
        except iam.exceptions.NoSuchEntityException:
            return True  # moto allows unknown roles; not this proxy's business
        if isinstance(policy, str):
            policy = json.loads(unquote(policy))
        ours = [
            s
            for s in policy.get("Statement", [])
            if str((s.get("Principal") or {}).get("Federated", "")).endswith(f"oidc-provider/{self.provider}")
        ]
        if not ours:
            return True  # not a role federating the emulator (the operator's own IRSA role)
        try:
            claims = self.kube.verify_token(params.get("WebIdentityToken", ""), audience="sts.amazonaws.com")
        except Exception:
            self.decisions.append((role_arn, None, False))
            return False
        values = {f"{self.provider}:sub": claims.get("sub"), f"{self.provider}:aud": "sts.amazonaws.com"}
        allowed = any(
            s.get("Effect") == "Allow"
            and all(values.get(k) == v for k, v in ((s.get("Condition") or {}).get("StringEquals") or {}).items())
            for s in ours
        )
        self.decisions.append((role_arn, claims.get("sub"), allowed))
        return allowed

    def __enter__(self) -> TrustingSts:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def trusting_sts(sts: Any, cluster: Any) -> Iterator[TrustingSts]:
    with TrustingSts(sts.url, cluster, sts) as proxy:
        yield proxy


def scoped(*namespaces: str) -> list[str]:
    """``rdsiam run`` flags watching only these namespaces: an operator here never picks up resources
    other tests left behind, so STS counts are this test's own."""
    return [arg for name in namespaces for arg in ("--namespace", name)]


def sessions_of(sts: Any, role_arn: str) -> list[Any]:
    """Every credential STS issued for sessions of this role (one per successful AssumeRole*)."""
    prefix = f"arn:aws:sts::{sts.account_id}:assumed-role/{role_arn.rsplit('/', 1)[-1]}/"
    return [issued for issued in sts.issued() if issued.arn.startswith(prefix)]


def sts_requests(operator: Any) -> dict[str, int]:
    """STS calls the operator made itself, by action, from its metrics page (botocore's own IRSA
    refresh of the operator's credentials is not among them)."""
    found: dict[str, int] = {}
    for line in operator.metrics().splitlines():
        match = re.match(r'rdsiam_sts_requests_total\{action="([^"]+)",result="[^"]+"\} ([0-9.]+)', line)
        if match:
            found[match[1]] = found.get(match[1], 0) + int(float(match[2]))
    return found


@pytest.fixture
def other_ns(kubectl: Kubectl) -> Iterator[str]:
    """A second namespace. Torn down before ``operator_factory``'s leak guard runs: its tokens, Events
    and status are remembered for the guard first, as the ``ns`` fixture does."""
    name = unique("t")
    kubectl.create_namespace(name)
    yield name
    _SEEN_TOKENS.extend(_namespace_tokens(kubectl, name))
    _SEEN_TEXTS.update({f"{k} of {name}": v for k, v in _public_texts(kubectl, name).items()})
    kubectl.run("delete", "rdsiamcredentials", "--all", "-n", name, "--wait=false", check=False)


@pytest.fixture(autouse=True)
def forget_credentials(kubectl: Kubectl, ns: str) -> Iterator[None]:
    """Leave no resources behind for operators of later tests (some of ours are broken on purpose)."""
    yield
    kubectl.run("delete", "rdsiamcredentials", "--all", "-n", ns, "--wait=false", check=False)


# ---- the three modes -----------------------------------------------------------------------------


def test_operator_identity_signs_and_the_database_accepts(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    operator_factory(args=scoped(ns))
    kubectl.apply(credential(rds, "own", ns))
    data = wait_secret(kubectl, "own", ns)
    issued = sts.lookup(access_key_of(data["password"]))
    assert issued is not None and "assumed-role/rdsiam-operator/" in issued.arn  # the operator pod's IRSA role
    assert_signed_by(sts, rds, kubectl, "own", ns, data, issued.arn)


def test_assumed_role_signs_with_external_id_and_session_name(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    role = sts.create_role(unique("orders-connect"))
    operator = operator_factory(args=scoped(ns))
    kubectl.apply(
        [
            credential(rds, "named", ns, assumeRoleArn=role, externalId="tenant-4711", sessionName="orders-reader"),
            credential(rds, "default-session", ns, assumeRoleArn=role),
        ]
    )
    named = wait_secret(kubectl, "named", ns)
    assert_signed_by(sts, rds, kubectl, "named", ns, named, assumed(sts, role, "orders-reader"))
    # Without spec.sessionName the session names the namespace (CloudTrail shows who it was for).
    default = wait_secret(kubectl, "default-session", ns)
    assert_signed_by(sts, rds, kubectl, "default-session", ns, default, assumed(sts, role, f"rdsiam-{ns}"))
    # Two identities (the session names differ): one AssumeRole each.
    assert len(sessions_of(sts, role)) == 2 and sts_requests(operator) == {"AssumeRole": 2}


def test_service_account_identity_is_the_namespaces_own(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    cluster: Any,
    trusting_sts: TrustingSts,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    role = sts.create_role(unique("orders-app"), irsa_trust_policy(sts, cluster.issuer, ns, "orders-app"))
    create_service_account(kubectl, ns, "orders-app", role)
    own_role = sts.create_role("rdsiam-operator")  # the operator pod's IRSA role (operator_env)
    own_sessions = len(sessions_of(sts, own_role))
    operator = operator_factory(args=scoped(ns), env={"AWS_ENDPOINT_URL_STS": trusting_sts.url})
    kubectl.apply(credential(rds, "as-sa", ns, serviceAccountName="orders-app"))
    data = wait_secret(kubectl, "as-sa", ns)
    assert_signed_by(sts, rds, kubectl, "as-sa", ns, data, assumed(sts, role, f"rdsiam-{ns}-orders-app"))
    # AWS (here: the trust-checking proxy) saw a valid token for exactly this ServiceAccount...
    assert trusting_sts.decisions == [(role, f"system:serviceaccount:{ns}:orders-app", True)]
    tokens = cluster.requests.filter(method="POST", path=f"/namespaces/{ns}/serviceaccounts/orders-app/token$")
    assert len(tokens) == 1
    # ...and the operator's own identity was not used at all (it needs no database rights).
    assert sts_requests(operator) == {"AssumeRoleWithWebIdentity": 1} and len(sessions_of(sts, role)) == 1
    assert len(sessions_of(sts, own_role)) == own_sessions


def test_service_account_can_chain_into_a_role(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    cluster: Any,
    trusting_sts: TrustingSts,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    base = sts.create_role(unique("app-base"), irsa_trust_policy(sts, cluster.issuer, ns, "app"))
    target = sts.create_role(unique("db-connect"))
    create_service_account(kubectl, ns, "app", base)
    operator_factory(args=scoped(ns), env={"AWS_ENDPOINT_URL_STS": trusting_sts.url})
    kubectl.apply(credential(rds, "chained", ns, serviceAccountName="app", assumeRoleArn=target))
    data = wait_secret(kubectl, "chained", ns)
    assert_signed_by(sts, rds, kubectl, "chained", ns, data, assumed(sts, target, f"rdsiam-{ns}-app"))
    assert [d[2] for d in trusting_sts.decisions] == [True]


def test_another_namespaces_role_is_refused_by_its_trust_policy(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    cluster: Any,
    trusting_sts: TrustingSts,
    operator_factory: Any,
    ns: str,
    other_ns: str,
    app_user: str,  # noqa: F811
) -> None:
    """No confused deputy: namespace B annotates its own ServiceAccount with A's role; the operator
    asks as B's ServiceAccount, and A's trust policy (pinned to A's) says no."""
    victim = ns
    role = sts.create_role(unique("payments"), irsa_trust_policy(sts, cluster.issuer, victim, "payments"))
    create_service_account(kubectl, victim, "payments", role)
    thief = other_ns
    create_service_account(kubectl, thief, "payments", role)
    operator_factory(args=scoped(victim, thief), env={"AWS_ENDPOINT_URL_STS": trusting_sts.url})
    kubectl.apply(
        [
            credential(rds, "stolen", thief, serviceAccountName="payments"),
            credential(rds, "legit", victim, serviceAccountName="payments"),
        ]
    )
    cond = wait_reason(kubectl, "stolen", thief, "AccessDenied")
    assert cond["status"] == "False"
    assert f"system:serviceaccount:{thief}:payments" in cond["message"] and role in cond["message"]
    assert "trust policy" in cond["message"]
    assert kubectl.get("secret", "stolen", thief) is None
    warning_events(kubectl, "stolen", thief, "AccessDenied")
    legit = wait_secret(kubectl, "legit", victim)
    assert_signed_by(sts, rds, kubectl, "legit", victim, legit, assumed(sts, role, f"rdsiam-{victim}-payments"))
    assert (role, f"system:serviceaccount:{thief}:payments", False) in trusting_sts.decisions
    assert [s.arn for s in sessions_of(sts, role)] == [assumed(sts, role, f"rdsiam-{victim}-payments")]


# ---- what users see when something is missing or denied ------------------------------------------


@pytest.mark.slow  # waits for the operator's own retries (2 s, 5 s)
def test_missing_then_unannotated_service_account_are_explained_and_recover(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    operator_factory(args=scoped(ns))
    kubectl.apply(credential(rds, "needs-sa", ns, serviceAccountName="orders-app"))
    cond = wait_reason(kubectl, "needs-sa", ns, "ServiceAccountNotFound")
    assert f"{ns}/orders-app" in cond["message"] and ROLE_ANNOTATION in cond["message"]
    warning_events(kubectl, "needs-sa", ns, "ServiceAccountNotFound")
    create_service_account(kubectl, ns, "orders-app", None)
    cond = wait_reason(kubectl, "needs-sa", ns, "ServiceAccountNotAnnotated", timeout=15)
    assert ROLE_ANNOTATION in cond["message"] and f"system:serviceaccount:{ns}:orders-app" in cond["message"]
    assert kubectl.get("secret", "needs-sa", ns) is None
    role = sts.create_role(unique("orders-app"))
    create_service_account(kubectl, ns, "orders-app", role)
    data = wait_secret(kubectl, "needs-sa", ns, timeout=15)
    assert_signed_by(sts, rds, kubectl, "needs-sa", ns, data, assumed(sts, role, f"rdsiam-{ns}-orders-app"))


@pytest.mark.slow  # waits for the operator's own retries (2 s, 5 s)
def test_access_denied_names_the_role_the_caller_and_what_to_check(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    sts_faults: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    role = sts.create_role(unique("locked"))
    sts_faults.deny(role)
    operator_factory(args=scoped(ns), env={"AWS_ENDPOINT_URL_STS": sts_faults.url})
    kubectl.apply(credential(rds, "denied", ns, assumeRoleArn=role, externalId="tenant-4711"))
    cond = wait_reason(kubectl, "denied", ns, "AccessDenied")
    message = cond["message"]
    assert role in message and "trust policy" in message and "externalId" in message
    assert "assumed-role/rdsiam-operator/" in message and "is not authorized to perform: sts:AssumeRole" in message
    assert "tenant-4711" not in message
    assert kubectl.get("secret", "denied", ns) is None
    warning_events(kubectl, "denied", ns, "AccessDenied")
    sts_faults.clear()  # the trust policy is fixed: the next retry succeeds
    data = wait_secret(kubectl, "denied", ns, timeout=15)
    assert_signed_by(sts, rds, kubectl, "denied", ns, data, assumed(sts, role, f"rdsiam-{ns}"))
