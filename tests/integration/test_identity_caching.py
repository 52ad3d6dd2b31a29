"""One STS session per identity, credential expiry, and STS faults (throttling, 5xx, timeouts).

STS calls are counted per role on the STS server (the sessions it issued), per operator process on its
metrics page, and, where faults are injected, on the FaultProxy in front of STS
(``AWS_ENDPOINT_URL_STS`` points the operator at it). Each operator watches only its test's namespace.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rdsiam.testing.kubectl import Kubectl
from tests.integration.test_identity_modes import (
    access_key_of,
    assert_signed_by,
    assumed,
    create_service_account,
    forget_credentials,  # noqa: F401 - an autouse fixture
    login_with,
    scoped,
    sessions_of,
    sts_requests,
    unique,
    wait_reason,
    wait_secret,
    warning_events,
)
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def secrets_by_name(kubectl: Kubectl, ns: str) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in kubectl.list("secrets", ns, "app.kubernetes.io/managed-by=rdsiam")}


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_resources_sharing_an_identity_share_one_sts_session(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    cluster: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    n = 20
    role = sts.create_role(unique("shared"))
    sa_role = sts.create_role(unique("shared-sa"))
    create_service_account(kubectl, ns, "app", sa_role)
    own_role = sts.create_role("rdsiam-operator")  # the operator pod's IRSA role (operator_env)
    own_before = len(sessions_of(sts, own_role))
    operator = operator_factory(args=scoped(ns))
    groups = {"role": {"assumeRoleArn": role}, "sa": {"serviceAccountName": "app"}, "own": {}}
    kubectl.apply([credential(rds, f"{g}-{i}", ns, **spec) for g, spec in groups.items() for i in range(n)])
    # Every Secret appears (how long it takes is benchmarks/bench_identity.py's "time until all are Ready").
    kubectl.wait(
        f"{3 * n} Secrets", lambda: len(secrets_by_name(kubectl, ns)) == 3 * n or None, timeout=20, interval=0.1
    )
    secrets = secrets_by_name(kubectl, ns)
    # One STS call per identity, not one per resource: AssumeRole for the role, AssumeRoleWithWebIdentity
    # for the ServiceAccount, GetCallerIdentity to show the operator's own ARN in status.identity, and
    # botocore's one AssumeRoleWithWebIdentity for the operator pod's own IRSA credentials.
    calls = sts_requests(operator)
    assert calls == {"AssumeRole": 1, "AssumeRoleWithWebIdentity": 1, "GetCallerIdentity": 1}, calls
    assert len(sessions_of(sts, role)) == 1 and len(sessions_of(sts, sa_role)) == 1
    assert len(sessions_of(sts, own_role)) - own_before == 1
    token_requests = cluster.requests.filter(method="POST", path=f"/namespaces/{ns}/serviceaccounts/app/token$")
    assert len(token_requests) == 1
    for group, expected in (
        ("role", assumed(sts, role, f"rdsiam-{ns}")),
        ("sa", assumed(sts, sa_role, f"rdsiam-{ns}-app")),
        ("own", None),
    ):
        datas = [decoded(secrets[f"{group}-{i}"]) for i in range(n)]
        keys = {access_key_of(d["password"]) for d in datas if d}
        assert len(keys) == 1, f"{group}: {len(keys)} sessions"
        arn = expected or sts.lookup(keys.pop()).arn
        for i in (0, n - 1):
            assert_signed_by(sts, rds, kubectl, f"{group}-{i}", ns, datas[i], arn)


@pytest.mark.slow  # about 5 s: botocore's own retries, then the operator's backoff
def test_throttling_backs_off_reports_and_recovers(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    sts_faults: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    operator_factory(args=scoped(ns), env={"AWS_ENDPOINT_URL_STS": sts_faults.url})
    kubectl.apply(credential(rds, "warm", ns))  # the operator's own credentials, before any fault
    wait_secret(kubectl, "warm", ns)
    role = sts.create_role(unique("busy"))
    sts_faults.clear()
    sts_faults.throttle(3)  # botocore's standard mode tries 3 times: one refresh attempt fails
    kubectl.apply(credential(rds, "throttled", ns, assumeRoleArn=role))
    cond = wait_reason(kubectl, "throttled", ns, "Throttled")
    assert cond["status"] == "False" and role in cond["message"]
    assert "backs off" in cond["message"] and "existing Secrets stay valid" in cond["message"]
    warning_events(kubectl, "throttled", ns, "Throttled")
    assert sts_faults.counts["AssumeRole"] == 3
    data = wait_secret(kubectl, "throttled", ns, timeout=15)  # no help needed: the backoff retries
    # ... once: one more AssumeRole after the three throttled ones.
    assert sts_faults.counts["AssumeRole"] == 4 and sts_faults.injected["throttle"] == 3
    assert_signed_by(sts, rds, kubectl, "throttled", ns, data, assumed(sts, role, f"rdsiam-{ns}"))
    ready = wait_reason(kubectl, "throttled", ns, "TokenIssued")
    assert ready["status"] == "True"


@pytest.mark.slow
def test_sts_outage_leaves_a_still_valid_secret_untouched(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    sts_faults: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    old_role, new_role = sts.create_role(unique("old")), sts.create_role(unique("new"))
    operator_factory(args=scoped(ns), env={"AWS_ENDPOINT_URL_STS": sts_faults.url})
    kubectl.apply(credential(rds, "db", ns, assumeRoleArn=old_role))
    old = wait_secret(kubectl, "db", ns)
    version = kubectl.get("secret", "db", ns)["metadata"]["resourceVersion"]  # type: ignore[index]
    sts_faults.clear()
    sts_faults.fail(6, status=503)  # two refresh attempts of three tries each
    kubectl.apply(credential(rds, "db", ns, assumeRoleArn=new_role))  # needs new credentials
    cond = wait_reason(kubectl, "db", ns, "CredentialsUnavailable")
    assert "ServiceUnavailable" in cond["message"] and new_role in cond["message"]
    assert "existing Secrets stay valid" in cond["message"]
    warning_events(kubectl, "db", ns, "CredentialsUnavailable")
    # The Secret apps mount is untouched and its token still lets them in.
    assert kubectl.get("secret", "db", ns)["metadata"]["resourceVersion"] == version  # type: ignore[index]
    unchanged = kubectl.secret_data("db", ns) == old  # compared outside the assert: it holds the token
    assert unchanged, "the Secret's data changed"
    login_with(rds, old)
    # STS comes back: the next (backed-off) attempt succeeds, with exactly one more call.
    kubectl.wait("the new identity", lambda: (d := kubectl.secret_data("db", ns)) and d != old and d, timeout=15)
    assert sts_faults.counts["AssumeRole"] == 7 and sts_faults.injected["fail"] == 6
    assert_signed_by(
        sts,
        rds,
        kubectl,
        "db",
        ns,
        kubectl.secret_data("db", ns),  # type: ignore[arg-type]
        assumed(sts, new_role, f"rdsiam-{ns}"),
    )


@pytest.mark.slow
def test_sts_timeout_is_reported_in_seconds_and_recovers(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    sts_faults: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    # One attempt per refresh (AWS_MAX_ATTEMPTS, honoured as by any AWS SDK) so one hung call shows.
    operator_factory(args=scoped(ns), env={"AWS_ENDPOINT_URL_STS": sts_faults.url, "AWS_MAX_ATTEMPTS": "1"})
    kubectl.apply(credential(rds, "warm", ns))
    wait_secret(kubectl, "warm", ns)
    role = sts.create_role(unique("slow"))
    sts_faults.clear()
    sts_faults.delay(8.0, n=1)
    start = time.monotonic()
    kubectl.apply(credential(rds, "slow", ns, assumeRoleArn=role))
    cond = wait_reason(kubectl, "slow", ns, "CredentialsUnavailable", timeout=10)
    waited = time.monotonic() - start
    # The operator's read timeout (5 s) ended the call, not the hung STS (8 s): had the client waited
    # for the answer, there would be no ReadTimeoutError. And it did wait for it (a lower bound: a slow
    # machine cannot fail it).
    assert "ReadTimeoutError" in cond["message"] and role in cond["message"]
    assert waited > 4, f"timed out after {waited:.1f} s (STS read timeout is 5 s)"
    data = wait_secret(kubectl, "slow", ns, timeout=10)
    assert sts_faults.counts["AssumeRole"] == 2 and sts_faults.injected["delay"] == 1
    assert_signed_by(sts, rds, kubectl, "slow", ns, data, assumed(sts, role, f"rdsiam-{ns}"))


@pytest.fixture
def short_lived_credentials(sts: Any) -> Iterator[int]:
    """AssumeRole hands out 12-second credentials (the operator's own IRSA credentials stay 1 h)."""
    sts.set_credential_duration(12, actions=("AssumeRole",))
    yield 12
    sts.set_credential_duration(None)


@pytest.mark.slow
def test_credentials_expiring_early_cap_expiry_and_are_refreshed_before_tokens_die(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    short_lived_credentials: int,
    app_user: str,  # noqa: F811
) -> None:
    role = sts.create_role(unique("brief"))
    operator = operator_factory(args=scoped(ns))
    names = ("a", "b", "c")
    kubectl.apply([credential(rds, name, ns, assumeRoleArn=role) for name in names])
    for name in names:
        data = wait_secret(kubectl, name, ns)
        issued = sts.lookup(access_key_of(data["password"]))
        assert issued is not None and issued.expiration is not None
        expires = parse_time(data["expires-at"])
        assert expires <= issued.expiration  # min(15 min, credential expiry)
        assert expires - dt.datetime.now(dt.UTC) < dt.timedelta(seconds=short_lived_credentials + 1)
        ready = wait_reason(kubectl, name, ns, "TokenIssued")
        assert "credentials expire first" in ready["message"]
    # Watch: every Secret always holds a live token, re-signed with new credentials before the old die.
    seen: set[str] = set()
    deadline = time.monotonic() + 14
    while time.monotonic() < deadline:
        now = dt.datetime.now(dt.UTC)
        for name in names:
            current = kubectl.secret_data(name, ns)
            assert current is not None
            assert parse_time(current["expires-at"]) > now, f"{name}: token dead at {now}"
            seen.add(access_key_of(current["password"]))
        time.sleep(0.3)
    calls = len(sessions_of(sts, role))
    assert sts_requests(operator) == {"AssumeRole": calls}
    assert len(seen) >= 3, f"credentials were not refreshed ({len(seen)} sessions seen)"
    # Shared: one AssumeRole per credential refresh for all three resources, about every 6 s.
    assert calls <= len(seen) + 1 and calls <= 5, f"{calls} AssumeRole calls for {len(seen)} sessions"
    last = kubectl.secret_data("a", ns)
    assert last is not None
    assert_signed_by(sts, rds, kubectl, "a", ns, last, assumed(sts, role, f"rdsiam-{ns}"))
