"""One reconciliation of one RdsIamCredential: decide, mint, write the Secret, report.

I/O goes through the ``Kube`` and ``Identities`` objects passed in; decisions come from
``policy``. Tokens never leave this module except inside the Secret body.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from rdsiam.operator import policy, reasons
from rdsiam.operator.aws import Identities, IdentityError, IdentityKey, sign_token
from rdsiam.operator.kubeapi import ApiError, Kube
from rdsiam.operator.spec import GROUP, KIND, VERSION, CredentialSpec, SpecError, parse_spec
from rdsiam.operator.target import (
    MYSQL,
    POSTGRES,
    Target,
    TargetError,
    build_dsn,
    check_hostname,
    parse_dsn,
    pgpass_line,
    resolve,
)
from rdsiam.operator.tenancy import TenancyPolicy

logger = logging.getLogger("rdsiam.reconcile")
UTC = datetime.UTC
TOKEN_LIFETIME = datetime.timedelta(seconds=900)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "rdsiam"
CREDENTIAL_LABEL = "rdsiam.io/credential"
FINGERPRINT_ANN = "rdsiam.io/spec-hash"
ISSUED_ANN = "rdsiam.io/issued-at"
EXPIRES_ANN = "rdsiam.io/expires-at"
IDENTITY_ANN = "rdsiam.io/identity"  # the principal ARN that signed (never keys)
REFRESH_ANN = "rdsiam.io/refresh-requested-at"  # set by users (kubectl annotate) to force a rotation
SECRET_KEYS = ("username", "password", "host", "port", "dbname", "dsn", "expires-at")
# The keys a complete Secret has, by engine (``secret_data``): a Secret missing one gets a new token now.
_SECRET_KEY_SETS = {POSTGRES: frozenset((*SECRET_KEYS, "pgpass")), MYSQL: frozenset(SECRET_KEYS)}


@dataclasses.dataclass
class Outcome:
    """What the scheduler needs to know after a reconciliation."""

    next_due: datetime.datetime | None  # None: do not come back until the resource changes
    ok: bool
    reason: str
    refreshed: bool = False
    retry_after: float | None = None  # seconds; for temporary failures (the scheduler adds backoff)


@dataclasses.dataclass
class Stats:
    refreshes: int = 0
    secret_writes: int = 0
    status_writes: int = 0
    events: int = 0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)


class Reconciler:
    def __init__(
        self, kube: Kube, identities: Identities, *, clock: Callable[[], datetime.datetime] | None = None,
        tenancy: TenancyPolicy | None = None, secret_cache: dict[tuple[str, str], dict[str, Any]] | None = None,
        instance: str | None = None, verifier: Callable[..., Awaitable[tuple[str, str, str]]] | None = None,
        resolver: Callable[[str], Awaitable[str | None]] | None = None, rotation_events: bool = False,
        events: EventPoster | None = None,
    ) -> None:
        self.kube = kube
        self.identities = identities
        self.clock = clock or (lambda: datetime.datetime.now(UTC))
        self.tenancy = tenancy or TenancyPolicy()
        # (namespace, name) -> Secret metadata+data as last seen (kept current by the Secret watch).
        self.secrets = secret_cache if secret_cache is not None else {}
        self.instance = instance or os.environ.get("POD_NAME") or "rdsiam"
        self.verifier = verifier
        self.resolver = resolver
        # Routine rotations (interval, expiry) are in status and metrics; an Event for each is opt-in,
        # so a refresh costs one Secret write and one status write. First issue, spec changes,
        # requested refreshes, recoveries and every failure always get an Event.
        self.rotation_events = rotation_events
        self.events = events
        self.stats = Stats()
        self.on_refresh: Callable[[dict[str, Any], str, datetime.datetime], None] | None = None
        self.on_failure: Callable[[dict[str, Any], str], None] | None = None
        self._warned: dict[str, tuple[str, str]] = {}
        # True once ``secrets`` holds every managed Secret (the Secret informer has listed): a miss then
        # means "no Secret of ours", so a first issue creates without reading first (a foreign Secret of
        # that name still answers 409 and is checked before anything is written).
        self.secrets_listed = False
        # (namespace, name) -> the spec as last parsed, what it parsed to and, for a fixed endpoint, the
        # target and fingerprint: refreshes of an unchanged spec skip parsing, resolving and hashing.
        self._parsed: dict[tuple[str, str], _Parsed] = {}

    def forget(self, namespace: str, name: str) -> None:
        """The resource is gone: drop what was kept about it."""
        self._parsed.pop((namespace, name), None)
        self._warned.pop(f"{namespace}/{name}", None)

    def prepare(self, body: dict[str, Any]) -> None:
        """Parse, resolve and hash a listed resource's spec before its first refresh. After a restart
        every resource is listed at once: parsed one after another they cost about a third of what each
        costs inside a burst of refreshes (where the refresh path leaves the CPU's caches cold). A spec
        that does not parse, or whose endpoint is looked up in DNS on each refresh (resolveCNAME), is left
        to reconcile."""
        meta = body.get("metadata", {})
        ns, name, uid, raw = meta["namespace"], meta["name"], meta.get("uid"), body.get("spec")
        memo = self._parsed.get((ns, name))
        if memo is not None and memo.uid == uid and memo.raw == raw:
            return
        try:
            spec = parse_spec(raw)
            if spec.resolve_cname and not spec.signing_host and self.resolver is not None:
                return
            self._remember(ns, name, uid, raw, spec, None)
        except Exception:  # an invalid spec, or one nobody foresaw: reconcile reports it, for this resource alone
            return

    def _remember(
        self, ns: str, name: str, uid: str | None, raw: Any, spec: CredentialSpec, endpoint: str | None,
    ) -> _Parsed:
        """Resolve the target of a parsed spec and keep it with everything else a refresh needs of it."""
        target = resolve(
            dsn=spec.dsn, host=spec.host, port=spec.port, database=spec.database, username=spec.username,
            engine=spec.engine, region=spec.region, signing_host=spec.signing_host or endpoint)
        memo = self._parsed[(ns, name)] = _Parsed(
            json_copy(raw), spec, endpoint, target, policy.fingerprint(raw or {}, spec.target.name or name),
            _identity_key(ns, spec), uid, policy.jitter_seconds(uid or name, spec.refresh_seconds))
        return memo

    async def reconcile(self, body: dict[str, Any]) -> Outcome:
        meta = body.get("metadata", {})
        ns, name = meta["namespace"], meta["name"]
        now = self.clock()
        raw = body.get("spec")
        uid = meta.get("uid")
        memo = self._parsed.get((ns, name))
        if memo is not None and (memo.raw != raw or memo.uid != uid):
            memo = None
        try:
            spec = memo.spec if memo is not None else parse_spec(raw)
            endpoint: str | None = None  # spec.resolveCNAME: the RDS endpoint behind the host, signed for
            dial = (spec.host or (parse_dsn(spec.dsn).host if spec.dsn else None)) if spec.resolve_cname else None
            if dial and not spec.signing_host and self.resolver is not None:
                try:
                    endpoint = await self.resolver(check_hostname("spec.host" if spec.host else "spec.dsn", dial))
                except LookupError as exc:
                    return await self._fail(body, reasons.ENDPOINT_NOT_RESOLVED, str(exc), retry_after=5.0)
                if endpoint is None:
                    return await self._fail(body, reasons.ENDPOINT_NOT_RESOLVED,
                                            f"spec.resolveCNAME: no RDS endpoint found behind {dial}.", retry_after=5.0)
            if memo is not None and memo.endpoint == endpoint:
                target = memo.target
            else:
                memo = self._remember(ns, name, uid, raw, spec, endpoint)
                target = memo.target
        except (SpecError, TargetError) as exc:
            return await self._fail(body, reasons.INVALID_SPEC, f"Invalid spec: {str(exc).rstrip('.')}. Fix the "
                                    "field and re-apply; the operator will not retry this generation.", permanent=True)
        secret_name = spec.target.name or name
        debug = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug(
                "%s/%s: target %s %s:%d/%s as %s, region %s, signing for %s; DSN %s (%d chars, password %s); "
                "%d options; Secret %s, refresh every %s", ns, name, target.engine, target.host, target.port,
                target.database, target.username, target.region, target.signing_endpoint,
                "given" if spec.dsn else "not given", len(spec.dsn or ""),
                "dropped" if spec.dsn and parse_dsn(spec.dsn).had_password else "absent", len(target.options),
                secret_name, spec.refresh_interval)

        key = memo.identity
        try:
            refusal = await self._check_tenancy(ns, spec)
        except ApiError as exc:  # fail closed: a narrowing namespace rule unread is not "no rule"
            return await self._fail(
                body, reasons.KUBERNETES_ERROR, f"Could not read namespace {ns} for the tenancy policy: "
                f"{exc.status} {exc.reason}. Check the operator's RBAC (namespaces get); retrying.", retry_after=5.0)
        if refusal is not None:
            # A refusal decided by the namespace's labels/annotations is retried (slowly): an admin may
            # change those without touching this resource.
            return await self._fail(body, reasons.IDENTITY_NOT_ALLOWED,
                                    f"Identity not allowed by rule {refusal.rule}: {refusal.message}.",
                                    permanent=not refusal.depends_on_namespace, retry_after=60.0)

        try:
            state, current = await self._secret_state(ns, secret_name, meta, _SECRET_KEY_SETS[target.engine])
        except ApiError as exc:
            return await self._fail(body, reasons.KUBERNETES_ERROR, self._kube_message("read", ns, secret_name, exc),
                                    retry_after=2.0)
        if state.exists and not state.owned:
            return await self._fail(
                body, reasons.SECRET_CONFLICT,
                f"Secret {ns}/{secret_name} already exists and is not owned by this RdsIamCredential"
                f"{' (it belongs to ' + state.owner + ')' if state.owner else ''}; the operator never "
                "overwrites or adopts a Secret it did not create. Delete that Secret or set spec.target.name "
                "to a free name.", retry_after=60.0)

        fp = memo.fingerprint
        interval = spec.refresh_seconds
        jitter = memo.jitter
        requested = policy.parse_time((meta.get("annotations") or {}).get(REFRESH_ANN))
        decision = policy.decide(
            current=fp, secret=state, interval=interval, now=now, requested_at=requested, jitter=jitter)
        if not decision.refresh:
            try:
                await self._sync_status_if_behind(body, spec, target, secret_name, state)
            except ApiError as exc:
                logger.warning("%s/%s: could not bring status in line with Secret %s: %s %s; retrying", ns, name,
                               secret_name, exc.status, exc.reason)
                return Outcome(None, False, reasons.KUBERNETES_ERROR, retry_after=2.0)
            return Outcome(decision.due, True, reasons.TOKEN_ISSUED)

        if debug:
            logger.debug("Refreshing %s/%s: %s (endpoint %s, user %s, identity %s)", ns, name, decision.reason,
                         target.signing_endpoint, target.username, key.describe())
        try:
            creds = await self.identities.get(key)
        except IdentityError as exc:
            return await self._fail(body, exc.reason, exc.message, retry_after=exc.retry_after or 5.0)
        token = sign_token(creds, target.signing_host, target.port, target.username, target.region)
        issued = self.clock()
        expires = issued + TOKEN_LIFETIME
        if creds.expiry is not None and creds.expiry < expires:
            expires = creds.expiry
        issued_at, expires_at = policy.rfc3339(issued), policy.rfc3339(expires)
        if debug:
            logger.debug("Token issued for %s/%s (%d bytes, expires %s, signed by %s)", ns, name, len(token),
                         expires_at, creds.arn or "unknown principal")

        secret = self._secret_body(body, spec, target, secret_name, token, issued_at, expires_at, fp, state,
                                   creds.arn)
        del token
        try:
            written = await self._write_secret(ns, secret_name, secret, state, meta)
        except ApiError as exc:
            if exc.status == 409:
                # Someone else wrote it between our read and write: re-read and decide again soon.
                self.secrets.pop((ns, secret_name), None)
            return await self._fail(body, reasons.KUBERNETES_ERROR,
                                    self._kube_message("write", ns, secret_name, exc, sent=secret), retry_after=1.0)
        except _Conflict as exc:
            return await self._fail(body, reasons.SECRET_CONFLICT, str(exc), retry_after=60.0)
        # The write answers with its metadata alone; the keys are the ones just written (PUT replaces them).
        self.secrets[(ns, secret_name)] = _strip_data({"metadata": written.get("metadata") or {},
                                                       "data": secret["data"]})
        self.stats.refreshes += 1
        self.stats.secret_writes += 1

        connected: tuple[str, str, str] | None = None
        if spec.verify and self.verifier is not None:
            connected = await self.verifier(target, secret)
        first = not state.exists
        early = creds.expiry is not None and creds.expiry < issued + TOKEN_LIFETIME
        message = (f"Token for {target.username}@{target.signing_endpoint} ({target.region}) written to Secret "
                   f"{secret_name}; expires {expires_at}{' (credentials expire first)' if early else ''}.")
        status: dict[str, Any] = {
            "observedGeneration": meta.get("generation"),
            "lastRefreshTime": issued_at,
            "expiresAt": expires_at,
            "secretName": secret_name,
            "identity": creds.arn,
            "endpoint": target.signing_endpoint,
        }
        conditions = policy.condition(
            (body.get("status") or {}).get("conditions"), type_="Ready", status="True",
            reason=reasons.TOKEN_ISSUED, message=message, generation=meta.get("generation"), now=issued)
        if connected is not None:
            c_status, c_reason, c_message = connected
            conditions = policy.condition(conditions, type_="Connected", status=c_status, reason=c_reason,
                                          message=c_message, generation=meta.get("generation"), now=issued)
            if c_status == "False":  # "Unknown" (MySQL: not probed) is in the condition, not a Warning each time
                await self._event(body, "Warning", c_reason, c_message)
        elif not spec.verify:  # verify switched off: no stale Connected condition
            conditions = [c for c in conditions if c.get("type") != "Connected"]
        status["conditions"] = conditions
        old_ready = next((c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                         None)
        recovered = old_ready is not None and old_ready.get("status") != "True"
        status_behind = False
        try:
            await self._patch_status(body, status)
        except ApiError as exc:  # the Secret is written; status catches up on a pass soon (see below)
            logger.warning("%s/%s: token written to Secret %s but status not updated: %s %s; retrying", ns, name,
                           secret_name, exc.status, exc.reason)
            status_behind = True
        self._warned.pop(f"{ns}/{name}", None)
        if first or recovered or self.rotation_events or decision.reason not in (policy.INTERVAL_ELAPSED,
                                                                                 policy.EXPIRING):
            await self._event(body, "Normal", reasons.TOKEN_ISSUED if first else reasons.ROTATED,
                              f"{'Issued' if first else 'Rotated'} token ({decision.reason}); Secret {secret_name} "
                              f"expires {expires_at}.")
        if self.on_refresh is not None:
            self.on_refresh(body, decision.reason, expires)
        due = policy.due_after_issue(issued, expires, interval=interval, jitter=jitter)
        if early:
            # Credentials that die before the token would: the expiry margin may already have passed, so
            # come back at half the token's life (the identity cache hands out new credentials by then),
            # never in a tight loop; the refresh interval still applies when it is sooner.
            floor = issued + max((expires - issued) / 2, datetime.timedelta(seconds=1))
            by_interval = issued + datetime.timedelta(seconds=max(interval - jitter, 1.0))
            due = min(by_interval, max(due, floor))
        if status_behind:
            due = min(due, issued + datetime.timedelta(seconds=2))
        return Outcome(due, True, reasons.TOKEN_ISSUED, refreshed=True)

    # ---- pieces -------------------------------------------------------------------------------

    async def _check_tenancy(self, ns: str, spec: CredentialSpec) -> Any:
        namespace_obj = None
        if self.tenancy.needs_namespace:
            namespace_obj = await self.kube.get_namespace(ns)  # None when missing: no label, no annotation
        return self.tenancy.check(namespace=ns, role_arn=spec.assume_role_arn,
                                  service_account=spec.service_account_name, namespace_obj=namespace_obj)

    async def _secret_state(
        self, ns: str, name: str, meta: dict[str, Any], keys: frozenset[str],
    ) -> tuple[policy.SecretState, Any]:
        """The Secret as the cache (or a read) has it; ``keys``: the keys a complete one has."""
        cached = self.secrets.get((ns, name))
        # Read it when the cache cannot tell: before the informer has listed, or after someone else changed
        # it (the metadata-only watch does not say which keys it has now).
        if (cached is None and not self.secrets_listed) or (cached is not None and cached.get("keys") is None):
            cached = None
            fetched = await self.kube.get_secret(ns, name)
            if fetched is not None:
                cached = _strip_data(fetched)
            if cached is not None and _owned_by(cached, meta.get("uid")):
                self.secrets[(ns, name)] = cached
            else:  # only our own Secrets are kept (a foreign one is checked again on each write)
                self.secrets.pop((ns, name), None)
        return _state_of(cached, meta.get("uid"), keys), cached

    def _secret_body(
        self, body: dict[str, Any], spec: CredentialSpec, target: Target, secret_name: str, token: str,
        issued_at: str, expires_at: str, fp: str, state: policy.SecretState, identity: str | None,
    ) -> dict[str, Any]:
        meta = body["metadata"]
        data = secret_data(target, token, expires_at)
        labels = {**spec.target.labels, MANAGED_BY: MANAGER, CREDENTIAL_LABEL: label_value(meta["name"])}
        annotations = {**spec.target.annotations, FINGERPRINT_ANN: fp, ISSUED_ANN: issued_at,
                       EXPIRES_ANN: expires_at}
        if identity:
            annotations[IDENTITY_ANN] = identity
        metadata: dict[str, Any] = {
            "name": secret_name, "namespace": meta["namespace"], "labels": labels, "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }],
        }
        if state.resource_version:
            metadata["resourceVersion"] = state.resource_version
        return {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    async def _write_secret(
        self, ns: str, name: str, secret: dict[str, Any], state: policy.SecretState, meta: dict[str, Any],
    ) -> dict[str, Any]:
        if state.exists and state.resource_version:  # conditional: a 409 if anyone wrote it since
            return await self.kube.replace_secret(ns, name, secret)
        if not state.exists:
            try:
                return await self.kube.create_secret(ns, secret)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        # It appeared meanwhile, or no version of it is known (never an unconditional write): read it, and
        # only ever replace it when it is ours.
        existing = await self.kube.get_secret(ns, name)
        if existing is None or not _owned_by(existing, meta.get("uid")):
            owner = _owner_of(existing) if existing else None
            raise _Conflict(
                f"Secret {ns}/{name} already exists and is not owned by this RdsIamCredential"
                f"{' (it belongs to ' + owner + ')' if owner else ''}; the operator never overwrites or adopts "
                "a Secret it did not create. Delete that Secret or set spec.target.name to a free name.")
        secret["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return await self.kube.replace_secret(ns, name, secret)

    async def _sync_status_if_behind(
        self, body: dict[str, Any], spec: CredentialSpec, target: Target, secret_name: str,
        state: policy.SecretState,
    ) -> None:
        """After a restart or a failed status write: make status match a still-fresh Secret."""
        status = body.get("status") or {}
        meta = body["metadata"]
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        assert state.expires_at is not None and state.issued_at is not None
        # expiresAt too: a crash (or a failed status write) between the Secret write and the status write
        # leaves Ready=True with the previous token's expiry.
        if ready and ready.get("status") == "True" and status.get("observedGeneration") == meta.get("generation") \
                and status.get("secretName") == secret_name \
                and status.get("expiresAt") == policy.rfc3339(state.expires_at):
            return
        message = (f"Token for {target.username}@{target.signing_endpoint} ({target.region}) in Secret "
                   f"{secret_name}; expires {policy.rfc3339(state.expires_at)}.")
        await self._patch_status(body, {
            "observedGeneration": meta.get("generation"),
            "lastRefreshTime": policy.rfc3339(state.issued_at),
            "expiresAt": policy.rfc3339(state.expires_at),
            "secretName": secret_name,
            "endpoint": target.signing_endpoint,
            "conditions": policy.condition(status.get("conditions"), type_="Ready", status="True",
                                           reason=reasons.TOKEN_ISSUED, message=message,
                                           generation=meta.get("generation"), now=self.clock()),
        })

    async def _fail(
        self, body: dict[str, Any], reason: str, message: str, *, permanent: bool = False,
        retry_after: float | None = None,
    ) -> Outcome:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
        logger.warning("%s/%s: %s: %s", ns, name, reason, message)
        if self.on_failure is not None:
            self.on_failure(body, reason)
        status = body.get("status") or {}
        conditions = policy.condition(
            status.get("conditions"), type_="Ready", status="False", reason=reason, message=message,
            generation=meta.get("generation"), now=self.clock())
        # Write status and a Warning Event when something changed; repeated identical failures under
        # backoff only refresh nothing (no flood), the Event's message already says it all.
        previous = self._warned.get(f"{ns}/{name}")
        old_ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        changed = previous != (reason, message) or not old_ready or old_ready.get("reason") != reason \
            or old_ready.get("message") != message or status.get("observedGeneration") != meta.get("generation")
        if changed:
            try:
                await self._patch_status(body, {"observedGeneration": meta.get("generation"),
                                                "conditions": conditions})
            except ApiError as exc:
                logger.warning("%s/%s: could not write status: %s", ns, name, exc.status)
            await self._event(body, "Warning", reason, message)
            self._warned[f"{ns}/{name}"] = (reason, message)
        if permanent:
            return Outcome(None, False, reason)
        return Outcome(None, False, reason, retry_after=retry_after or 5.0)

    async def internal_error(self, body: dict[str, Any], exc: Exception) -> Outcome:
        """A reconciliation that raised (a bug, or a failure nobody foresaw): said in status and a Warning
        Event like any other failure, by the exception's type alone (its text may hold anything), and
        retried with backoff. Never raises: reporting must not fail the scheduler."""
        message = (f"Unexpected {type(exc).__name__} in the operator while reconciling; the operator's log has "
                   "the traceback (please report it). Retrying with backoff.")
        try:
            return await self._fail(body, reasons.INTERNAL_ERROR, message, retry_after=10.0)
        except Exception as again:  # a body too malformed to report on, or the report itself failing
            logger.error("Could not report an internal error: %s", type(again).__name__)
            return Outcome(None, False, reasons.INTERNAL_ERROR, retry_after=10.0)

    async def _patch_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        await self.kube.patch_status(meta["namespace"], meta["name"], status)
        self.stats.status_writes += 1
        # Keep our view current so a later decision sees what we wrote: the status the merge patch made
        # (the server's answer is not decoded; the watch brings the whole object anyway).
        body["status"] = merge_patch(body.get("status") or {}, status)

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = policy.rfc3339(self.clock())
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": "rdsiam"}, "reportingComponent": "rdsiam.io/operator",
            "reportingInstance": self.instance, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self.stats.events += 1
        if self.events is not None:
            self.events.post(meta["namespace"], event)
            return
        await post_event(self.kube, meta["namespace"], event)

    @staticmethod
    def _kube_message(what: str, ns: str, name: str, exc: ApiError, sent: dict[str, Any] | None = None) -> str:
        """``sent``: the Secret written; any of its values the answer quotes verbatim (an admission webhook
        may), as sent or decoded, is cut out before the text goes to status, Events and the log
        (``kubeapi.scrub`` has already cut what looks like a token)."""
        text = exc.message
        for value in ((sent or {}).get("data") or {}).values():
            for shown in (value, base64.b64decode(value).decode(errors="replace")):
                if len(shown) >= 16:  # a port or a short user name is no secret, and would cut too much
                    text = text.replace(shown, "<redacted>")
        hint = {403: "check the operator's RBAC for secrets (get, create, update)",
                409: "someone else changed it at the same moment; retrying",
                422: "the API server rejected the Secret; check spec.target labels and annotations"}.get(
            exc.status, "the API server or network had a problem; retrying with backoff")
        return f"Could not {what} Secret {ns}/{name}: {exc.status} {exc.reason}: {text[:300]}. {hint}."


def secret_data(target: Target, token: str, expires_at: str) -> dict[str, str]:
    """The Secret's keys (DESIGN's contract), in clear text: one token, every key from the same generation.
    ``expires_at``: the token's expiry in RFC 3339 (``policy.rfc3339``)."""
    data = {
        "username": target.username,
        "password": token,
        "host": target.host,
        "port": str(target.port),
        "dbname": target.database,
        "dsn": build_dsn(target, token),
        "expires-at": expires_at,
    }
    if target.engine == POSTGRES:
        data["pgpass"] = pgpass_line(target, token)
    return data


