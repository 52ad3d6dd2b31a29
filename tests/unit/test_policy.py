"""The decision's vocabulary: jitter, fingerprints, times and conditions (the decision itself: test_plan)."""

from __future__ import annotations

import datetime as dt

import pytest

from rdsiam.operator import policy

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def test_jitter_is_deterministic_and_bounded() -> None:
    values = {policy.jitter_seconds(f"uid-{i}", 600) for i in range(1000)}
    assert all(0 <= v < 60 for v in values) and len(values) > 900
    # the same in every process (a salted hash() would differ by PYTHONHASHSEED): sha256("x") starts 2d711642
    assert policy.jitter_seconds("x", 600) == 0x2D711642 / 0x1_0000_0000 * 0.1 * 600


def test_fingerprint_follows_the_spec_and_the_secret_name_not_key_order() -> None:
    fp = policy.fingerprint({"host": "h", "port": 5432}, "s")
    assert fp == policy.fingerprint({"port": 5432, "host": "h"}, "s") and len(fp) == 16
    assert fp != policy.fingerprint({"host": "h", "port": 5433}, "s")
    assert fp != policy.fingerprint({"host": "h", "port": 5432}, "t")


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-01T12:00:00Z", T0),
    ("2026-01-01T12:00:00", T0),  # no zone: UTC
    ("2026-01-01T13:00:00+01:00", T0),
    ("not a time", None),
    ("", None),
    (None, None),
], ids=["zulu", "naive", "offset", "garbage", "empty", "absent"])
def test_parse_time(text: str | None, expected: dt.datetime | None) -> None:
    assert policy.parse_time(text) == expected


def test_rfc3339_is_whole_seconds_utc() -> None:
    local = dt.datetime(2026, 1, 1, 13, 0, 0, 999_999, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert policy.rfc3339(local) == "2026-01-01T12:00:00Z"


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


def test_ready_comes_first_and_other_conditions_are_kept() -> None:
    connected = policy.condition(None, type_="Connected", status="True", reason="C", message="c", generation=1,
                                 now=T0)
    both = policy.condition(connected, type_="Ready", status="True", reason="A", message="m", generation=None,
                            now=T0)
    assert [c["type"] for c in both] == ["Ready", "Connected"] and "observedGeneration" not in both[0]
