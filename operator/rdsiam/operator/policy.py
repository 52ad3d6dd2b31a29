"""Pure decisions: does a credential need a new token now, and why; what the Ready condition says.

Modelled on cert-manager's renewal policies: a function of (spec fingerprint, current Secret,
refresh request, now) returning (refresh?, reason, message, when to look again). No I/O here.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from typing import Any

UTC = datetime.UTC
# Refresh at the latest this long before the token expires: kubelet needs 60-90 s to update a
# mounted Secret, and apps should open new connections with the new token well before that.
EXPIRY_MARGIN = datetime.timedelta(seconds=180)
# Spread refreshes of many resources over this fraction of the interval (deterministic per resource).
JITTER_FRACTION = 0.1

# Why a refresh happens (used in logs, Events and metrics labels).
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


@dataclasses.dataclass(frozen=True)
class Decision:
    refresh: bool
    reason: str
    message: str
    due: datetime.datetime  # when to decide again if nothing else happens


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # json.dumps would build one per call


def fingerprint(spec: dict[str, Any], secret_name: str) -> str:
    """A short hash of everything the Secret's content depends on (any spec change re-mints)."""
    blob = _CANONICAL.encode({"spec": spec, "secret": secret_name})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def jitter_seconds(uid: str, interval: float) -> float:
    """A deterministic per-resource offset in [0, JITTER_FRACTION * interval)."""
    h = int(hashlib.sha256(uid.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return h * JITTER_FRACTION * interval


def decide(
    *, current: str, secret: SecretState, interval: float, now: datetime.datetime,
    requested_at: datetime.datetime | None = None, jitter: float = 0.0,
    margin: datetime.timedelta = EXPIRY_MARGIN,
) -> Decision:
    """Should a new token be minted now? ``current`` is the spec fingerprint of the resource."""
    if not secret.exists:
        return Decision(True, SECRET_MISSING, "the Secret does not exist yet", now)
    if not secret.complete or secret.issued_at is None or secret.expires_at is None:
        return Decision(True, SECRET_INCOMPLETE, "the Secret lacks keys or annotations of a token", now)
    if secret.fingerprint != current:
        return Decision(True, SPEC_CHANGED, "the spec changed since the token was issued", now)
    if requested_at is not None and requested_at > secret.issued_at:
        return Decision(True, REFRESH_REQUESTED, "a refresh was requested", now)
    expiring_at = secret.expires_at - margin
    if expiring_at <= now:
        # A token capped by short-lived credentials is "expiring" from birth: re-minting it before half
        # its life would re-sign with the same cached credentials on every wakeup.
        half = secret.issued_at + (secret.expires_at - secret.issued_at) / 2
        if now < half:
            return Decision(False, FRESH, "the token is capped by short-lived credentials; "
                            f"next refresh at half its life, {rfc3339(half)}", half)
        return Decision(True, EXPIRING, "the token is about to expire", now)
    next_interval = secret.issued_at + datetime.timedelta(seconds=max(interval - jitter, 1.0))
    if next_interval <= now:
        return Decision(True, INTERVAL_ELAPSED, "the refresh interval has elapsed", now)
    due = min(next_interval, expiring_at)
    return Decision(False, FRESH, f"the token is fresh until {rfc3339(due)}", due)


def due_after_issue(
    issued: datetime.datetime, expires: datetime.datetime, *, interval: float, jitter: float = 0.0,
    margin: datetime.timedelta = EXPIRY_MARGIN,
) -> datetime.datetime:
    """When to look again right after writing a token issued at ``issued``: what ``decide`` says of
    that fresh, complete Secret at ``issued`` (without building the Secret's state to ask it)."""
    expiring_at = expires - margin
    if expiring_at <= issued:
        return max(issued, issued + (expires - issued) / 2)
    return min(issued + datetime.timedelta(seconds=max(interval - jitter, 1.0)), expiring_at)


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
