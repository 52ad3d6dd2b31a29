"""Reconciler with fakes: which writes happen, what status says, that foreign Secrets are never touched."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

import pytest

from rdsiam.operator import reasons
from rdsiam.operator.aws import Credentials, IdentityError, IdentityKey
from rdsiam.operator.kube import ApiError
from rdsiam.operator.reconcile import Reconciler, json_copy, merge_patch
from rdsiam.operator.tenancy import TenancyPolicy

HOST = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"
T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


class FakeKube:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.rv = 0

    async def get_secret(self, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append("get_secret")
        return copy.deepcopy(self.secrets.get((ns, name)))

    async def create_secret(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create_secret")
        if (ns, body["metadata"]["name"]) in self.secrets:
            raise ApiError(409, "AlreadyExists", "exists")
        return self._store(ns, body)

    async def replace_secret(self, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("replace_secret")
        return self._store(ns, body)

    def _store(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.secrets[(ns, body["metadata"]["name"])] = body
        return copy.deepcopy(body)

    async def patch_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append("patch_status")
        self.statuses.append(copy.deepcopy(status))

    async def post_event(self, ns: str, body: dict[str, Any]) -> None:
        self.calls.append("post_event")
        self.events.append(body)

    async def get_service_account(self, ns: str, name: str) -> dict[str, Any] | None:
        return None

    async def request_token(self, ns: str, name: str, audience: str, seconds: int) -> tuple[str, str | None]:
        raise AssertionError("not used")

    async def get_namespace(self, name: str) -> dict[str, Any] | None:
        return {"metadata": {"name": name, "labels": {}}}


class FakeIdentities:
    def __init__(self, expiry: dt.datetime | None = None, error: IdentityError | None = None) -> None:
        self.expiry, self.error, self.keys = expiry, error, []

    async def get(self, key: IdentityKey) -> Credentials:
        self.keys.append(key)
        if self.error:
            raise self.error
        return Credentials("ASIAFAKE", "secret", "session", self.expiry, "arn:aws:sts::1:assumed-role/r/s")


def resource(spec: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "orders", "namespace": "shop", "uid": "uid-1", "generation": generation},
        "spec": spec or {"host": HOST, "username": "app_user", "database": "orders"},
        "status": {},
    }


def reconciler(kube: FakeKube, ids: FakeIdentities, now: dt.datetime = T0, **kw: Any) -> Reconciler:
    return Reconciler(kube, ids, clock=lambda: now, **kw)  # type: ignore[arg-type]


async def test_first_issue_writes_secret_status_and_one_event() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    out = await reconciler(kube, ids).reconcile(resource())
    assert out.ok and out.refreshed and out.next_due is not None
    assert T0 + dt.timedelta(seconds=540) <= out.next_due <= T0 + dt.timedelta(seconds=600)  # interval - jitter
    assert kube.calls == ["get_secret", "create_secret", "patch_status", "post_event"]
    secret = kube.secrets[("shop", "orders")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["username"] == "app_user" and data["dbname"] == "orders" and data["port"] == "5432"
    assert data["password"].startswith(f"{HOST}:5432/?Action=connect&DBUser=app_user&")
    assert data["expires-at"] == "2026-01-01T12:15:00Z"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    ready = kube.statuses[-1]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", reasons.TOKEN_ISSUED)
    assert kube.statuses[-1]["identity"] == "arn:aws:sts::1:assumed-role/r/s"
    assert kube.events[0]["type"] == "Normal"


async def test_expiry_is_capped_by_credentials() -> None:
    kube = FakeKube()
    await reconciler(kube, FakeIdentities(expiry=T0 + dt.timedelta(minutes=7))).reconcile(resource())
    assert base64.b64decode(kube.secrets[("shop", "orders")]["data"]["expires-at"]) == b"2026-01-01T12:07:00Z"


async def test_restart_with_fresh_secret_writes_nothing() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    body = resource()
    await reconciler(kube, ids).reconcile(body)
    kube.calls.clear()
    later = T0 + dt.timedelta(minutes=3)
    out = await reconciler(kube, ids, now=later).reconcile(body)  # a new process: empty cache
    assert kube.calls == ["get_secret"] and not out.refreshed and out.ok


async def test_spec_change_re_mints() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    rec = reconciler(kube, ids)
    await rec.reconcile(resource())
    out = await rec.reconcile(resource({"host": HOST, "username": "other"}, generation=2))
    assert out.refreshed and kube.calls.count("replace_secret") == 1


async def test_a_refresh_request_stamped_ahead_of_the_operators_clock_is_answered_once() -> None:
    """`kubectl annotate ... refresh-requested-at=$(date ...)` from a machine whose clock runs ahead: the
    token minted for it is still older than the request, yet the request is answered, so no second token
    (a restart, reading the Secret afresh, agrees)."""
    kube, ids = FakeKube(), FakeIdentities()
    await reconciler(kube, ids).reconcile(resource())
    body = resource()
    body["metadata"]["annotations"] = {"rdsiam.io/refresh-requested-at": "2026-01-01T12:01:05Z"}
    now = T0 + dt.timedelta(minutes=1)  # 12:01:00, five seconds behind the requester
    rec = reconciler(kube, ids, now=now)
    assert (await rec.reconcile(body)).refreshed
    assert kube.secrets[("shop", "orders")]["metadata"]["annotations"]["rdsiam.io/refresh-served"] == \
        "2026-01-01T12:01:05Z"
    kube.calls.clear()
    assert not (await rec.reconcile(body)).refreshed
    assert not (await reconciler(kube, ids, now=now + dt.timedelta(seconds=2)).reconcile(body)).refreshed
    assert "replace_secret" not in kube.calls
    body["metadata"]["annotations"]["rdsiam.io/refresh-requested-at"] = "2026-01-01T12:01:09Z"  # a new request
    assert (await rec.reconcile(body)).refreshed


async def test_foreign_secret_is_never_touched() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    foreign = {"metadata": {"name": "orders", "namespace": "shop", "resourceVersion": "7"}, "data": {"x": "eQ=="}}
    kube.secrets[("shop", "orders")] = copy.deepcopy(foreign)
    out = await reconciler(kube, ids).reconcile(resource())
    assert not out.ok and out.reason == reasons.SECRET_CONFLICT and out.retry_after
    assert kube.secrets[("shop", "orders")] == foreign
    assert "create_secret" not in kube.calls and "replace_secret" not in kube.calls
    assert "shop/orders" in kube.statuses[-1]["conditions"][0]["message"]
    assert kube.events[-1]["type"] == "Warning"


async def test_listed_cache_creates_without_reading_first() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    rec = reconciler(kube, ids, secret_cache={})
    rec.secrets_listed = True  # the Secret informer has listed: a miss means "none of ours"
    out = await rec.reconcile(resource())
    assert out.ok and kube.calls == ["create_secret", "patch_status", "post_event"]


async def test_listed_cache_miss_still_never_touches_a_foreign_secret() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    foreign = {"metadata": {"name": "orders", "namespace": "shop", "resourceVersion": "7"}, "data": {"x": "eQ=="}}
    kube.secrets[("shop", "orders")] = copy.deepcopy(foreign)
    rec = reconciler(kube, ids, secret_cache={})
    rec.secrets_listed = True  # the foreign Secret has no managed-by label: not in the cache
    out = await rec.reconcile(resource())
    assert not out.ok and out.reason == reasons.SECRET_CONFLICT
    assert kube.calls[:2] == ["create_secret", "get_secret"] and "replace_secret" not in kube.calls
    assert kube.secrets[("shop", "orders")] == foreign


async def test_a_secret_known_without_a_version_is_read_before_it_is_replaced() -> None:
    """Every replace is conditional: a cached Secret without a resourceVersion (no real server answers
    so, but a write must not hinge on that) is read first, its owner checked, and its version sent."""
    kube, ids = FakeKube(), FakeIdentities()
    rec = reconciler(kube, ids)
    await rec.reconcile(resource())
    rec.secrets[("shop", "orders")]["metadata"]["resourceVersion"] = None
    sent: list[Any] = []
    replace = kube.replace_secret

    async def recording(ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        sent.append(body["metadata"].get("resourceVersion"))
        return await replace(ns, name, body)

    kube.replace_secret = recording  # type: ignore[method-assign]
    kube.calls.clear()
    out = await rec.reconcile(resource({"host": HOST, "username": "other"}, generation=2))
    assert out.refreshed and kube.calls[:2] == ["get_secret", "replace_secret"]
    assert sent == ["1"]  # the version the first issue's create made


async def test_spec_edited_in_place_is_noticed() -> None:
    """The parsed spec is reused only while the spec is equal to the one parsed."""
    kube, ids = FakeKube(), FakeIdentities()
    rec = reconciler(kube, ids)
    body = resource()
    await rec.reconcile(body)
    body["spec"]["username"] = "other_user"  # same dict, new content
    out = await rec.reconcile(body)
    assert out.refreshed
    data = kube.secrets[("shop", "orders")]["data"]
    assert base64.b64decode(data["username"]) == b"other_user"
    rec.forget("shop", "orders")
    assert not rec._parsed


async def test_a_listed_spec_is_parsed_once_before_its_first_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare() (the listing after a restart) parses, resolves and hashes; the refresh then reuses it.
    A spec that does not parse is left for reconcile to report."""
    from rdsiam.operator import reconcile as module

    parsed: list[Any] = []
    real = module.parse_spec
    monkeypatch.setattr(module, "parse_spec", lambda raw: parsed.append(raw) or real(raw))
    kube, ids = FakeKube(), FakeIdentities()
    rec = reconciler(kube, ids)
    body = resource()
    rec.prepare(body)
    rec.prepare(body)  # a relist of an unchanged spec: nothing again
    assert len(parsed) == 1 and ("shop", "orders") in rec._parsed
    out = await rec.reconcile(body)
    assert out.refreshed and len(parsed) == 1
    assert base64.b64decode(kube.secrets[("shop", "orders")]["data"]["username"]) == b"app_user"
    bad = resource({"host": "db.example.com", "username": "u"})
    bad["metadata"]["name"] = "broken"
    rec.prepare(bad)
    assert ("shop", "broken") not in rec._parsed
    out = await rec.reconcile(bad)
    assert not out.ok and kube.statuses[-1]["conditions"][0]["reason"] == reasons.INVALID_SPEC
    # A spec that breaks the parser in a way nobody foresaw must not break the listing of the others.
    monkeypatch.setattr(module, "parse_spec", lambda raw: 1 / 0)
    strange = resource()
    strange["metadata"]["name"] = "strange"
    rec.prepare(strange)
    assert ("shop", "strange") not in rec._parsed


