"""One reconciliation of one RdsIamCredential: gather, plan, apply (mint, write the Secret, report).

The imperative shell around ``plan``: it gathers what a decision needs (the parsed spec, the tenancy
verdict, the Secret's state, credentials once the plan says mint), and carries out what the plan
decides. I/O goes through the ``Kube`` and ``Identities`` objects passed in. Tokens never leave this
module except inside the Secret body.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

from rdsiam.operator import plan, policy
from rdsiam.operator.aws import Identities, IdentityError, IdentityKey, sign_token
from rdsiam.operator.kube import ApiError, Kube
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
from rdsiam.operator.template import TemplateError, Templates, variables
from rdsiam.operator.tenancy import TenancyPolicy

logger = logging.getLogger("rdsiam.reconcile")
UTC = datetime.UTC

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "rdsiam"
CREDENTIAL_LABEL = "rdsiam.io/credential"
FINGERPRINT_ANN = "rdsiam.io/spec-hash"
ISSUED_ANN = "rdsiam.io/issued-at"
EXPIRES_ANN = "rdsiam.io/expires-at"
IDENTITY_ANN = "rdsiam.io/identity"  # the principal ARN that signed (never keys)
REFRESH_ANN = "rdsiam.io/refresh-requested-at"  # set by users (kubectl annotate) to force a rotation
SERVED_ANN = "rdsiam.io/refresh-served"  # on the Secret: the REFRESH_ANN value its token answered
SECRET_KEYS = ("username", "password", "host", "port", "dbname", "dsn", "expires-at")
# The keys a complete Secret has, by engine (``secret_data``): a Secret missing one gets a new token now.
# A template's keys are added to them (mergePolicy Merge) or replace them (Replace): ``required_keys``.
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
        events: Callable[[dict[str, Any], str, str, str], None] | None = None,
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
        # Called as events(body, type, reason, message); None: posted through ``kube`` here.
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
        secret_name = spec.target.name or name
        resource = plan.Resource(
            ns, secret_name, policy.fingerprint(raw or {}, secret_name), spec.refresh_seconds,
            policy.jitter_seconds(uid or name, spec.refresh_seconds),
            f"{target.username}@{target.signing_endpoint} ({target.region})", target.signing_endpoint, spec.verify)
        memo = self._parsed[(ns, name)] = _Parsed(
            json_copy(raw), spec, endpoint, target, resource, _identity_key(ns, spec), uid,
            required_keys(target.engine, _templates(spec)))
        return memo

    async def reconcile(self, body: dict[str, Any]) -> Outcome:
        """Gather what the decision needs, ``plan`` it, apply the plan (mint and write when it says so)."""
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
                    return await self._fail(body, plan.endpoint_not_resolved(dial, str(exc)))
                if endpoint is None:
                    return await self._fail(body, plan.endpoint_not_resolved(dial))
            if memo is not None and memo.endpoint == endpoint:
                target = memo.target
            else:
                memo = self._remember(ns, name, uid, raw, spec, endpoint)
                target = memo.target
        except (SpecError, TargetError) as exc:
            return await self._fail(body, plan.invalid_spec(str(exc)))
        secret_name = memo.resource.secret_name
        debug = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug(
                "%s/%s: target %s %s:%d/%s as %s, region %s, signing for %s; DSN %s (%d chars, password %s); "
                "%d options; Secret %s, refresh every %s", ns, name, target.engine, target.host, target.port,
                target.database, target.username, target.region, target.signing_endpoint,
                "given" if spec.dsn else "not given", len(spec.dsn or ""),
                "dropped" if spec.dsn and parse_dsn(spec.dsn).had_password else "absent", len(target.options),
                secret_name, spec.refresh_interval)

        try:
            refusal = await self._check_tenancy(ns, spec)
        except ApiError as exc:
            return await self._fail(body, plan.namespace_unreadable(ns, exc.status, exc.reason))
        if refusal is not None:
            return await self._fail(body, plan.identity_not_allowed(
                refusal.rule, refusal.message, depends_on_namespace=refusal.depends_on_namespace))
        try:
            state = await self._secret_state(ns, secret_name, meta, memo.keys)
        except ApiError as exc:
            return await self._fail(body, plan.secret_api_failed(
                "read", ns, secret_name, exc.status, exc.reason, exc.message, retry_after=2.0))

        inp = plan.Input(
            memo.resource, state, body.get("status") or {}, meta.get("generation"),
            policy.parse_time((meta.get("annotations") or {}).get(REFRESH_ANN)), now,
            self._warned.get(f"{ns}/{name}"), self.rotation_events)
        decided = plan.plan_refresh(inp)
        if not decided.mint:
            return await self._apply(body, decided, secret_name)

        if debug:
            logger.debug("Refreshing %s/%s: %s (endpoint %s, user %s, identity %s)", ns, name, decided.why,
                         target.signing_endpoint, target.username, memo.identity.describe())
        try:
            creds = await self.identities.get(memo.identity)
        except IdentityError as exc:
            return await self._fail(body, plan.identity_failed(exc.reason, exc.message, exc.retry_after))
        token = sign_token(creds, target.signing_host, target.port, target.username, target.region)
        issued = plan.issued(self.clock(), creds.expiry, creds.arn)
        if debug:
            logger.debug("Token issued for %s/%s (%d bytes, expires %s, signed by %s)", ns, name, len(token),
                         issued.expires_at, creds.arn or "unknown principal")

        standard = secret_data(target, token, issued.expires_at)
        try:
            data = _with_templates(standard, target, token, issued.expires_at, _templates(spec))
        except TemplateError as exc:  # its message never holds a rendered value
            return await self._fail(body, plan.invalid_spec(str(exc)))
        finally:
            del token
        secret = self._secret_body(body, spec, secret_name, data, issued.issued_at, issued.expires_at,
                                   memo.resource.fingerprint, state, creds.arn)
        try:
            written = await self._write_secret(ns, secret_name, secret, state, meta)
        except ApiError as exc:
            if exc.status in (404, 409):
                # Someone else wrote (or deleted) it between our read and write: re-read, decide again soon.
                self.secrets.pop((ns, secret_name), None)
            return await self._fail(body, plan.secret_api_failed(
                "write", ns, secret_name, exc.status, exc.reason, _redact(exc.message, secret), retry_after=1.0))
        except _Conflict as exc:
            return await self._fail(body, plan.secret_conflict(ns, secret_name, exc.owner))
        # The write answers with its metadata alone; the keys are the ones just written (PUT replaces them).
        self.secrets[(ns, secret_name)] = _strip_data({"metadata": written.get("metadata") or {},
                                                       "data": secret["data"]})
        self.stats.refreshes += 1
        self.stats.secret_writes += 1

        connected: tuple[str, str, str] | None = None
        if spec.verify and self.verifier is not None:
            # The token as the standard keys hold it: with mergePolicy Replace the Secret may have none of them.
            connected = await self.verifier(target, {"metadata": secret["metadata"], "data": _encode(standard)})
        done = plan.plan_issued(inp, decided.why, issued, connected)
        outcome = await self._apply(body, done, secret_name)
        if self.on_refresh is not None:
            self.on_refresh(body, decided.why, issued.expires)
        return outcome

    async def _apply(self, body: dict[str, Any], p: plan.Plan, secret_name: str = "") -> Outcome:
        """Write the plan's status, post its Events, and tell the scheduler what it says."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if p.failed:
            self.stats.failures[p.why] = self.stats.failures.get(p.why, 0) + 1
            logger.warning("%s/%s: %s: %s", ns, name, p.why, p.message)
            if self.on_failure is not None:
                self.on_failure(body, p.why)
        told = p.next
        if p.status is not None:
            try:
                await self._patch_status(body, p.status)
            except ApiError as exc:
                if p.failed:
                    logger.warning("%s/%s: could not write status: %s", ns, name, exc.status)
                elif p.mint:
                    logger.warning("%s/%s: token written to Secret %s but status not updated: %s %s; retrying",
                                   ns, name, secret_name, exc.status, exc.reason)
                else:
                    logger.warning("%s/%s: could not bring status in line with Secret %s: %s %s; retrying", ns,
                                   name, secret_name, exc.status, exc.reason)
                told = p.if_status_fails or told
        if p.reported is None:
            self._warned.pop(f"{ns}/{name}", None)
        else:
            self._warned[f"{ns}/{name}"] = p.reported
        for event in p.events:
            await self._event(body, event.type, event.reason, event.message)
        return Outcome(told.due, told.ok, told.reason, refreshed=told.refreshed, retry_after=told.retry_after)

    # ---- pieces -------------------------------------------------------------------------------

    async def _check_tenancy(self, ns: str, spec: CredentialSpec) -> Any:
        namespace_obj = None
        if self.tenancy.needs_namespace:
            namespace_obj = await self.kube.get_namespace(ns)  # None when missing: no label, no annotation
        return self.tenancy.check(namespace=ns, role_arn=spec.assume_role_arn,
                                  service_account=spec.service_account_name, namespace_obj=namespace_obj)

    async def _secret_state(
        self, ns: str, name: str, meta: dict[str, Any], keys: frozenset[str],
    ) -> policy.SecretState:
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
        return _state_of(cached, meta.get("uid"), keys)

    def _secret_body(
        self, body: dict[str, Any], spec: CredentialSpec, secret_name: str, data: dict[str, str],
        issued_at: str, expires_at: str, fp: str, state: policy.SecretState, identity: str | None,
    ) -> dict[str, Any]:
        meta = body["metadata"]
        labels = {**spec.target.labels, MANAGED_BY: MANAGER, CREDENTIAL_LABEL: label_value(meta["name"])}
        annotations = {**spec.target.annotations, FINGERPRINT_ANN: fp, ISSUED_ANN: issued_at,
                       EXPIRES_ANN: expires_at}
        if requested := (meta.get("annotations") or {}).get(REFRESH_ANN):
            annotations[SERVED_ANN] = requested
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
            "data": _encode(data),
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
            raise _Conflict(_owner_of(existing) if existing else None)
        secret["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return await self.kube.replace_secret(ns, name, secret)

    async def _fail(self, body: dict[str, Any], failure: plan.Failure) -> Outcome:
        meta = body["metadata"]
        p = plan.plan_failure(failure, status=body.get("status") or {}, generation=meta.get("generation"),
                              reported=self._warned.get(f"{meta['namespace']}/{meta['name']}"), now=self.clock())
        return await self._apply(body, p)

    async def internal_error(self, body: dict[str, Any], exc: Exception) -> Outcome:
        """A reconciliation that raised (a bug, or a failure nobody foresaw): said in status and a Warning
        Event like any other failure, by the exception's type alone (its text may hold anything), and
        retried with backoff. Never raises: reporting must not fail the caller."""
        failure = plan.internal_error(type(exc).__name__)
        try:
            return await self._fail(body, failure)
        except Exception as again:  # a body too malformed to report on, or the report itself failing
            logger.error("Could not report an internal error: %s", type(again).__name__)
            return Outcome(None, False, failure.reason, retry_after=failure.retry_after)

    async def _patch_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        await self.kube.patch_status(meta["namespace"], meta["name"], status)
        self.stats.status_writes += 1
        # Keep our view current so a later decision sees what we wrote: the status the merge patch made
        # (the server's answer is not decoded; the watch brings the whole object anyway).
        body["status"] = merge_patch(body.get("status") or {}, status)

    async def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Best effort: an Event that cannot be posted never fails a refresh."""
        meta = body["metadata"]
        self.stats.events += 1
        if self.events is not None:
            try:
                self.events(body, type_, reason, message)
            except Exception as exc:
                logger.warning("Event not posted in %s: %s", meta["namespace"], type(exc).__name__)
            return
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
        try:
            await self.kube.post_event(meta["namespace"], event)
        except ApiError as exc:
            logger.debug("Event not posted in %s: %s", meta["namespace"], exc.status)


def _redact(text: str, sent: dict[str, Any]) -> str:
    """An API server's answer to writing ``sent`` (a Secret) without any of its values, as sent or
    decoded: an admission webhook may quote them (``kube.scrub`` has already cut what looks like a token)."""
    for value in (sent.get("data") or {}).values():
        for shown in (value, base64.b64decode(value).decode(errors="replace")):
            if len(shown) >= 16:  # a port or a short user name is no secret, and would cut too much
                text = text.replace(shown, "<redacted>")
    return text


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


def _templates(spec: CredentialSpec) -> Templates | None:
    template = spec.target.template
    return template.compiled if template is not None and template.data else None


def _with_templates(
    standard: dict[str, str], target: Target, token: str, expires_at: str, templates: Templates | None,
) -> dict[str, str]:
    """The Secret's data: the standard keys, with the templates' keys added (mergePolicy Merge; the spec
    refuses a template named like a standard key) or instead of them (Replace). TemplateError when one
    does not render."""
    if templates is None:
        return standard
    rendered = templates.render(variables(target, token, expires_at, standard["dsn"]))
    return rendered if templates.replace else {**standard, **rendered}


def required_keys(engine: str, templates: Templates | None) -> frozenset[str]:
    """The keys a complete Secret has: a Secret missing one gets a new token now. With mergePolicy Replace
    only the templates' (freshness is decided from the annotations, which every policy keeps)."""
    if templates is None:
        return _SECRET_KEY_SETS[engine]
    return templates.keys if templates.replace else _SECRET_KEY_SETS[engine] | templates.keys


def _encode(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


class _Conflict(Exception):
    """The Secret to write exists and is someone else's."""

    def __init__(self, owner: str | None) -> None:
        super().__init__(owner)
        self.owner = owner


# Never changed once built, but not frozen: a frozen dataclass's __init__ costs several times the
# instructions, and one is built for every resource after each restart.
@dataclasses.dataclass(slots=True)
class _Parsed:
    raw: Any  # a copy of the spec as watched (compared by value)
    spec: CredentialSpec
    endpoint: str | None  # the resolved RDS endpoint this target was built for (spec.resolveCNAME)
    target: Target
    resource: plan.Resource  # what the plan needs of this spec (fingerprint, jitter, names)
    identity: IdentityKey
    uid: str | None  # the resource this was parsed for (a new one of the same name starts afresh)
    keys: frozenset[str]  # the keys a complete Secret has (``required_keys``)


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
        resource_version=meta.get("resourceVersion"), served_request=policy.parse_time(ann.get(SERVED_ANN)))


def backoff(attempt: int, minimum: float, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter, never below ``minimum``."""
    # The exponent is capped: a resource failing for days reaches attempt 1024, where 2.0 ** attempt overflows.
    return max(minimum, min(cap, 2.0 ** min(attempt, 30)) * random.uniform(0.5, 1.0))