class _Conflict(Exception):
    pass


# Never changed once built, but not frozen: a frozen dataclass's __init__ costs about five times the
# instructions (13,000 for eight fields), and one is built for every resource after each restart.
@dataclasses.dataclass(slots=True)
class _Parsed:
    raw: Any  # a copy of the spec as watched (compared by value)
    spec: CredentialSpec
    endpoint: str | None  # the resolved RDS endpoint this target was built for (spec.resolveCNAME)
    target: Target
    fingerprint: str
    identity: IdentityKey
    uid: str | None  # the resource this was parsed for (a new one of the same name starts afresh)
    jitter: float  # policy.jitter_seconds of the resource and its interval


_OPERATOR_IDENTITY = IdentityKey()  # the operator's own identity: most specs, one key (frozen)


def _identity_key(namespace: str, spec: CredentialSpec) -> IdentityKey:
    if not (spec.service_account_name or spec.assume_role_arn or spec.external_id or spec.session_name
            or spec.assume_role_duration_seconds):
        return _OPERATOR_IDENTITY
    return IdentityKey(
        namespace=namespace if (spec.service_account_name or spec.assume_role_arn) else None,
        service_account=spec.service_account_name, role_arn=spec.assume_role_arn,
        external_id=spec.external_id, session_name=spec.session_name,
        duration=spec.assume_role_duration_seconds)


