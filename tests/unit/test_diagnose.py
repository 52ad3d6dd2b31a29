"""The diagnosis of a refused login: the reason, and likely causes ordered by what the client knows."""

from __future__ import annotations

import pytest

from rdsiam import _diagnose
from rdsiam._diagnose import Context, diagnose, explain
from rdsiam.operator import reasons

ENDPOINT = "orders.cluster-abc123def456.us-east-1.rds.amazonaws.com"
PAM = 'PAM authentication failed for user "app_user"'
ARN = "arn:aws:sts::123456789012:assumed-role/rdsiam-operator/botocore-session-1712345678"


def ctx(**kw: object) -> Context:
    base: dict[str, object] = {"user": "app_user", "host": ENDPOINT, "port": 5432, "database": "orders",
                               "region": "us-east-1", "signing_host": ENDPOINT, "identity": ARN,
                               "sslmode": "require", "auth": "cleartext"}
    return Context(**{**base, **kw})  # type: ignore[arg-type]


def test_every_reason_is_an_operator_reason() -> None:
    declared = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    assert _diagnose.REASONS <= declared


def test_pam_failure_on_the_endpoint_itself_starts_with_the_iam_policy() -> None:
    d = diagnose("server", "28000", PAM, ctx(), stage="auth")
    assert d.reason == "LoginRejected"
    assert PAM in d.summary and f"{ENDPOINT}:5432" in d.summary
    assert "rds-db:connect" in d.causes[0] and ARN in d.causes[0]
    assert "arn:aws:rds-db:us-east-1:ACCOUNT:dbuser:RESOURCE_ID/app_user" in d.causes[0]
    assert "IAM database authentication is disabled" in d.causes[1]
    assert "rds_iam" in d.causes[-1] and d.causes[-1].startswith("less likely")
    assert not any("signingHost" in c for c in d.causes)


def test_pam_failure_with_another_signing_host_names_it_first() -> None:
    other = "orders.cluster-zzz999.us-east-1.rds.amazonaws.com"
    d = diagnose("server", "28000", PAM, ctx(host="db.internal.example", signing_host=other), stage="auth")
    assert "spec.signingHost" in d.causes[0] and other in d.causes[0] and "db.internal.example" in d.causes[0]
    assert "rds-db:connect" in d.causes[1]


def test_pam_failure_for_a_cname_signed_as_itself_suggests_signing_host() -> None:
    d = diagnose("server", "28000", PAM, ctx(host="db.internal.example", signing_host=""), stage="auth")
    assert "not an RDS endpoint name" in d.causes[0]
    assert "spec.signingHost" in d.causes[0] and "spec.resolveCNAME" in d.causes[0]


def test_pam_failure_with_a_region_that_contradicts_the_endpoint_names_it_first() -> None:
    d = diagnose("server", "28000", PAM, ctx(region="eu-west-1"), stage="auth")
    assert d.causes[0].startswith("the token is signed for region eu-west-1 but") and "us-east-1" in d.causes[0]


@pytest.mark.parametrize("kind,message", [
    ("password", "it asked for SASL (SCRAM-SHA-256) authentication, not for an IAM token"),
    ("server", 'password authentication failed for user "app_user"'),  # what a driver reports
])
def test_a_password_prompt_means_not_an_iam_user(kind: str, message: str) -> None:
    d = diagnose(kind, "28P01" if kind == "server" else "", message, ctx(auth="SASL (SCRAM-SHA-256)"),
                 stage="auth")
    assert d.reason == "LoginRejected"
    assert "did not treat 'app_user' as an IAM user" in d.summary
    assert 'GRANT rds_iam TO "app_user"' in d.causes[0] and 'CREATE USER "app_user"' in d.causes[0]
    assert "does not exist" in d.causes[0]


@pytest.mark.parametrize("kind,message,sslmode", [
    ("server", 'pg_hba.conf rejects connection for host "127.0.0.1", user "u", database "d", no encryption',
     "disable"),
    ("server", 'pg_hba.conf rejects connection for host "127.0.0.1", user "u", database "d", SSL off', "disable"),
    ("no-tls", "the server does not support TLS (sslmode=require)", "require"),
])
def test_missing_tls_says_set_sslmode(kind: str, message: str, sslmode: str) -> None:
    reason, text = explain(kind, "28000", message, ctx(sslmode=sslmode), stage="startup")
    assert reason == "TLSRequired"
    assert "sslmode=require" in text
    if sslmode == "disable":
        assert "the DSN sets sslmode=disable" in text


def test_tls_failure_with_verify_full_through_a_cname_suggests_verify_ca() -> None:
    d = diagnose("tls", "", "certificate verify failed: Hostname mismatch", ctx(host="db.internal.example",
                 sslmode="verify-full"), stage="tls")
    assert d.reason == "TLSError"
    assert "verify-ca" in d.causes[0] and "global-bundle.pem" in d.causes[1]


@pytest.mark.parametrize("kind,stage,reason,hint", [
    ("dns", "dns", "DNSError", "spec.host"),
    ("timeout", "connect", "ConnectTimeout", "security group"),
    ("timeout", "tls", "ConnectTimeout", "not a PostgreSQL server"),
    ("refused", "connect", "ConnectionRefused", "spec.port"),
    ("network", "startup", "NetworkError", "proxy"),
    ("protocol", "tls", "VerifyFailed", "spec.port"),
])
def test_network_failures_get_their_own_reasons(kind: str, stage: str, reason: str, hint: str) -> None:
    d = diagnose(kind, "", "something happened", ctx(), stage=stage)
    assert d.reason == reason
    assert any(hint in c for c in d.causes), d.causes


def test_refused_with_hostaddr_mentions_it() -> None:
    d = diagnose("refused", "", "127.0.0.1:1 refused the connection", ctx(hostaddr="127.0.0.1"), stage="connect")
    assert "(dialled at 127.0.0.1)" not in d.summary  # the socket's message already names the address
    assert any("hostaddr=127.0.0.1" in c for c in d.causes)


def test_server_errors_after_login() -> None:
    d = diagnose("server", "3D000", 'database "orders" does not exist', ctx(), stage="auth")
    assert d.reason == "LoginRejected" and "spec.database" in d.causes[0]
    assert diagnose("server", "53300", "sorry, too many clients already", ctx()).reason == "VerifyFailed"
    assert diagnose("server", "57P03", "the database system is starting up", ctx()).reason == "VerifyFailed"
    d = diagnose("server", "42501", "permission denied", ctx(), stage="query")
    assert d.summary.startswith("Logged in to") and "SELECT 1 failed" in d.summary


def test_message_numbers_causes_and_stays_event_sized() -> None:
    c = ctx(host="orders-db.internal.example.com", hostaddr="10.0.0.1", sslmode="verify-ca")
    reason, message = explain("server", "28000", PAM, c, stage="auth")
    assert "Likely causes, most likely first: (1) " in message and "(5) " in message
    assert len(message) <= 1024  # Events carry at most 1024 characters of it
    single = _diagnose.Diagnosis("X", "Summary.", ("one cause",))
    assert single.message == "Summary. Check: one cause."


def test_the_check_report_keeps_the_password_out_of_its_repr() -> None:
    import io

    from rdsiam._check import _Report

    report = _Report(io.StringIO(), secret="tok-Hunter2-signature")
    shown = repr(report)
    assert "Hunter2" not in shown