async def test_invalid_spec_is_permanent_and_names_the_field() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    out = await reconciler(kube, ids).reconcile(resource({"host": "db.example.com", "username": "u"}))
    assert not out.ok and out.next_due is None and out.retry_after is None
    cond = kube.statuses[-1]["conditions"][0]
    assert cond["reason"] == reasons.INVALID_SPEC and "spec.region" in cond["message"]
    assert ids.keys == []


async def test_identity_failure_backs_off_and_keeps_secret() -> None:
    kube = FakeKube()
    rec = reconciler(kube, FakeIdentities())
    await rec.reconcile(resource())
    before = copy.deepcopy(kube.secrets)
    rec.identities = FakeIdentities(error=IdentityError(reasons.THROTTLED, "throttled", retry_after=5))  # type: ignore[assignment]
    out = await rec.reconcile(resource({"host": HOST, "username": "app_user", "database": "x"}, generation=2))
    assert not out.ok and out.reason == reasons.THROTTLED and out.retry_after == 5
    assert kube.secrets == before
    # The same failure again: no second Warning Event or status write (no flood).
    n_events, n_status = len(kube.events), len(kube.statuses)
    body = resource({"host": HOST, "username": "app_user", "database": "x"}, generation=2)
    body["status"] = kube.statuses[-1]
    await rec.reconcile(body)
    assert (len(kube.events), len(kube.statuses)) == (n_events, n_status)


