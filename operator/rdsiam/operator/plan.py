"""The functional core of a reconciliation: what to do, as a pure function of what was gathered.

``reconcile`` gathers an :class:`Input` (the spec's digest, the Secret's state, the resource's status,
now) and asks :func:`plan_refresh` whether to mint; after minting it asks :func:`plan_issued` what to
report; any failure is planned by :func:`plan_failure`. Each answers with one :class:`Plan`: the Ready
condition, the status patch, the Events and when to look again. Whether to mint is decided by
``REFRESH_CHECKS``, small named checks run in order, each returning (reason, message, violated), as in
cert-manager's certificate policies. No I/O, no clock (``now`` is given), no token reaches this module.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import Any

from rdsiam.operator import policy, reasons
from rdsiam.operator.policy import SecretState, rfc3339

TOKEN_LIFETIME = datetime.timedelta(seconds=900)
# A status write that failed after the Secret was written is tried again this soon.
STATUS_RETRY = datetime.timedelta(seconds=2)
# Routine rotations: an Event for each only with --rotation-events (at scale they bury the rest).
ROUTINE = frozenset({policy.INTERVAL_ELAPSED, policy.EXPIRING})


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """What the plan needs of a resource's spec: fixed while the spec is, so built once per parse."""

    namespace: str
    secret_name: str
    fingerprint: str  # of the spec (``policy.fingerprint``)
    interval: float  # spec.refreshInterval, seconds
    jitter: float  # seconds taken off the interval (``policy.jitter_seconds``)
    target: str  # "user@endpoint (region)", as messages name the database
    endpoint: str  # the RDS endpoint signed for (status.endpoint)
    verify: bool  # spec.verify: a Connected condition belongs in status


@dataclasses.dataclass(frozen=True, slots=True)
class Input:
    """What a reconciliation gathered, once the spec is valid and the identity allowed."""

    resource: Resource
    secret: SecretState
    status: Mapping[str, Any]  # the resource's status as last seen
    generation: int | None
    requested_at: datetime.datetime | None  # the refresh-requested annotation
    now: datetime.datetime
    reported: tuple[str, str] | None = None  # (reason, message) of the failure last reported
    rotation_events: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    """A token just minted (``issued`` builds it): its times, as given and as written, and its signer."""

    issued: datetime.datetime
    expires: datetime.datetime
    identity: str | None  # the principal ARN that signed
    early: bool  # the signing credentials expire before the token's own lifetime ends
    issued_at: str  # ``issued`` and ``expires`` in RFC 3339, as the Secret and status have them
    expires_at: str


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    reason: str
    message: str
    permanent: bool = False  # no retry until the resource changes
    retry_after: float = 5.0  # seconds before a retry (the scheduler adds backoff)


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    status: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Next:
    """What the scheduler is told: how it went, and when to look again."""

    ok: bool
    reason: str
    due: datetime.datetime | None = None  # None (and no retry_after): not until the resource changes
    retry_after: float | None = None
    refreshed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    mint: bool  # a token is to be (plan_refresh) or was (plan_issued) minted
    why: str  # the refresh check's reason (IntervalElapsed, Fresh, ...) or the failure's reason
    message: str  # the same in words, for the log
    next: Next
    ready: Condition | None = None  # the Ready condition the status patch sets
    status: dict[str, Any] | None = None  # a merge patch of status; None: nothing to write
    events: tuple[Event, ...] = ()
    if_status_fails: Next | None = None  # told instead when the status write fails; None: ``next``
    reported: tuple[str, str] | None = None  # the failure to remember as reported (None: none)

    @property
    def failed(self) -> bool:
        return not self.next.ok


_MINTING = Next(True, reasons.TOKEN_ISSUED)  # a mint plan's own look: plan_issued says when
_STATUS_BEHIND = Next(False, reasons.KUBERNETES_ERROR, retry_after=STATUS_RETRY.total_seconds())


# ---- whether to mint: the checks, in order -------------------------------------------------

Check = Callable[[Input], tuple[str, str, bool]]


def secret_missing(inp: Input) -> tuple[str, str, bool]:
    return policy.SECRET_MISSING, "the Secret does not exist yet", not inp.secret.exists


def secret_incomplete(inp: Input) -> tuple[str, str, bool]:
    s = inp.secret
    return (policy.SECRET_INCOMPLETE, "the Secret lacks keys or annotations of a token",
            not s.complete or s.issued_at is None or s.expires_at is None)


