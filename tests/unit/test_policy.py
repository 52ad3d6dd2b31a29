"""The refresh decision, as a pure function of (fingerprint, Secret, interval, now)."""

from __future__ import annotations

import datetime as dt

from rdsiam.operator import policy
from rdsiam.operator.policy import SecretState, decide

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def fresh(issued: dt.datetime = T0, lifetime: int = 900) -> SecretState:
    return SecretState(
        exists=True,
        owned=True,
        fingerprint="fp",
        issued_at=issued,
        expires_at=issued + dt.timedelta(seconds=lifetime),
        complete=True,
    )


def test_missing_incomplete_changed() -> None:
    assert decide(current="fp", secret=SecretState(), interval=600, now=T0).reason == policy.SECRET_MISSING
    state = SecretState(exists=True, owned=True, complete=False)
    assert decide(current="fp", secret=state, interval=600, now=T0).reason == policy.SECRET_INCOMPLETE
    assert decide(current="other", secret=fresh(), interval=600, now=T0).reason == policy.SPEC_CHANGED


def test_fresh_secret_is_left_alone_until_interval() -> None:
    d = decide(current="fp", secret=fresh(), interval=600, now=T0 + dt.timedelta(minutes=5))
    assert not d.refresh and d.due == T0 + dt.timedelta(minutes=10)
    d = decide(current="fp", secret=fresh(), interval=600, now=T0 + dt.timedelta(minutes=10))
    assert d.refresh and d.reason == policy.INTERVAL_ELAPSED


def test_expiry_margin_wins_over_a_long_interval() -> None:
    d = decide(current="fp", secret=fresh(), interval=840, now=T0)
    assert d.due == T0 + dt.timedelta(seconds=900) - policy.EXPIRY_MARGIN
    # Credentials that expire early make the token expire early: refresh before that.
    d = decide(current="fp", secret=fresh(lifetime=300), interval=600, now=T0 + dt.timedelta(seconds=150))
    assert d.refresh and d.reason == policy.EXPIRING
    # ...but not before half its life: re-signing with the same cached credentials gains nothing.
    d = decide(current="fp", secret=fresh(lifetime=300), interval=600, now=T0 + dt.timedelta(seconds=121))
    assert not d.refresh and d.due == T0 + dt.timedelta(seconds=150)


def test_refresh_request_after_issue_only() -> None:
    later = T0 + dt.timedelta(seconds=30)
    assert (
        decide(current="fp", secret=fresh(), interval=600, now=later, requested_at=later).reason
        == policy.REFRESH_REQUESTED
    )
    assert not decide(current="fp", secret=fresh(), interval=600, now=later, requested_at=T0 - dt.timedelta(1)).refresh


def test_jitter_is_deterministic_and_bounded() -> None:
    values = {policy.jitter_seconds(f"uid-{i}", 600) for i in range(1000)}
    assert all(0 <= v < 60 for v in values) and len(values) > 900
    # the same in every process (a salted hash() would differ by PYTHONHASHSEED): sha256("x") starts 2d711642
    assert policy.jitter_seconds("x", 600) == 0x2D711642 / 0x1_0000_0000 * 0.1 * 600


def test_condition_keeps_transition_time_while_unchanged() -> None:
    first = policy.condition(None, type_="Ready", status="True", reason="A", message="m", generation=1, now=T0)
    later = policy.condition(
        first, type_="Ready", status="True", reason="A", message="n", generation=2, now=T0 + dt.timedelta(hours=1)
    )
    assert later[0]["lastTransitionTime"] == first[0]["lastTransitionTime"] and later[0]["message"] == "n"
    flipped = policy.condition(
        later, type_="Ready", status="False", reason="B", message="x", generation=2, now=T0 + dt.timedelta(hours=2)
    )
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T14:00:00Z"


def test_due_after_issue_is_what_decide_says_of_the_fresh_secret() -> None:
    """The reconciler asks ``due_after_issue`` instead of building the new Secret's state for ``decide``."""
    for interval in (60, 300, 600, 840):
        for jitter in (0.0, 7.5, interval * 0.1):
            for lifetime in (900, 600, 240, 180, 100, 12, 1):  # credentials may cap the token's life
                for margin in (policy.EXPIRY_MARGIN, dt.timedelta(seconds=30)):
                    state = fresh(T0, lifetime)
                    assert state.expires_at is not None
                    expected = decide(current="fp", secret=state, interval=interval, now=T0, jitter=jitter,
                                      margin=margin).due
                    due = policy.due_after_issue(T0, state.expires_at, interval=interval, jitter=jitter,
                                                 margin=margin)
                    assert due == expected, (interval, jitter, lifetime, margin)