async def test_tenancy_refusal() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    policy = TenancyPolicy(allowed_role_arns=("arn:aws:iam::*:role/{namespace}-*",))
    spec = {"host": HOST, "username": "u", "assumeRoleArn": "arn:aws:iam::123456789012:role/billing-db"}
    out = await reconciler(kube, ids, tenancy=policy).reconcile(resource(spec))
    assert out.reason == reasons.IDENTITY_NOT_ALLOWED and out.next_due is None
    assert "allowed-role-arns" in kube.statuses[-1]["conditions"][0]["message"]
    ok = {**spec, "assumeRoleArn": "arn:aws:iam::123456789012:role/shop-db"}
    assert (await reconciler(kube, ids, tenancy=policy).reconcile(resource(ok))).ok


@pytest.mark.parametrize("status", [500, 403])
async def test_kubernetes_errors_are_temporary(status: int) -> None:
    kube, ids = FakeKube(), FakeIdentities()

    async def broken(ns: str, body: dict[str, Any]) -> dict[str, Any]:
        raise ApiError(status, "Err", "boom")

    kube.create_secret = broken  # type: ignore[method-assign]
    out = await reconciler(kube, ids).reconcile(resource())
    assert out.reason == reasons.KUBERNETES_ERROR and out.retry_after


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2], "keep": 1}
    patch = {"a": "z", "c": {"f": None, "h": "i"}, "list": [3], "new": {"x": None, "y": 1}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e", "h": "i"}, "list": [3], "keep": 1,
                                          "new": {"y": 1}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2], "keep": 1}  # not changed
    assert merge_patch({"a": 1}, ["x"]) == ["x"] and merge_patch("s", {"a": None}) == {}
    assert merge_patch({"a": 1}, {"a": None}) == {}


