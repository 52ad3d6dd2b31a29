"""region_of and check_hostname take hostnames apart with str methods (they run for every spec); here they
are checked against the regular expressions they replaced, on hostile and ordinary ASCII text.

Non-ASCII text is refused by both now (the expressions, case-insensitive over Unicode, let a few through,
such as the Kelvin sign for "k"); an RDS endpoint or a DNS name on the wire is ASCII.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rdsiam.operator.target import TargetError, check_hostname, region_of
from tests.property.strategies import REGIONS, hosts, rds_host

# The expressions as they were (the oracle).
RDS_HOST = re.compile(
    r"^(?:[a-z0-9-]+\.)+(?P<region>[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+)\.rds\.amazonaws\.com(?:\.cn)?\.?$",
    re.IGNORECASE)
LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)

PROFILE = settings(max_examples=3000, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])


def region_by_pattern(host: str) -> str | None:
    m = RDS_HOST.match(host.strip())
    return m.group("region").lower() if m else None


def hostname_by_pattern(name: str) -> bool:
    return all(LABEL.match(label) and not label.endswith("\n") for label in name.split("."))


ascii_hostish = st.lists(st.sampled_from(list("abzAZ019-.\n _") + ["rds", "amazonaws", "com", "cn", "us-east-1"]),
                         max_size=30).map("".join)
near_rds = st.builds(
    lambda prefix, region, suffix: f"{prefix}{region}{suffix}",
    st.sampled_from(["", ".", "a.", "-.", "a-b.c.", "A.B.", "a..", "a_b.", "x.y.z."]),
    st.sampled_from([*REGIONS, "US-EAST-1", "us-east", "useast-1", "us-east-1a", "u-east-1", "us-iso-east-1",
                     "us-isob-east-1", "us-gov-1"]),
    st.sampled_from([".rds.amazonaws.com", ".rds.amazonaws.com.", ".RDS.AmazonAWS.com", ".rds.amazonaws.com.cn",
                     ".rds.amazonaws.com.cn.", ".rds.amazonaws.com..", ".rds.amazonaws.org", "rds.amazonaws.com",
                     ".rds.amazonaws.com\n", " .rds.amazonaws.com"]))


@PROFILE
@given(st.one_of(rds_host(), near_rds, ascii_hostish, hosts.filter(str.isascii)))
def test_region_of_agrees_with_the_pattern(host: str) -> None:
    assert region_of(host) == region_by_pattern(host)


@given(st.text(max_size=30).filter(lambda s: not s.isascii()))
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_non_ascii_is_no_rds_endpoint(host: str) -> None:
    assert region_of(host + ".us-east-1.rds.amazonaws.com") is None


@PROFILE
@given(st.one_of(rds_host(), near_rds, ascii_hostish, hosts.filter(str.isascii),
                 st.integers(60, 66).map(lambda n: "a" * n + ".b"), st.integers(60, 66).map(lambda n: "-" * n)))
def test_check_hostname_accepts_what_the_pattern_accepted(host: str) -> None:
    h = host.strip()
    h = h[1:-1] if h.startswith("[") and h.endswith("]") else h
    try:
        checked: str | None = check_hostname("spec.host", host)
    except TargetError:
        checked = None
    if checked is not None and (":" in h or h.replace(".", "").isdigit()):
        return  # an IP literal: not what the pattern judged
    name = h[:-1] if h.endswith(".") else h
    expected = bool(h) and len(name) <= 253 and hostname_by_pattern(name)
    assert (checked is not None) == expected, host
    if checked is not None:
        assert checked == name.lower()
