"""The vocabulary of the refresh decision: the Secret's state, why a refresh happens, the spec's
fingerprint, per-resource jitter, times as Kubernetes writes them, and conditions. Pure; ``plan``
makes the decisions with it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from typing import Any

UTC = datetime.UTC
# Refresh at the latest this long before the token expires: the kubelet takes a while to update a
# mounted Secret, and apps should open new connections with the new token well before that.
EXPIRY_MARGIN = datetime.timedelta(seconds=180)
# Spread refreshes of many resources over this fraction of the interval (deterministic per resource).
JITTER_FRACTION = 0.1

# Why a refresh happens, or not (the checks of ``plan.REFRESH_CHECKS``; in logs, Events and metrics).
SECRET_MISSING = "SecretMissing"
SECRET_INCOMPLETE = "SecretIncomplete"
SPEC_CHANGED = "SpecChanged"
REFRESH_REQUESTED = "RefreshRequested"
EXPIRING = "Expiring"
INTERVAL_ELAPSED = "IntervalElapsed"
FRESH = "Fresh"


@dataclasses.dataclass(frozen=True)
class SecretState:
    """What the operator knows about the target Secret (from its cache or a GET)."""

    exists: bool = False
    owned: bool = False
    owner: str | None = None  # "Kind/name" of another controller, when not owned
    fingerprint: str | None = None
    issued_at: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None
    complete: bool = False
    resource_version: str | None = None
    served_request: datetime.datetime | None = None  # the refresh request this token answered, if any


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # json.dumps would build one per call


def fingerprint(spec: dict[str, Any], secret_name: str) -> str:
    """A short hash of everything the Secret's content depends on (any spec change re-mints)."""
    blob = _CANONICAL.encode({"spec": spec, "secret": secret_name})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def jitter_seconds(uid: str, interval: float) -> float:
    """A deterministic per-resource offset in [0, JITTER_FRACTION * interval)."""
    h = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return h * JITTER_FRACTION * interval


def rfc3339(when: datetime.datetime) -> str:
    """``2026-11-21T10:00:00Z`` (whole seconds, UTC), as Kubernetes writes times."""
    u = when if when.tzinfo is UTC else when.astimezone(UTC)
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def condition(
    previous: list[dict[str, Any]] | None, *, type_: str, status: str, reason: str, message: str,
    generation: int | None, now: datetime.datetime,
) -> list[dict[str, Any]]:
    """The conditions list with ``type_`` set; lastTransitionTime kept while the status is unchanged."""
    others = [c for c in previous or [] if c.get("type") != type_]
    old = next((c for c in previous or [] if c.get("type") == type_), None)
    transition = old.get("lastTransitionTime") if old and old.get("status") == status else None
    new = {
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": transition or rfc3339(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    ordered = [new, *others] if type_ == "Ready" else [*others, new]
    return sorted(ordered, key=lambda c: (c.get("type") != "Ready", c.get("type", "")))