def spec_changed(inp: Input) -> tuple[str, str, bool]:
    return (policy.SPEC_CHANGED, "the spec changed since the token was issued",
            inp.secret.fingerprint != inp.resource.fingerprint)


def refresh_requested(inp: Input) -> tuple[str, str, bool]:
    # A request stamped ahead of the operator's clock (another machine's `date`) stays later than the
    # token that answered it: the Secret records which request it answered, so it is answered once.
    issued, requested = inp.secret.issued_at, inp.requested_at
    return (policy.REFRESH_REQUESTED, "a refresh was requested",
            requested is not None and issued is not None and requested > issued
            and requested != inp.secret.served_request)


def expiring(inp: Input) -> tuple[str, str, bool]:
    # A token capped by short-lived credentials is "expiring" from birth: re-minting it before half its
    # life would re-sign with the same cached credentials on every wakeup.
    s = inp.secret
    violated = (s.issued_at is not None and s.expires_at is not None
                and s.expires_at - policy.EXPIRY_MARGIN <= inp.now and inp.now >= _half_life(s.issued_at, s.expires_at))
    return policy.EXPIRING, "the token is about to expire", violated


def interval_elapsed(inp: Input) -> tuple[str, str, bool]:
    s = inp.secret
    # Inside the expiry margin ``expiring`` alone decides (a capped token waits for half its life).
    violated = (s.issued_at is not None and s.expires_at is not None
                and s.expires_at - policy.EXPIRY_MARGIN > inp.now
                and _by_interval(s.issued_at, inp.resource.interval, inp.resource.jitter) <= inp.now)
    return policy.INTERVAL_ELAPSED, "the refresh interval has elapsed", violated


REFRESH_CHECKS: tuple[Check, ...] = (
    secret_missing, secret_incomplete, spec_changed, refresh_requested, expiring, interval_elapsed)


def plan_refresh(inp: Input) -> Plan:
    """Before minting: a foreign Secret is a conflict; else the first check violated mints. A fresh
    token is left alone, and status brought in line with it when it is behind (after a restart, or a
    status write that failed)."""
    s, r = inp.secret, inp.resource
    if s.exists and not s.owned:
        return plan_failure(secret_conflict(r.namespace, r.secret_name, s.owner), status=inp.status,
                            generation=inp.generation, reported=inp.reported, now=inp.now)
    for check in REFRESH_CHECKS:
        reason, message, violated = check(inp)
        if violated:
            return Plan(True, reason, message, _MINTING, reported=inp.reported)
    assert s.issued_at is not None and s.expires_at is not None  # secret_incomplete passed
    due = _next_look(s.issued_at, s.expires_at, r.interval, r.jitter, inp.now)
    if s.expires_at - policy.EXPIRY_MARGIN <= inp.now:
        message = f"the token is capped by short-lived credentials; next refresh at half its life, {rfc3339(due)}"
    else:
        message = f"the token is fresh until {rfc3339(due)}"
    fresh = Next(True, reasons.TOKEN_ISSUED, due)
    expires_at = rfc3339(s.expires_at)
    if status_in_line(inp.status, generation=inp.generation, secret_name=r.secret_name, expires_at=expires_at):
        return Plan(False, policy.FRESH, message, fresh, reported=inp.reported)
    ready = Condition("True", reasons.TOKEN_ISSUED,
                      f"Token for {r.target} in Secret {r.secret_name}; expires {expires_at}.")
    status = {
        "observedGeneration": inp.generation,
        "lastRefreshTime": rfc3339(s.issued_at),
        "expiresAt": expires_at,
        "secretName": r.secret_name,
        "endpoint": r.endpoint,
        "conditions": _set(inp.status, ready, type_="Ready", generation=inp.generation, now=inp.now),
    }
    return Plan(False, policy.FRESH, message, fresh, ready=ready, status=status,
                if_status_fails=_STATUS_BEHIND, reported=inp.reported)


def status_in_line(
    status: Mapping[str, Any], *, generation: int | None, secret_name: str, expires_at: str,
) -> bool:
    """Ready=True for this generation and Secret, with the Secret's expiry: a crash (or a failed status
    write) between the Secret write and the status write leaves the previous token's expiry."""
    ready = _condition(status, "Ready")
    return (ready is not None and ready.get("status") == "True" and status.get("observedGeneration") == generation
            and status.get("secretName") == secret_name and status.get("expiresAt") == expires_at)