def json_copy(value: Any) -> Any:
    """A deep copy of decoded JSON (dicts, lists, scalars): several times faster than ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``target`` with ``patch`` (neither is changed): what the API server
    stores for an ``application/merge-patch+json`` request.

    ``rdsiam.testing.kube.patching`` has its twins (this and ``json_copy``), kept apart on purpose: the
    operator's image does not ship the testing package's dependencies, and the emulator stays an
    independent check of what the operator predicts the server does."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            merged[key] = merge_patch(merged.get(key), value)
        else:
            merged[key] = value
    return merged


async def post_event(kube: Kube, namespace: str, event: dict[str, Any]) -> None:
    try:
        await kube.post_event(namespace, event)
    except ApiError as exc:  # Events are best effort; never fail a refresh over them
        logger.debug("Event not posted in %s: %s", namespace, exc.status)


class EventPoster:
    """Posts Events off the refresh path, a few at a time, so a burst of first issues (thousands of
    resources at operator start) writes Secrets first and lets its Events trail."""

    def __init__(self, kube: Kube, workers: int = 2, limit: int = 20_000) -> None:
        self.kube = kube
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(limit)
        self.dropped = 0
        self._tasks = [asyncio.create_task(self._work(), name=f"rdsiam events {i}") for i in range(workers)]

    def post(self, namespace: str, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((namespace, event))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _work(self) -> None:
        while True:
            namespace, event = await self.queue.get()
            await post_event(self.kube, namespace, event)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _strip_data(secret: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a Secret: metadata and which keys exist (never the token).

    ``keys`` is None for a ``PartialObjectMetadata`` (a metadata-only watch event): unknown until read.
    """
    meta = secret.get("metadata", {})
    keys: list[str] | None
    if secret.get("kind") == "PartialObjectMetadata":
        keys = None
    elif "data" in secret:
        keys = sorted((secret.get("data") or {}).keys())
    else:
        keys = secret.get("keys", [])
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion", "labels",
                                              "annotations", "ownerReferences")},
        "keys": keys,
    }