def test_json_copy_is_deep_and_equal() -> None:
    value = {"a": [1, {"b": "c"}, None], "d": {"e": True, "f": 1.5}}
    copied = json_copy(value)
    assert copied == value
    copied["a"][1]["b"] = "changed"
    copied["d"]["e"] = False
    assert value == {"a": [1, {"b": "c"}, None], "d": {"e": True, "f": 1.5}}


async def test_status_view_kept_current_without_the_servers_answer() -> None:
    """patch_status returns nothing; the body's status becomes what the merge patch makes of it."""
    kube = FakeKube()
    body = resource()
    body["status"] = {"someoneElses": "kept", "identity": "arn:aws:sts::1:assumed-role/old/s",
                      "conditions": [{"type": "Ready", "status": "False", "reason": "Throttled", "message": "m",
                                      "lastTransitionTime": "2025-12-31T00:00:00Z"}]}
    await reconciler(kube, FakeIdentities()).reconcile(body)
    written = kube.statuses[-1]
    assert body["status"] == {**written, "someoneElses": "kept"}
    assert body["status"]["conditions"][0]["status"] == "True"
    assert body["status"]["lastRefreshTime"] == "2026-01-01T12:00:00Z"

    class Anonymous(FakeIdentities):  # credentials whose principal is unknown: status.identity null
        async def get(self, key: IdentityKey) -> Credentials:
            return Credentials("ASIAFAKE", "secret", "session", None, None)

    body["spec"] = {**body["spec"], "database": "other"}  # a spec change: a refresh
    body["metadata"]["generation"] = 2
    await reconciler(kube, Anonymous(), now=T0 + dt.timedelta(minutes=1)).reconcile(body)
    assert kube.statuses[-1]["identity"] is None  # a null in a merge patch removes the key
    assert "identity" not in body["status"] and body["status"]["someoneElses"] == "kept"
    assert body["status"]["lastRefreshTime"] == "2026-01-01T12:01:00Z"