# ---- after minting -------------------------------------------------------------------------

def issued(at: datetime.datetime, credentials_expiry: datetime.datetime | None, identity: str | None) -> Issued:
    """A token signed at ``at`` stops being accepted when its lifetime ends, or earlier when the
    credentials that signed it expire first."""
    expires, early = at + TOKEN_LIFETIME, False
    if credentials_expiry is not None and credentials_expiry < expires:
        expires, early = credentials_expiry, True
    return Issued(at, expires, identity, early, rfc3339(at), rfc3339(expires))


def plan_issued(inp: Input, why: str, issued: Issued, connected: tuple[str, str, str] | None = None) -> Plan:
    """After the Secret was written: status, conditions, the Events policy and the next look.
    ``connected``: spec.verify's (status, reason, message); None when not probed."""
    r = inp.resource
    issued_at, expires_at = issued.issued_at, issued.expires_at
    first = not inp.secret.exists
    ready = Condition("True", reasons.TOKEN_ISSUED,
                      f"Token for {r.target} written to Secret {r.secret_name}; expires {expires_at}"
                      f"{' (credentials expire first)' if issued.early else ''}.")
    conditions = _set(inp.status, ready, type_="Ready", generation=inp.generation, now=issued.issued)
    events: list[Event] = []
    if connected is not None:
        c_status, c_reason, c_message = connected
        conditions = policy.condition(conditions, type_="Connected", status=c_status, reason=c_reason,
                                      message=c_message, generation=inp.generation, now=issued.issued)
        if c_status == "False":  # "Unknown" (e.g. no CA to check with) is in the condition, not a Warning each time
            events.append(Event("Warning", c_reason, c_message))
    elif not r.verify:  # verify switched off: no stale Connected condition
        conditions = [c for c in conditions if c.get("type") != "Connected"]
    status: dict[str, Any] = {
        "observedGeneration": inp.generation,
        "lastRefreshTime": issued_at,
        "expiresAt": expires_at,
        "secretName": r.secret_name,
        "identity": issued.identity,
        "endpoint": r.endpoint,
        "conditions": conditions,
    }
    old_ready = _condition(inp.status, "Ready")
    recovered = old_ready is not None and old_ready.get("status") != "True"
    if first or recovered or inp.rotation_events or why not in ROUTINE:
        events.append(Event("Normal", reasons.TOKEN_ISSUED if first else reasons.ROTATED,
                            f"{'Issued' if first else 'Rotated'} token ({why}); Secret {r.secret_name} "
                            f"expires {expires_at}."))
    due = _next_look(issued.issued, issued.expires, r.interval, r.jitter, issued.issued)
    if issued.early:
        # Credentials that die before the token would: the expiry margin may already have passed, so
        # come back at half the token's life (the identity cache hands out new credentials by then),
        # never in a tight loop; the refresh interval still applies when it is sooner.
        floor = issued.issued + max((issued.expires - issued.issued) / 2, datetime.timedelta(seconds=1))
        due = min(_by_interval(issued.issued, r.interval, r.jitter), max(due, floor))
    return Plan(
        True, why, ready.message, Next(True, reasons.TOKEN_ISSUED, due, None, True), ready=ready,
        status=status, events=tuple(events),
        # The Secret is written; status catches up on the next pass (``plan_refresh`` sees it behind).
        if_status_fails=Next(True, reasons.TOKEN_ISSUED, min(due, issued.issued + STATUS_RETRY), None, True),
        reported=None)


# ---- failures --------------------------------------------------------------------------------

def plan_failure(
    failure: Failure, *, status: Mapping[str, Any], generation: int | None, reported: tuple[str, str] | None,
    now: datetime.datetime,
) -> Plan:
    """Ready=False and a Warning Event when something changed; the same failure again under backoff
    writes nothing (no flood: the Event already said it all)."""
    reason, message = failure.reason, failure.message
    old_ready = _condition(status, "Ready")
    changed = (reported != (reason, message) or old_ready is None or old_ready.get("reason") != reason
               or old_ready.get("message") != message or status.get("observedGeneration") != generation)
    nxt = Next(False, reason) if failure.permanent else Next(False, reason, retry_after=failure.retry_after)
    if not changed:
        return Plan(False, reason, message, nxt, reported=(reason, message))
    ready = Condition("False", reason, message)
    patch = {"observedGeneration": generation,
             "conditions": _set(status, ready, type_="Ready", generation=generation, now=now)}
    return Plan(False, reason, message, nxt, ready=ready, status=patch, events=(Event("Warning", reason, message),),
                reported=(reason, message))


