"""The credential cache (single flight, refresh ahead, backoff, fallback) and classify(), with fakes.

No network: ``Identities._fetch`` is replaced by a fake that counts calls and answers on command;
the ServiceAccount path runs against a fake Kubernetes; the STS request parameters are checked
with botocore's Stubber on the real client code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.stub import Stubber

from rdsiam.operator import reasons
from rdsiam.operator.aws import (
    BACKOFF_CAP,
    CREDENTIAL_REFRESH_AHEAD,
    FAILURE_MEMORY,
    MIN_FALLBACK_SECONDS,
    OPERATOR_REFRESH_AHEAD,
    RENEW_RETRY,
    RENEW_WINDOW,
    Credentials,
    Identities,
    IdentityError,
    IdentityKey,
    classify,
)
from rdsiam.operator.kube import ApiError

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
ROLE = "arn:aws:iam::123456789012:role/shop-orders"
OPERATOR = IdentityKey()
ASSUMED = IdentityKey(namespace="shop", role_arn=ROLE)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def client_error(code: str, status: int = 400, message: str = "boom") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "AssumeRole")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class FakeFetch:
    """Stands in for the STS round trip: counts, and answers with credentials or a failure."""

    def __init__(self, clock: Clock, lifetime: float = 3600.0, delay: float = 0.01) -> None:
        self.clock, self.lifetime, self.delay = clock, lifetime, delay
        self.calls: list[IdentityKey] = []
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None  # set: STS answers only once the test opens it

    async def __call__(self, key: IdentityKey) -> Credentials:
        self.calls.append(key)
        await asyncio.sleep(self.delay)  # let every concurrent caller pile up behind this one
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        n = len(self.calls)
        return Credentials(f"ASIA{n:016d}", SECRET, "session", self.clock.now + dt.timedelta(seconds=self.lifetime),
                           f"arn:aws:sts::123456789012:assumed-role/shop-orders/s{n}")


def identities(clock: Clock, fetch: FakeFetch, kube: Any = None) -> Identities:
    ids = Identities(kube, clock=clock, jitter=lambda: 1.0)
    ids._fetch = fetch  # type: ignore[method-assign]
    return ids


# ---- the cache ---------------------------------------------------------------------------------


async def test_fifty_concurrent_gets_for_one_identity_cost_one_fetch() -> None:
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    got = await asyncio.gather(*(ids.get(ASSUMED) for _ in range(50)))
    assert len(fetch.calls) == 1 and ids.fetches == 1
    assert len({c.access_key for c in got}) == 1
    # ...and later callers reuse them while they are fresh.
    clock.advance(600)
    assert (await ids.get(ASSUMED)).access_key == got[0].access_key and len(fetch.calls) == 1


async def test_distinct_identities_fetch_separately_and_equal_ones_share() -> None:
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    keys = [ASSUMED, dataclasses.replace(ASSUMED, external_id="tenant-1"), dataclasses.replace(ASSUMED, role_arn=ROLE
            + "-2"), dataclasses.replace(ASSUMED, session_name="other"), OPERATOR]
    await asyncio.gather(*(ids.get(k) for k in keys * 10))
    assert sorted(map(repr, fetch.calls)) == sorted(map(repr, keys))


async def test_refreshed_ahead_so_tokens_get_their_full_fifteen_minutes() -> None:
    clock = Clock()
    fetch = FakeFetch(clock, lifetime=3600)
    ids = identities(clock, fetch)
    first = await ids.get(ASSUMED)
    clock.advance(3600 - CREDENTIAL_REFRESH_AHEAD - 1)  # 1021 s left: a token signed now lives 900 s
    assert await ids.get(ASSUMED) is first
    clock.advance(2)  # 1019 s left: new credentials before anything is signed with these
    second = await ids.get(ASSUMED)
    assert second.access_key != first.access_key and len(fetch.calls) == 2
    assert second.expiry is not None and (second.expiry - clock.now).total_seconds() > 900 + 120


async def test_short_lived_credentials_are_shared_for_most_of_their_life() -> None:
    # AssumeRole with DurationSeconds=900 (the AWS minimum) lives less than the refresh-ahead time:
    # without a lifetime-relative rule every get() would call STS (N resources = N calls). They are due at
    # half their life (450 s) and renewed in the background from a quarter of that earlier (337.5 s).
    clock = Clock()
    fetch = FakeFetch(clock, lifetime=900)
    ids = identities(clock, fetch)
    first = await ids.get(ASSUMED)
    for _ in range(16):
        clock.advance(20)
        assert await ids.get(ASSUMED) is first  # 320 s in: still shared, nothing fetched
        await asyncio.sleep(0.02)
    assert len(fetch.calls) == 1
    clock.advance(20)  # 340 s in: served from the cache, renewed meanwhile
    assert await ids.get(ASSUMED) is first
    await asyncio.sleep(0.05)
    second = await ids.get(ASSUMED)
    assert second.access_key != first.access_key and len(fetch.calls) == 2


async def test_renewed_in_the_background_so_a_stalled_sts_delays_no_caller() -> None:
    clock = Clock()
    fetch = FakeFetch(clock, lifetime=3600)
    ids = identities(clock, fetch)
    first = await ids.get(ASSUMED)
    clock.advance(3600 - CREDENTIAL_REFRESH_AHEAD - RENEW_WINDOW - 1)  # just before the renewal window
    assert await ids.get(ASSUMED) is first
    await asyncio.sleep(0.05)
    assert len(fetch.calls) == 1
    fetch.gate = asyncio.Event()  # STS stops answering
    clock.advance(2)  # inside the window: every caller is served from the cache at once, one renewal starts
    callers = [asyncio.create_task(ids.get(ASSUMED)) for _ in range(50)]
    await asyncio.sleep(0.05)
    assert all(c.done() and c.result() is first for c in callers)  # none waits for the stalled call
    assert len(fetch.calls) == 2
    fetch.gate.set()  # STS answers
    await asyncio.sleep(0.05)
    second = await ids.get(ASSUMED)
    assert second.access_key != first.access_key and len(fetch.calls) == 2
    assert second.expiry is not None and (second.expiry - clock.now).total_seconds() > 3500


async def test_a_failed_renewal_keeps_serving_the_cached_credentials_until_they_are_due(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    first = await ids.get(ASSUMED)
    clock.advance(3600 - CREDENTIAL_REFRESH_AHEAD - 60)  # in the renewal window, 60 s before due
    fetch.fail = client_error("AccessDenied", 403, "User: arn:aws:sts::1:assumed-role/op/x is not authorized")
    with caplog.at_level(logging.WARNING, "rdsiam.aws"):
        assert await ids.get(ASSUMED) is first
        await asyncio.sleep(0.05)
        assert len(fetch.calls) == 2
        assert "renewing them ahead of time failed (AccessDenied)" in caplog.text
        clock.advance(RENEW_RETRY - 1)
        assert await ids.get(ASSUMED) is first
        await asyncio.sleep(0.05)
        assert len(fetch.calls) == 2  # not tried again yet
        clock.advance(2)
        assert await ids.get(ASSUMED) is first
        await asyncio.sleep(0.05)
        assert len(fetch.calls) == 3
    assert SECRET not in caplog.text
    clock.advance(60)  # due now: callers wait for the fetch, and are told why it failed
    with pytest.raises(IdentityError) as err:
        await ids.get(ASSUMED)
    assert err.value.reason == reasons.ACCESS_DENIED and len(fetch.calls) == 4


async def test_the_operators_own_credentials_are_left_to_botocore_to_renew() -> None:
    # botocore's chain refreshes them only inside its own 15 minutes: asking earlier returns the same keys.
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    first = await ids.get(OPERATOR)
    clock.advance(3600 - OPERATOR_REFRESH_AHEAD - 30)
    assert await ids.get(OPERATOR) is first
    await asyncio.sleep(0.05)
    assert len(fetch.calls) == 1


async def test_throttled_refresh_falls_back_to_cached_still_valid_credentials() -> None:
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    first = await ids.get(ASSUMED)
    clock.advance(3600 - 1000)  # due for refresh, 1000 s still valid
    fetch.fail = client_error("Throttling", message="Rate exceeded")
    got = await asyncio.gather(*(ids.get(ASSUMED) for _ in range(50)))
    assert all(c is first for c in got)
    assert len(fetch.calls) == 2  # one failed STS call for all fifty callers


async def test_no_fallback_to_credentials_about_to_expire() -> None:
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    await ids.get(ASSUMED)
    clock.advance(3600 - MIN_FALLBACK_SECONDS + 1)  # a token signed now would be due at once
    fetch.fail = client_error("Throttling", message="Rate exceeded")
    with pytest.raises(IdentityError) as err:
        await ids.get(ASSUMED)
    assert err.value.reason == reasons.THROTTLED and err.value.retry_after is not None


async def test_failures_back_off_exponentially_and_are_shared() -> None:
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)  # jitter fixed at 1.0: delays 2, 4, 8, ... s
    fetch.fail = client_error("ServiceUnavailable", status=503)
    errors = await asyncio.gather(*(ids.get(ASSUMED) for _ in range(50)), return_exceptions=True)
    assert {e.reason for e in errors if isinstance(e, IdentityError)} == {reasons.CREDENTIALS_UNAVAILABLE}
    assert len(errors) == 50 and len(fetch.calls) == 1
    delays = []
    for _ in range(6):
        with pytest.raises(IdentityError) as err:  # inside the window: no STS call, told when to come back
            await ids.get(ASSUMED)
        assert err.value.retry_after is not None
        delays.append(err.value.retry_after)
        clock.advance(err.value.retry_after)
        with pytest.raises(IdentityError):
            await ids.get(ASSUMED)  # window over: one more STS call
    assert delays == [2, 4, 8, 16, 32, 64] and len(fetch.calls) == 7
    fetch.fail = None
    clock.advance(128)
    assert (await ids.get(ASSUMED)).access_key  # recovered; the backoff is forgotten
    fetch.fail = client_error("Throttling")
    clock.advance(3600)
    with pytest.raises(IdentityError) as err:
        await ids.get(ASSUMED)
    assert err.value.retry_after == 2


async def test_the_backoff_of_identities_nobody_asks_for_any_more_is_forgotten() -> None:
    # Resources deleted while their roles were failing: their backoff records must not pile up.
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    fetch.fail = client_error("Throttling")
    gone = [dataclasses.replace(ASSUMED, role_arn=f"{ROLE}-{i}") for i in range(3)]
    for key in gone:
        with pytest.raises(IdentityError):
            await ids.get(key)
    assert set(ids._failures) == set(gone)
    clock.advance(FAILURE_MEMORY - 60)
    with pytest.raises(IdentityError):
        await ids.get(ASSUMED)  # still remembered: not long enough since their retry time
    assert set(ids._failures) == {*gone, ASSUMED}
    clock.advance(120)
    fetch.fail = None
    await ids.get(ASSUMED)  # any later fetch prunes them
    assert ids._failures == {}


async def test_jitter_spreads_the_backoff() -> None:
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = Identities(clock=clock)  # real jitter: U(0.5, 1) times the delay
    ids._fetch = fetch  # type: ignore[method-assign]
    fetch.fail = client_error("Throttling")
    seen = set()
    for _ in range(20):
        ids._failures.clear()
        with pytest.raises(IdentityError) as err:
            await ids.get(ASSUMED)
        assert err.value.retry_after is not None and 1.0 <= err.value.retry_after <= 2.0
        seen.add(round(err.value.retry_after, 3))
    assert len(seen) > 1


async def test_access_denied_is_not_cached_as_a_backoff() -> None:
    # A fixed trust policy should take effect on the next retry of each resource.
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch)
    fetch.fail = client_error("AccessDenied", 403, "User: arn:aws:sts::1:assumed-role/op/x is not authorized")
    for _ in range(2):
        with pytest.raises(IdentityError) as err:
            await ids.get(ASSUMED)
        assert err.value.reason == reasons.ACCESS_DENIED
    assert len(fetch.calls) == 2
    fetch.fail = None
    assert (await ids.get(ASSUMED)).access_key


async def test_a_cancelled_caller_does_not_cancel_the_fetch_for_others() -> None:
    clock = Clock()
    fetch = FakeFetch(clock, delay=0.05)
    ids = identities(clock, fetch)
    first = asyncio.create_task(ids.get(ASSUMED))
    second = asyncio.create_task(ids.get(ASSUMED))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).access_key and len(fetch.calls) == 1


# ---- ServiceAccount identities -------------------------------------------------------------------


class FakeKube:
    def __init__(self, annotations: dict[str, str] | None) -> None:
        self.annotations = annotations
        self.lookups = 0
        self.token_requests: list[tuple[str, str, str, int]] = []

    async def get_service_account(self, ns: str, name: str) -> dict[str, Any] | None:
        self.lookups += 1
        await asyncio.sleep(0.005)
        if self.annotations is None:
            return None
        return {"metadata": {"name": name, "namespace": ns, "annotations": dict(self.annotations)}}

    async def request_token(self, ns: str, name: str, audience: str, seconds: int) -> tuple[str, str | None]:
        self.token_requests.append((ns, name, audience, seconds))
        return "header.payload.signature", None


SA = IdentityKey(namespace="shop", service_account="orders-app")


async def test_service_account_missing_or_unannotated_have_their_own_reasons() -> None:
    clock = Clock()
    kube = FakeKube(None)
    ids = identities(clock, FakeFetch(clock), kube)
    ids.sa_cache_seconds = 0
    with pytest.raises(IdentityError) as err:
        await ids.get(SA)
    assert err.value.reason == reasons.SERVICE_ACCOUNT_NOT_FOUND
    assert "shop/orders-app" in err.value.message and "eks.amazonaws.com/role-arn" in err.value.message
    kube.annotations = {"other": "x"}
    with pytest.raises(IdentityError) as err:
        await ids.get(SA)
    assert err.value.reason == reasons.SERVICE_ACCOUNT_NOT_ANNOTATED
    assert "system:serviceaccount:shop:orders-app" in err.value.message
    kube.annotations = {"eks.amazonaws.com/role-arn": "orders-role"}
    with pytest.raises(IdentityError) as err:
        await ids.get(SA)
    assert err.value.reason == reasons.SERVICE_ACCOUNT_NOT_ANNOTATED and "not an IAM role ARN" in err.value.message


async def test_service_account_role_is_part_of_the_identity() -> None:
    clock = Clock()
    kube = FakeKube({"eks.amazonaws.com/role-arn": ROLE})
    fetch = FakeFetch(clock)
    ids = identities(clock, fetch, kube)
    ids.sa_cache_seconds = 0
    await asyncio.gather(*(ids.get(SA) for _ in range(20)))
    assert len(fetch.calls) == 1 and fetch.calls[0].sa_role == ROLE
    assert kube.lookups == 1  # concurrent lookups share one GET
    kube.annotations = {"eks.amazonaws.com/role-arn": ROLE + "-v2"}
    await ids.get(SA)  # a changed annotation is a new identity: never the old role's credentials
    assert [k.sa_role for k in fetch.calls] == [ROLE, ROLE + "-v2"]
    kube.annotations = None
    with pytest.raises(IdentityError) as err:  # deleted: no more tokens, whatever is cached
        await ids.get(SA)
    assert err.value.reason == reasons.SERVICE_ACCOUNT_NOT_FOUND


async def test_service_account_lookup_errors_are_kubernetes_errors() -> None:
    clock = Clock()
    kube = FakeKube(None)

    async def forbidden(ns: str, name: str) -> None:
        raise ApiError(403, "Forbidden", "serviceaccounts is forbidden")

    kube.get_service_account = forbidden  # type: ignore[method-assign]
    ids = identities(clock, FakeFetch(clock), kube)
    with pytest.raises(IdentityError) as err:
        await ids.get(SA)
    assert err.value.reason == reasons.KUBERNETES_ERROR and "RBAC" in err.value.message


# ---- the STS requests themselves (botocore Stubber, no network) ----------------------------------


def stubbed(kube: Any = None) -> tuple[Identities, Stubber, Stubber]:
    import boto3

    def session() -> Any:
        return boto3.Session(aws_access_key_id="AKIAOPERATOR", aws_secret_access_key="x", region_name="us-east-1")

    ids = Identities(kube, session_factory=session)
    signed, unsigned = Stubber(ids._sts("operator")), Stubber(ids._sts("unsigned"))
    signed.activate()
    unsigned.activate()
    return ids, signed, unsigned


def sts_answer(role: str, session: str, akid: str = "ASIASTUBBEDSTUBBED00") -> dict[str, Any]:
    return {"Credentials": {"AccessKeyId": akid, "SecretAccessKey": SECRET, "SessionToken": "tok",
                            "Expiration": T0 + dt.timedelta(hours=1)},
            "AssumedRoleUser": {"AssumedRoleId": "AROA:x", "Arn": f"arn:aws:sts::123456789012:assumed-role/"
                                f"{role.rsplit('/', 1)[-1]}/{session}"}}


async def test_assume_role_request_carries_external_id_session_and_duration() -> None:
    ids, signed, _ = stubbed()
    key = IdentityKey(namespace="shop", role_arn=ROLE, external_id="ext-1234", duration=900)
    signed.add_response("assume_role", sts_answer(ROLE, "rdsiam-shop"),
                        {"RoleArn": ROLE, "RoleSessionName": "rdsiam-shop", "DurationSeconds": 900,
                         "ExternalId": "ext-1234"})
    creds = await ids.get(key)
    assert creds.arn == "arn:aws:sts::123456789012:assumed-role/shop-orders/rdsiam-shop"
    assert creds.expiry == T0 + dt.timedelta(hours=1)
    signed.assert_no_pending_responses()
    assert ids.sts_calls == 1


async def test_service_account_mode_uses_a_token_request_and_web_identity() -> None:
    kube = FakeKube({"eks.amazonaws.com/role-arn": ROLE})
    ids, _, unsigned = stubbed(kube)
    unsigned.add_response("assume_role_with_web_identity", sts_answer(ROLE, "rdsiam-shop-orders-app"),
                          {"RoleArn": ROLE, "RoleSessionName": "rdsiam-shop-orders-app",
                           "WebIdentityToken": "header.payload.signature", "DurationSeconds": 3600})
    creds = await ids.get(SA)
    assert creds.arn is not None and creds.arn.endswith("assumed-role/shop-orders/rdsiam-shop-orders-app")
    # As EKS does for a pod: a short-lived token for this ServiceAccount, audience STS.
    assert kube.token_requests == [("shop", "orders-app", "sts.amazonaws.com", 600)]
    unsigned.assert_no_pending_responses()


def test_operator_credentials_pair_keys_with_the_earlier_expiry() -> None:
    """A refresh by another thread between reading keys and expiry must not lengthen their life."""

    class Provider:
        def __init__(self) -> None:
            self._expiry_time = T0 + dt.timedelta(minutes=14)

        def get_frozen_credentials(self) -> Any:
            frozen = type("F", (), {"access_key": "ASIAOLD", "secret_key": "s", "token": "t"})()
            self._expiry_time = T0 + dt.timedelta(hours=1)  # refreshed right after we got the old keys
            return frozen

    session = type("S", (), {"get_credentials": lambda self: Provider(), "region_name": "us-east-1"})()
    ids = Identities(session_factory=lambda: session)
    ids._caller = ("ASIAOLD", "arn:aws:sts::1:assumed-role/op/s")
    creds = ids._operator_credentials(None)
    assert creds.expiry == T0 + dt.timedelta(minutes=14) and creds.arn == "arn:aws:sts::1:assumed-role/op/s"


# ---- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "reason"), [
    (client_error("Throttling", message="Rate exceeded"), reasons.THROTTLED),
    (client_error("ThrottlingException"), reasons.THROTTLED),
    (client_error("RequestLimitExceeded"), reasons.THROTTLED),
    (client_error("AccessDenied", 403), reasons.ACCESS_DENIED),
    (client_error("InvalidIdentityToken"), reasons.ACCESS_DENIED),
    (client_error("IDPRejectedClaim"), reasons.ACCESS_DENIED),
    (client_error("ExpiredTokenException"), reasons.ACCESS_DENIED),
    (client_error("InvalidClientTokenId", 403), reasons.CREDENTIALS_UNAVAILABLE),
    (client_error("SignatureDoesNotMatch", 403), reasons.CREDENTIALS_UNAVAILABLE),
    (client_error("ExpiredToken", 400), reasons.CREDENTIALS_UNAVAILABLE),
    (client_error("RegionDisabledException", 403), reasons.CREDENTIALS_UNAVAILABLE),
    (client_error("ValidationError"), reasons.CREDENTIALS_UNAVAILABLE),
    (client_error("IDPCommunicationError"), reasons.CREDENTIALS_UNAVAILABLE),
    (client_error("ServiceUnavailable", 503), reasons.CREDENTIALS_UNAVAILABLE),
    (client_error("InternalFailure", 500), reasons.CREDENTIALS_UNAVAILABLE),
    (NoCredentialsError(), reasons.CREDENTIALS_UNAVAILABLE),
    (CredentialRetrievalError(provider="web-identity", error_msg="x"), reasons.CREDENTIALS_UNAVAILABLE),
    (EndpointConnectionError(endpoint_url="https://sts.us-east-1.amazonaws.com"), reasons.CREDENTIALS_UNAVAILABLE),
    (ReadTimeoutError(endpoint_url="https://sts.us-east-1.amazonaws.com"), reasons.CREDENTIALS_UNAVAILABLE),
    (ApiError(403, "Forbidden", "nope"), reasons.KUBERNETES_ERROR),
    (RuntimeError("unexpected"), reasons.CREDENTIALS_UNAVAILABLE),
])
def test_classify_reasons(exc: BaseException, reason: str) -> None:
    error = classify(exc, ASSUMED)
    assert error.reason == reason
    assert error.retry_after is not None and error.retry_after > 0
    assert SECRET not in error.message


def test_classify_passes_identity_errors_through() -> None:
    original = IdentityError(reasons.SERVICE_ACCOUNT_NOT_FOUND, "x")
    assert classify(original, SA) is original


def test_access_denied_messages_say_what_to_check_per_mode() -> None:
    denied = client_error("AccessDenied", 403, "User: arn:aws:sts::123456789012:assumed-role/rdsiam-operator/b "
                          "is not authorized to perform: sts:AssumeRole on resource: " + ROLE)
    role = classify(denied, dataclasses.replace(ASSUMED, external_id="e-1")).message
    assert ROLE in role and "trust policy" in role and "externalId" in role
    assert "assumed-role/rdsiam-operator/b is not authorized" in role  # AWS's words name the caller
    assert "e-1" not in role
    sa = classify(client_error("AccessDenied", 403), dataclasses.replace(SA, sa_role=ROLE)).message
    assert "system:serviceaccount:shop:orders-app" in sa and "sts.amazonaws.com" in sa and ROLE in sa
    operator = classify(client_error("AccessDenied", 403), OPERATOR).message
    assert "operator's own identity" in operator and "IRSA" in operator


def test_throttling_and_outage_messages_say_secrets_stay_valid() -> None:
    assert "existing Secrets stay valid" in classify(client_error("Throttling"), ASSUMED).message
    outage = classify(ReadTimeoutError(endpoint_url="https://sts"), ASSUMED).message
    assert "ReadTimeoutError" in outage and "existing Secrets stay valid" in outage and ROLE in outage


async def test_identities_whose_credentials_expired_are_forgotten() -> None:
    clock = Clock()
    fetch = FakeFetch(clock, lifetime=900)
    ids = identities(clock, fetch)
    gone = dataclasses.replace(ASSUMED, role_arn=ROLE + "-deleted")
    await ids.get(gone)
    clock.advance(901)
    await ids.get(ASSUMED)
    assert gone not in ids._cache and ASSUMED in ids._cache


async def test_days_of_failures_keep_a_capped_backoff() -> None:
    """After a day of transient STS failures (attempt > 1024, where 2 ** attempt overflows a float) the
    backoff is still the cap: no OverflowError in place of a retry."""
    clock = Clock()
    fetch = FakeFetch(clock)
    ids = Identities(clock=clock)
    ids._fetch = fetch  # type: ignore[method-assign]
    fetch.fail = client_error("Throttling")
    with pytest.raises(IdentityError):
        await ids.get(ASSUMED)
    failure = ids._failures[ASSUMED]
    ids._failures[ASSUMED] = dataclasses.replace(failure, attempt=5000, retry_at=clock())
    with pytest.raises(IdentityError) as err:
        await ids.get(ASSUMED)
    assert err.value.retry_after is not None and err.value.retry_after <= BACKOFF_CAP


def test_a_busy_api_server_is_a_transient_failure_a_refusal_is_not() -> None:
    """ServiceAccount mode: a 503 from the API server while looking up the ServiceAccount or requesting its
    token gets the backoff and the still-valid cached credentials; a 403 (RBAC) does not."""
    key = IdentityKey(namespace="shop", service_account="orders", sa_role=ROLE)
    busy = classify(ApiError(503, "ServiceUnavailable", "restarting"), key)
    refused = classify(ApiError(403, "Forbidden", "no"), key)
    assert busy.reason == refused.reason == reasons.KUBERNETES_ERROR
    assert busy.transient and "busy or restarting" in busy.message
    assert not refused.transient and "RBAC" in refused.message