async def test_an_unexpected_error_is_reported_by_its_type_alone_and_retried() -> None:
    """A reconciliation that raised (a bug) is a failure like any other: Ready=False, reason InternalError,
    a Warning Event, a retry with backoff; the exception's text (it may hold anything) is not shown."""
    kube = FakeKube()
    rec = reconciler(kube, FakeIdentities())
    body = resource()
    outcome = await rec.internal_error(body, KeyError("text that must not reach status or Events"))
    assert not outcome.ok and outcome.reason == reasons.INTERNAL_ERROR and outcome.retry_after == 10.0
    ready = kube.statuses[-1]["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", reasons.INTERNAL_ERROR)
    assert "Unexpected KeyError" in ready["message"] and "must not" not in ready["message"]
    assert [(e["type"], e["reason"]) for e in kube.events] == [("Warning", reasons.INTERNAL_ERROR)]
    assert "must not" not in kube.events[0]["message"]
    # Reporting itself never raises, even for a body it cannot report on.
    again = await rec.internal_error({"metadata": {}}, KeyError("x"))
    assert again.reason == reasons.INTERNAL_ERROR and again.retry_after == 10.0


async def test_a_refused_write_quoting_the_secret_shows_none_of_its_values() -> None:
    """Behind ``kube.scrub``: whatever of the written Secret a refusal quotes verbatim (here the token and
    the pgpass line, as if scrub had missed them) is cut out of status, the Event and the log."""
    kube, ids = FakeKube(), FakeIdentities()
    quoted: list[str] = []

    async def refuse(ns: str, body: dict[str, Any]) -> dict[str, Any]:
        values = [base64.b64decode(body["data"][k]).decode() for k in ("password", "pgpass")]
        quoted.extend(values)
        exc = ApiError(400, "BadRequest", "denied")
        exc.message = f'admission webhook "policy.example.com" denied: {values[0]} / {body["data"]["pgpass"]}'
        raise exc

    kube.create_secret = refuse  # type: ignore[method-assign]
    out = await reconciler(kube, ids).reconcile(resource())
    assert not out.ok and out.reason == reasons.KUBERNETES_ERROR
    shown = [kube.statuses[-1]["conditions"][0]["message"], kube.events[-1]["message"]]
    leaked = any(q in text or q[-64:] in text for q in quoted for text in shown)
    assert not leaked and all("policy.example.com" in text and "<redacted>" in text for text in shown)


def test_backoff_after_days_of_failures_is_the_cap() -> None:
    from rdsiam.operator.reconcile import backoff

    assert all(150.0 <= backoff(attempt, 5.0) <= 300.0 for attempt in (9, 1024, 10**6))


async def test_a_routine_refresh_is_one_secret_write_and_one_status_write() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    body = resource()
    await reconciler(kube, ids).reconcile(body)
    kube.calls.clear()
    later = T0 + dt.timedelta(minutes=11)  # past the interval: IntervalElapsed
    rec = reconciler(kube, ids, now=later)
    out = await rec.reconcile(body)
    assert out.ok and out.refreshed and kube.calls == ["get_secret", "replace_secret", "patch_status"]
    assert (rec.stats.secret_writes, rec.stats.status_writes, rec.stats.events) == (1, 1, 0)
    kube.calls.clear()
    out = await rec.reconcile(body)  # fresh, status in line: nothing to write
    assert out.ok and not out.refreshed and kube.calls == []
    # With --rotation-events the same refresh also posts a Normal Event.
    events = reconciler(kube, ids, now=later + dt.timedelta(minutes=11), rotation_events=True)
    await events.reconcile(body)
    assert [(e["type"], e["reason"]) for e in kube.events[-1:]] == [("Normal", reasons.ROTATED)]


