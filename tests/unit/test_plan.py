"""The functional core: tables of what was gathered -> what the plan says. Time is given, never read."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from rdsiam.operator import plan, policy, reasons
from rdsiam.operator.plan import Condition, Event, Failure, Input, Issued, Next, Resource
from rdsiam.operator.policy import SecretState

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
S = dt.timedelta(seconds=1)
TARGET = "app_user@orders.cluster-abc123.us-east-1.rds.amazonaws.com (us-east-1)"
ENDPOINT = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"
ARN = "arn:aws:sts::1:assumed-role/r/s"


def owned(issued: dt.datetime = T0, lifetime: int = 900, **kw: Any) -> SecretState:
    fields: dict[str, Any] = dict(exists=True, owned=True, fingerprint="fp", issued_at=issued,
                                  expires_at=issued + lifetime * S, complete=True, resource_version="1")
    return SecretState(**{**fields, **kw})


def ready(status: str = "True", reason: str = reasons.TOKEN_ISSUED, message: str = "m",
          **extra: Any) -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-12-31T00:00:00Z", **extra}


def in_line(secret: SecretState | None = None, generation: int = 1, **kw: Any) -> dict[str, Any]:
    """Status as a successful issue of ``secret`` (a fresh token issued at T0) left it."""
    secret = secret or owned()
    expires_at = policy.rfc3339(secret.expires_at) if secret.expires_at else None
    return {"observedGeneration": generation, "secretName": "orders", "expiresAt": expires_at,
            "conditions": [ready()], **kw}


def token(at: dt.datetime, expires: dt.datetime, identity: str | None = ARN, early: bool = False) -> Issued:
    """A minted token as ``plan.issued`` describes it, with ``early`` as given."""
    return Issued(at, expires, identity, early, policy.rfc3339(at), policy.rfc3339(expires))


RESOURCE = Resource(namespace="shop", secret_name="orders", fingerprint="fp", interval=600.0, jitter=0.0,
                    target=TARGET, endpoint=ENDPOINT, verify=False)


def given(**kw: Any) -> Input:
    """An Input with a fresh token issued at T0 and status in line with it; ``kw`` overrides (the
    Resource's fields too)."""
    resource = dataclasses.replace(RESOURCE, **{k: kw.pop(k) for k in list(kw) if hasattr(RESOURCE, k)})
    secret = kw.setdefault("secret", owned())
    if "status" not in kw:
        kw["status"] = in_line(secret) if secret.exists else {}
    fields: dict[str, Any] = dict(resource=resource, generation=1, requested_at=None, now=T0 + 300 * S)
    return Input(**{**fields, **kw})


# ---- whether to mint -------------------------------------------------------------------------

def test_the_checks_run_in_this_order() -> None:
    assert [c.__name__ for c in plan.REFRESH_CHECKS] == [
        "secret_missing", "secret_incomplete", "spec_changed", "refresh_requested", "expiring", "interval_elapsed"]


@pytest.mark.parametrize(("inp", "why", "due"), [
    (given(secret=SecretState()), policy.SECRET_MISSING, None),
    (given(secret=owned(complete=False)), policy.SECRET_INCOMPLETE, None),
    (given(secret=owned(issued_at=None)), policy.SECRET_INCOMPLETE, None),
    (given(secret=owned(expires_at=None)), policy.SECRET_INCOMPLETE, None),
    (given(fingerprint="other"), policy.SPEC_CHANGED, None),
    (given(secret=owned(complete=False), fingerprint="other"), policy.SECRET_INCOMPLETE, None),
    (given(requested_at=T0 + 30 * S), policy.REFRESH_REQUESTED, None),
    (given(requested_at=T0 + 30 * S, fingerprint="other"), policy.SPEC_CHANGED, None),
    (given(requested_at=T0 - 30 * S), policy.FRESH, T0 + 600 * S),
    (given(requested_at=T0), policy.FRESH, T0 + 600 * S),
    (given(requested_at=T0 + 30 * S, secret=owned(served_request=T0 + 30 * S)), policy.FRESH, T0 + 600 * S),
    (given(now=T0 + 600 * S), policy.INTERVAL_ELAPSED, None),
    (given(now=T0 + 570 * S, jitter=30.0), policy.INTERVAL_ELAPSED, None),
    (given(now=T0 + 569 * S, jitter=30.0), policy.FRESH, T0 + 570 * S),
    (given(now=T0 + 300 * S), policy.FRESH, T0 + 600 * S),
    (given(now=T0, interval=840.0), policy.FRESH, T0 + 720 * S),
    (given(now=T0 + 720 * S, interval=840.0), policy.EXPIRING, None),
    (given(secret=owned(lifetime=300), now=T0 + 150 * S), policy.EXPIRING, None),
    (given(secret=owned(lifetime=300), now=T0 + 121 * S), policy.FRESH, T0 + 150 * S),
    (given(secret=owned(lifetime=300), now=T0 + 130 * S, interval=60.0), policy.FRESH, T0 + 150 * S),
    (given(secret=owned(lifetime=300), now=T0 + 60 * S, interval=60.0), policy.INTERVAL_ELAPSED, None),
    (given(secret=owned(lifetime=1), now=T0), policy.FRESH, T0 + S / 2),
], ids=[
    "missing", "incomplete-keys", "no-issued-at", "no-expires-at", "spec-changed", "incomplete-before-spec",
    "requested", "spec-before-requested", "requested-before-issue", "requested-at-issue",
    "requested-ahead-and-answered",
    "interval-elapsed", "interval-less-jitter", "just-before-jittered", "fresh", "long-interval-capped-by-margin",
    "margin-reached", "expiring-short-credentials", "short-credentials-before-half-life",
    "short-credentials-interval-waits-for-half-life", "short-credentials-interval-before-margin",
    "one-second-token-no-tight-loop",
])
def test_refresh_decision(inp: Input, why: str, due: dt.datetime | None) -> None:
    p = plan.plan_refresh(inp)
    assert p.why == why and p.mint is (due is None) and p.next.ok
    if due is None:
        assert p.status is None and p.events == () and p.next.due is None  # plan_issued says when
    else:
        assert p.next == Next(True, reasons.TOKEN_ISSUED, due) and p.status is None and p.events == ()
        assert policy.rfc3339(due) in p.message


def test_capped_token_says_so() -> None:
    p = plan.plan_refresh(given(secret=owned(lifetime=300), now=T0 + 121 * S))
    assert p.message == "the token is capped by short-lived credentials; next refresh at half its life, " \
                        "2026-01-01T12:02:30Z"


@pytest.mark.parametrize("lifetime", [900, 600, 240, 180, 100, 12, 1])
@pytest.mark.parametrize("interval", [60.0, 300.0, 600.0, 840.0])
@pytest.mark.parametrize("fraction", [0.0, 0.0125, 0.1])  # of the interval, as jitter
def test_the_next_look_after_issue_is_what_the_checks_say_of_that_secret(
        lifetime: int, interval: float, fraction: float) -> None:
    jitter = fraction * interval
    inp = given(secret=SecretState(), interval=interval, jitter=jitter, now=T0)
    after = plan.plan_issued(inp, policy.SECRET_MISSING, token(T0, T0 + lifetime * S, ARN, early=False))
    seen = plan.plan_refresh(given(secret=owned(lifetime=lifetime), interval=interval, jitter=jitter, now=T0))
    assert not seen.mint and after.next.due == seen.next.due


def test_a_foreign_secret_is_a_conflict_and_never_minted() -> None:
    inp = given(secret=SecretState(exists=True, owner="ExternalSecret/orders"), status={})
    p = plan.plan_refresh(inp)
    assert not p.mint and p.failed and p.why == reasons.SECRET_CONFLICT
    assert p.next == Next(False, reasons.SECRET_CONFLICT, retry_after=60.0)
    assert p.message.startswith("Secret shop/orders already exists and is not owned by this RdsIamCredential "
                                "(it belongs to ExternalSecret/orders);")
    assert p.events == (Event("Warning", reasons.SECRET_CONFLICT, p.message),)


# ---- status behind a fresh Secret ------------------------------------------------------------

@pytest.mark.parametrize(("status", "behind"), [
    (in_line(), False),
    (in_line(lastRefreshTime="whatever", endpoint="elsewhere"), False),  # not compared
    ({}, True),
    (in_line(conditions=[]), True),
    (in_line(conditions=[ready("False", reasons.THROTTLED)]), True),
    (in_line(generation=0), True),
    (in_line(secretName="old-name"), True),
    (in_line(expiresAt="2026-01-01T11:50:00Z"), True),
], ids=["in-line", "other-fields-ignored", "empty", "no-ready", "ready-false", "old-generation", "other-secret",
        "previous-expiry"])
def test_status_is_brought_in_line_with_a_fresh_secret(status: dict[str, Any], behind: bool) -> None:
    p = plan.plan_refresh(given(status=status))
    assert not p.mint and p.why == policy.FRESH and p.next == Next(True, reasons.TOKEN_ISSUED, T0 + 600 * S)
    assert p.events == ()
    if not behind:
        assert p.status is None and p.ready is None
        return
    message = f"Token for {TARGET} in Secret orders; expires 2026-01-01T12:15:00Z."
    assert p.ready == Condition("True", reasons.TOKEN_ISSUED, message)
    assert p.status is not None
    assert list(p.status) == ["observedGeneration", "lastRefreshTime", "expiresAt", "secretName", "endpoint",
                              "conditions"]
    assert p.status["lastRefreshTime"] == "2026-01-01T12:00:00Z" and p.status["expiresAt"] == "2026-01-01T12:15:00Z"
    assert p.status["conditions"][0]["message"] == message and p.status["observedGeneration"] == 1
    assert p.if_status_fails == Next(False, reasons.KUBERNETES_ERROR, retry_after=2.0)


# ---- after minting: status, Events, next look ------------------------------------------------

@pytest.mark.parametrize(("why", "first", "old_ready", "rotation_events", "event"), [
    (policy.SECRET_MISSING, True, None, False, (reasons.TOKEN_ISSUED, "Issued token (SecretMissing)")),
    (policy.SECRET_MISSING, True, "True", False, (reasons.TOKEN_ISSUED, "Issued token (SecretMissing)")),
    (policy.SECRET_INCOMPLETE, False, "True", False, (reasons.ROTATED, "Rotated token (SecretIncomplete)")),
    (policy.SPEC_CHANGED, False, "True", False, (reasons.ROTATED, "Rotated token (SpecChanged)")),
    (policy.REFRESH_REQUESTED, False, "True", False, (reasons.ROTATED, "Rotated token (RefreshRequested)")),
    (policy.INTERVAL_ELAPSED, False, "True", False, None),
    (policy.EXPIRING, False, "True", False, None),
    (policy.INTERVAL_ELAPSED, False, "True", True, (reasons.ROTATED, "Rotated token (IntervalElapsed)")),
    (policy.EXPIRING, False, "True", True, (reasons.ROTATED, "Rotated token (Expiring)")),
    (policy.INTERVAL_ELAPSED, False, "False", False, (reasons.ROTATED, "Rotated token (IntervalElapsed)")),
    (policy.EXPIRING, False, "False", False, (reasons.ROTATED, "Rotated token (Expiring)")),
    (policy.INTERVAL_ELAPSED, False, None, False, None),
], ids=["first-issue", "secret-deleted", "incomplete", "spec-changed", "requested", "interval-quiet",
        "expiring-quiet", "interval-rotation-events", "expiring-rotation-events", "interval-recovery",
        "expiring-recovery", "no-ready-is-no-recovery"])
def test_events_policy(why: str, first: bool, old_ready: str | None, rotation_events: bool,
                       event: tuple[str, str] | None) -> None:
    status = {"conditions": [ready(old_ready)]} if old_ready else {}
    inp = given(secret=SecretState() if first else owned(), status=status, rotation_events=rotation_events,
                now=T0 + 600 * S)
    p = plan.plan_issued(inp, why, token(T0 + 600 * S, T0 + 1500 * S, ARN, early=False))
    expected = () if event is None else (
        Event("Normal", event[0], f"{event[1]}; Secret orders expires 2026-01-01T12:25:00Z."),)
    assert p.events == expected
    assert p.mint and p.why == why and p.reported is None and p.ready is not None and p.ready.status == "True"


def test_issued_status_and_ready_condition() -> None:
    inp = given(secret=SecretState(), status={"conditions": [ready("False", reasons.THROTTLED, "x")]}, generation=3)
    p = plan.plan_issued(inp, policy.SECRET_MISSING, token(T0, T0 + 900 * S, ARN, early=False))
    message = f"Token for {TARGET} written to Secret orders; expires 2026-01-01T12:15:00Z."
    assert p.ready == Condition("True", reasons.TOKEN_ISSUED, message)
    assert p.status == {
        "observedGeneration": 3, "lastRefreshTime": "2026-01-01T12:00:00Z", "expiresAt": "2026-01-01T12:15:00Z",
        "secretName": "orders", "identity": ARN, "endpoint": ENDPOINT,
        "conditions": [{"type": "Ready", "status": "True", "reason": reasons.TOKEN_ISSUED, "message": message,
                        "lastTransitionTime": "2026-01-01T12:00:00Z", "observedGeneration": 3}]}
    assert list(p.status) == ["observedGeneration", "lastRefreshTime", "expiresAt", "secretName", "identity",
                              "endpoint", "conditions"]
    early = plan.plan_issued(inp, policy.SECRET_MISSING, token(T0, T0 + 60 * S, None, early=True))
    assert early.ready is not None and early.ready.message.endswith("expires 2026-01-01T12:01:00Z "
                                                                    "(credentials expire first).")
    assert early.status is not None and early.status["identity"] is None  # a null removes the stale one


CONNECTED = {"type": "Connected", "status": "True", "reason": reasons.CONNECTED, "message": "ok",
             "lastTransitionTime": "2025-12-31T00:00:00Z"}


@pytest.mark.parametrize(("verify", "connected", "condition", "warning"), [
    (True, ("True", reasons.CONNECTED, "logged in"), ("True", reasons.CONNECTED), False),
    (True, ("False", reasons.LOGIN_REJECTED, "rejected"), ("False", reasons.LOGIN_REJECTED), True),
    (True, ("Unknown", reasons.NOT_SUPPORTED, "mysql"), ("Unknown", reasons.NOT_SUPPORTED), False),
    (True, None, ("True", reasons.CONNECTED), False),  # no verifier: the condition is left as it is
    (False, None, None, False),  # verify switched off: no stale Connected condition
], ids=["connected", "login-rejected", "not-probed", "no-verifier", "verify-off"])
def test_connected_condition(verify: bool, connected: tuple[str, str, str] | None,
                             condition: tuple[str, str] | None, warning: bool) -> None:
    inp = given(verify=verify, status={**in_line(), "conditions": [ready(), CONNECTED]}, now=T0 + 600 * S)
    p = plan.plan_issued(inp, policy.INTERVAL_ELAPSED, token(T0 + 600 * S, T0 + 1500 * S), connected)
    assert p.status is not None
    found = [(c["status"], c["reason"]) for c in p.status["conditions"] if c["type"] == "Connected"]
    assert found == ([] if condition is None else [condition])
    assert p.status["conditions"][0]["type"] == "Ready"
    assert p.events == ((Event("Warning", reasons.LOGIN_REJECTED, "rejected"),) if warning else ())


@pytest.mark.parametrize(("issued", "interval", "jitter", "due"), [
    (token(T0, T0 + 900 * S, ARN, early=False), 600.0, 0.0, T0 + 600 * S),
    (token(T0, T0 + 900 * S, ARN, early=False), 600.0, 30.0, T0 + 570 * S),
    (token(T0, T0 + 900 * S, ARN, early=False), 840.0, 0.0, T0 + 720 * S),
    (token(T0, T0 + 60 * S, ARN, early=True), 600.0, 0.0, T0 + 30 * S),
    (token(T0, T0 + 420 * S, ARN, early=True), 600.0, 0.0, T0 + 240 * S),
    (token(T0, T0 + 300 * S, ARN, early=True), 60.0, 0.0, T0 + 60 * S),
    (token(T0, T0 + S, ARN, early=True), 600.0, 0.0, T0 + S),
], ids=["interval", "interval-less-jitter", "expiry-margin", "early-half-life", "early-margin-still-ahead",
        "early-interval-sooner", "early-never-a-tight-loop"])
def test_next_look_after_issue(issued: Issued, interval: float, jitter: float, due: dt.datetime) -> None:
    p = plan.plan_issued(given(secret=SecretState(), interval=interval, jitter=jitter, now=T0),
                         policy.SECRET_MISSING, issued)
    assert p.next == Next(True, reasons.TOKEN_ISSUED, due, refreshed=True)
    # The Secret is written but status is not: come back soon to bring it in line.
    assert p.if_status_fails == Next(True, reasons.TOKEN_ISSUED, min(due, T0 + 2 * S), refreshed=True)


@pytest.mark.parametrize(("credentials", "expires", "early"), [
    (None, T0 + 900 * S, False),
    (T0 + 3600 * S, T0 + 900 * S, False),
    (T0 + 900 * S, T0 + 900 * S, False),
    (T0 + 420 * S, T0 + 420 * S, True),
], ids=["no-expiry", "long-lived", "same-instant", "short-lived"])
def test_a_token_expires_with_its_credentials_when_they_expire_first(
        credentials: dt.datetime | None, expires: dt.datetime, early: bool) -> None:
    assert plan.issued(T0, credentials, ARN) == Issued(T0, expires, ARN, early, "2026-01-01T12:00:00Z",
                                                       policy.rfc3339(expires))


# ---- failures --------------------------------------------------------------------------------

THROTTLED = Failure(reasons.THROTTLED, "throttled", retry_after=5.0)
SHOWN = {"observedGeneration": 1, "conditions": [ready("False", reasons.THROTTLED, "throttled")]}


@pytest.mark.parametrize(("status", "reported", "generation", "failure", "changed"), [
    ({}, None, 1, THROTTLED, True),
    (in_line(), None, 1, THROTTLED, True),
    (SHOWN, (reasons.THROTTLED, "throttled"), 1, THROTTLED, False),
    (SHOWN, (reasons.THROTTLED, "throttled"), 2, THROTTLED, True),
    (SHOWN, (reasons.THROTTLED, "throttled"), 1, Failure(reasons.THROTTLED, "throttled again"), True),
    (SHOWN, (reasons.THROTTLED, "throttled"), 1, Failure(reasons.ACCESS_DENIED, "throttled"), True),
    (SHOWN, None, 1, THROTTLED, True),
    (SHOWN, (reasons.ACCESS_DENIED, "denied"), 1, THROTTLED, True),
], ids=["first", "after-success", "same-again", "new-generation", "new-message", "new-reason",
        "not-reported-by-this-process", "reported-another"])
def test_failure_is_reported_once_until_something_changes(
        status: dict[str, Any], reported: tuple[str, str] | None, generation: int, failure: Failure,
        changed: bool) -> None:
    p = plan.plan_failure(failure, status=status, generation=generation, reported=reported, now=T0)
    assert p.failed and not p.mint and p.why == failure.reason and p.message == failure.message
    assert p.reported == (failure.reason, failure.message)
    assert p.next == Next(False, failure.reason, retry_after=failure.retry_after)
    if not changed:
        assert p.status is None and p.events == () and p.ready is None
        return
    assert p.ready == Condition("False", failure.reason, failure.message)
    assert p.events == (Event("Warning", failure.reason, failure.message),)
    assert p.status is not None and list(p.status) == ["observedGeneration", "conditions"]
    cond = p.status["conditions"][0]
    assert (cond["status"], cond["reason"], cond["message"], cond["observedGeneration"]) == (
        "False", failure.reason, failure.message, generation)
    # Still False: the transition time is the one it had.
    was_false = status.get("conditions", [{}])[0].get("status") == "False"
    assert cond["lastTransitionTime"] == ("2025-12-31T00:00:00Z" if was_false else "2026-01-01T12:00:00Z")


@pytest.mark.parametrize(("failure", "next_"), [
    (plan.invalid_spec("spec.region: required."), Next(False, reasons.INVALID_SPEC)),
    (plan.identity_not_allowed("require-service-account", "m", depends_on_namespace=False),
     Next(False, reasons.IDENTITY_NOT_ALLOWED)),
    (plan.identity_not_allowed("no-operator-identity", "m", depends_on_namespace=True),
     Next(False, reasons.IDENTITY_NOT_ALLOWED, retry_after=60.0)),
    (plan.endpoint_not_resolved("db.example.com"), Next(False, reasons.ENDPOINT_NOT_RESOLVED, retry_after=5.0)),
    (plan.namespace_unreadable("shop", 403, "Forbidden"), Next(False, reasons.KUBERNETES_ERROR, retry_after=5.0)),
    (plan.secret_conflict("shop", "orders", None), Next(False, reasons.SECRET_CONFLICT, retry_after=60.0)),
    (plan.identity_failed(reasons.THROTTLED, "m", 7.0), Next(False, reasons.THROTTLED, retry_after=7.0)),
    (plan.identity_failed(reasons.ACCESS_DENIED, "m", None), Next(False, reasons.ACCESS_DENIED, retry_after=5.0)),
    (plan.secret_api_failed("read", "shop", "orders", 500, "Err", "boom", retry_after=2.0),
     Next(False, reasons.KUBERNETES_ERROR, retry_after=2.0)),
    (plan.internal_error("KeyError"), Next(False, reasons.INTERNAL_ERROR, retry_after=10.0)),
], ids=["invalid-spec", "refused-by-flags", "refused-by-namespace", "endpoint", "namespace-unreadable",
        "conflict", "identity-retry-after", "identity-default", "kube", "internal"])
def test_permanent_or_retried(failure: Failure, next_: Next) -> None:
    p = plan.plan_failure(failure, status={}, generation=1, reported=None, now=T0)
    assert p.next == next_


@pytest.mark.parametrize(("failure", "message"), [
    (plan.invalid_spec("spec.region: required."),
     "Invalid spec: spec.region: required. Fix the field and re-apply; the operator will not retry this generation."),
    (plan.endpoint_not_resolved("db.example.com"), "spec.resolveCNAME: no RDS endpoint found behind db.example.com."),
    (plan.endpoint_not_resolved("db.example.com", "db.example.com: NXDOMAIN"), "db.example.com: NXDOMAIN"),
    (plan.identity_not_allowed("rule-x", "not this role", depends_on_namespace=False),
     "Identity not allowed by rule rule-x: not this role."),
    (plan.secret_api_failed("write", "shop", "orders", 403, "Forbidden", "no", retry_after=1.0),
     "Could not write Secret shop/orders: 403 Forbidden: no. check the operator's RBAC for secrets "
     "(get, create, update)."),
    (plan.secret_api_failed("write", "shop", "orders", 503, "Unavailable", "x" * 400, retry_after=1.0),
     f"Could not write Secret shop/orders: 503 Unavailable: {'x' * 300}. the API server or network had a "
     "problem; retrying with backoff."),
    (plan.internal_error("KeyError"), "Unexpected KeyError in the operator while reconciling; the operator's log "
     "has the traceback (please report it). Retrying with backoff."),
], ids=["invalid-spec", "no-endpoint", "lookup-error", "refused", "forbidden", "server-error-cut", "internal"])
def test_failure_messages(failure: Failure, message: str) -> None:
    assert failure.message == message


def test_plans_are_values() -> None:
    p = plan.plan_refresh(given())
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mint = True  # type: ignore[misc]
    assert plan.plan_refresh(given()) == p