def invalid_spec(error: str) -> Failure:
    return Failure(reasons.INVALID_SPEC, f"Invalid spec: {error.rstrip('.')}. Fix the field and re-apply; the "
                   "operator will not retry this generation.", permanent=True)


def endpoint_not_resolved(host: str, error: str | None = None) -> Failure:
    return Failure(reasons.ENDPOINT_NOT_RESOLVED,
                   error or f"spec.resolveCNAME: no RDS endpoint found behind {host}.", retry_after=5.0)


def namespace_unreadable(namespace: str, status: int, reason: str) -> Failure:
    # Fail closed: a narrowing namespace rule unread is not "no rule".
    return Failure(reasons.KUBERNETES_ERROR, f"Could not read namespace {namespace} for the tenancy policy: "
                   f"{status} {reason}. Check the operator's RBAC (namespaces get); retrying.", retry_after=5.0)


def identity_not_allowed(rule: str, message: str, *, depends_on_namespace: bool) -> Failure:
    # A refusal decided by the namespace's labels/annotations is retried (slowly): an admin may change
    # those without touching this resource.
    return Failure(reasons.IDENTITY_NOT_ALLOWED, f"Identity not allowed by rule {rule}: {message}.",
                   permanent=not depends_on_namespace, retry_after=60.0)


def identity_failed(reason: str, message: str, retry_after: float | None) -> Failure:
    return Failure(reason, message, retry_after=retry_after or 5.0)


def secret_conflict(namespace: str, name: str, owner: str | None) -> Failure:
    return Failure(
        reasons.SECRET_CONFLICT,
        f"Secret {namespace}/{name} already exists and is not owned by this RdsIamCredential"
        f"{' (it belongs to ' + owner + ')' if owner else ''}; the operator never overwrites or adopts a "
        "Secret it did not create. Delete that Secret or set spec.target.name to a free name.", retry_after=60.0)


def secret_api_failed(
    what: str, namespace: str, name: str, status: int, reason: str, text: str, *, retry_after: float,
) -> Failure:
    """``text``: the API server's message, already cut of anything the Secret held."""
    hint = {403: "check the operator's RBAC for secrets (get, create, update)",
            409: "someone else changed it at the same moment; retrying",
            422: "the API server rejected the Secret; check spec.target labels and annotations"}.get(
        status, "the API server or network had a problem; retrying with backoff")
    return Failure(reasons.KUBERNETES_ERROR,
                   f"Could not {what} Secret {namespace}/{name}: {status} {reason}: {text[:300]}. {hint}.",
                   retry_after=retry_after)


def internal_error(kind: str) -> Failure:
    """``kind``: the exception's type name alone (its text may hold anything)."""
    return Failure(reasons.INTERNAL_ERROR, f"Unexpected {kind} in the operator while reconciling; the operator's "
                   "log has the traceback (please report it). Retrying with backoff.", retry_after=10.0)


# ---- pieces ----------------------------------------------------------------------------------

def _half_life(issued: datetime.datetime, expires: datetime.datetime) -> datetime.datetime:
    return issued + (expires - issued) / 2


def _by_interval(issued: datetime.datetime, interval: float, jitter: float) -> datetime.datetime:
    return issued + datetime.timedelta(seconds=max(interval - jitter, 1.0))


def _next_look(
    issued: datetime.datetime, expires: datetime.datetime, interval: float, jitter: float, now: datetime.datetime,
) -> datetime.datetime:
    """When a token issued at ``issued`` is next due, as seen at ``now`` with no check violated."""
    expiring_at = expires - policy.EXPIRY_MARGIN
    if expiring_at <= now:  # capped by short-lived credentials: half its life
        return max(now, _half_life(issued, expires))
    return min(_by_interval(issued, interval, jitter), expiring_at)


def _condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def _set(
    status: Mapping[str, Any], cond: Condition, *, type_: str, generation: int | None, now: datetime.datetime,
) -> list[dict[str, Any]]:
    return policy.condition(status.get("conditions"), type_=type_, status=cond.status, reason=cond.reason,
                            message=cond.message, generation=generation, now=now)