async def test_status_behind_a_fresh_secret_is_written_once() -> None:
    """A crash between the Secret write and the status write: the next pass brings status in line."""
    kube, ids = FakeKube(), FakeIdentities()
    body = resource()
    await reconciler(kube, ids).reconcile(body)
    body["status"] = {}
    kube.calls.clear()
    rec = reconciler(kube, ids, now=T0 + dt.timedelta(minutes=1))
    out = await rec.reconcile(body)
    assert out.ok and not out.refreshed and kube.calls == ["get_secret", "patch_status"]
    assert body["status"]["expiresAt"] == "2026-01-01T12:15:00Z"
    assert body["status"]["conditions"][0]["message"].endswith("in Secret orders; expires 2026-01-01T12:15:00Z.")
    kube.calls.clear()
    await rec.reconcile(body)
    assert kube.calls == []


async def test_a_failed_status_write_after_the_secret_comes_back_soon() -> None:
    kube, ids = FakeKube(), FakeIdentities()

    async def refused(ns: str, name: str, status: dict[str, Any]) -> None:
        raise ApiError(500, "Err", "boom")

    kube.patch_status = refused  # type: ignore[method-assign]
    out = await reconciler(kube, ids).reconcile(resource())
    assert out.ok and out.refreshed and out.next_due == T0 + dt.timedelta(seconds=2)
    assert ("shop", "orders") in kube.secrets and kube.events[-1]["reason"] == reasons.TOKEN_ISSUED
    # The next pass finds the Secret fresh and status still behind: a retry, not a failure report.
    out = await reconciler(kube, ids, now=T0 + dt.timedelta(seconds=2)).reconcile(resource())
    assert not out.ok and out.reason == reasons.KUBERNETES_ERROR and out.retry_after == 2.0
    assert kube.secrets[("shop", "orders")]["metadata"]["resourceVersion"] == "1" and len(kube.events) == 1


async def test_events_go_to_the_injected_sink() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    posted: list[tuple[Any, ...]] = []
    rec = reconciler(kube, ids, events=lambda body, type_, reason, message: posted.append(
        (body["metadata"]["name"], type_, reason, message)))
    await rec.reconcile(resource())
    assert "post_event" not in kube.calls and rec.stats.events == 1
    assert posted == [("orders", "Normal", reasons.TOKEN_ISSUED,
                       "Issued token (SecretMissing); Secret orders expires 2026-01-01T12:15:00Z.")]
    bad = resource({"host": "db.example.com", "username": "u"})
    await rec.reconcile(bad)
    assert posted[-1][1:3] == ("Warning", reasons.INVALID_SPEC)


async def test_events_are_best_effort() -> None:
    kube, ids = FakeKube(), FakeIdentities()

    async def refused(ns: str, body: dict[str, Any]) -> None:
        raise ApiError(403, "Forbidden", "events")

    def broken(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        raise RuntimeError("no event queue")

    kube.post_event = refused  # type: ignore[method-assign]
    assert (await reconciler(kube, ids).reconcile(resource())).ok
    kube = FakeKube()
    out = await reconciler(kube, ids, events=broken).reconcile(resource())
    assert out.ok and out.refreshed and kube.statuses[-1]["conditions"][0]["status"] == "True"


async def test_the_event_body_names_the_resource() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    await reconciler(kube, ids, instance="rdsiam-0").reconcile(resource())
    event = kube.events[0]
    assert event["metadata"] == {"generateName": "orders.", "namespace": "shop"}
    assert event["involvedObject"] == {"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
                                       "name": "orders", "namespace": "shop", "uid": "uid-1"}
    assert (event["type"], event["reportingInstance"], event["firstTimestamp"], event["count"]) == (
        "Normal", "rdsiam-0", "2026-01-01T12:00:00Z", 1)