def secret_name_of(body: dict[str, Any]) -> str:
    """The name of the Secret a watched resource's spec names now (``spec.target.name``, else its own)."""
    target = (body.get("spec") or {}).get("target") or {}
    return str(target.get("name") or body["metadata"]["name"])


def label_value(name: str) -> str:
    """A resource's name as the value of the ``rdsiam.io/credential`` label: label values are at most 63
    characters and names up to 253, so a longer name is cut and a hash of the whole appended."""
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('.-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _owned_by(secret: dict[str, Any] | None, uid: str | None) -> bool:
    refs = (secret or {}).get("metadata", {}).get("ownerReferences") or []
    return uid is not None and any(r.get("uid") == uid for r in refs)


def _owner_of(secret: dict[str, Any]) -> str | None:
    refs = secret.get("metadata", {}).get("ownerReferences") or []
    ctrl = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    return f"{ctrl.get('kind')}/{ctrl.get('name')}" if ctrl else None


def _state_of(secret: dict[str, Any] | None, uid: str | None, required: frozenset[str]) -> policy.SecretState:
    if secret is None:
        return policy.SecretState()
    meta = secret.get("metadata", {})
    ann = meta.get("annotations") or {}
    owned = _owned_by(secret, uid)
    keys = secret.get("keys") or ()
    return policy.SecretState(
        exists=True, owned=owned, owner=None if owned else _owner_of(secret),
        fingerprint=ann.get(FINGERPRINT_ANN), issued_at=policy.parse_time(ann.get(ISSUED_ANN)),
        expires_at=policy.parse_time(ann.get(EXPIRES_ANN)), complete=required.issubset(keys),
        resource_version=meta.get("resourceVersion"))


def backoff(attempt: int, minimum: float, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter, never below ``minimum``."""
    # The exponent is capped: a resource failing for days reaches attempt 1024, where 2.0 ** attempt overflows.
    return max(minimum, min(cap, 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0))
