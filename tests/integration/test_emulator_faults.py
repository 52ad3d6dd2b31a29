"""Fault injection, the request log, and kmock's DSL on the emulator."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from rdsiam.testing.kube import KubeApiError, KubeClient, KubeEmulator


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu: KubeEmulator) -> Iterator[KubeClient]:
    emu.clear_faults()
    client = emu.client()
    yield client
    client.close()
    emu.clear_faults()


SECRETS = "/api/v1/namespaces/default/secrets"


def test_a_fault_answers_its_status_n_times_then_stops(emu: KubeEmulator, client: KubeClient) -> None:
    fault = emu.inject(r"/secrets$", method="POST", status=503, times=2, retry_after=1)
    for _ in range(2):
        with pytest.raises(KubeApiError) as exc:
            client.create(SECRETS, {"metadata": {"generateName": "f-"}})
        assert (exc.value.code, exc.value.reason) == (503, "ServiceUnavailable")
        assert exc.value.status["details"] == {"retryAfterSeconds": 1}
    assert client.create(SECRETS, {"metadata": {"generateName": "f-"}})["metadata"]["name"].startswith("f-")
    assert fault.hits == 2 and fault.exhausted


@pytest.mark.parametrize(("status", "reason"), [(409, "Conflict"), (500, "InternalError"), (410, "Expired")])
def test_injected_statuses_come_with_status_bodies(
    emu: KubeEmulator, client: KubeClient, status: int, reason: str
) -> None:
    emu.inject(SECRETS, method="GET", status=status)
    with pytest.raises(KubeApiError) as exc:
        client.list(SECRETS)
    assert (exc.value.code, exc.value.reason, exc.value.status["kind"]) == (status, reason, "Status")


def test_a_410_on_a_watch_arrives_as_an_error_event(emu: KubeEmulator, client: KubeClient) -> None:
    emu.inject(SECRETS, status=410, watch=True)
    events = list(client.watch(SECRETS, resource_version="1", timeout_seconds=1))
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]


def test_latency_is_added_to_matching_requests(emu: KubeEmulator, client: KubeClient) -> None:
    emu.inject(SECRETS, latency=0.3, times=None)
    began = time.monotonic()
    client.list(SECRETS)
    assert time.monotonic() - began >= 0.3
    emu.clear_faults()
    began = time.monotonic()
    client.list(SECRETS)
    assert time.monotonic() - began < 0.3


def test_the_request_log_records_rbac_attributes_and_can_be_cleared(emu: KubeEmulator, client: KubeClient) -> None:
    emu.requests.clear()
    client.create(SECRETS, {"metadata": {"generateName": "log-"}})
    client.list(SECRETS, labelSelector="a=b")
    client.request("GET", "/version")
    records = emu.requests.snapshot()
    assert [(r.method, r.path, r.status) for r in records] == [
        ("POST", SECRETS, 201),
        ("GET", SECRETS, 200),
        ("GET", "/version", 200),
    ]
    assert records[1].query == {"labelSelector": "a=b"}
    assert records[0].user_agent == "rdsiam-testing-kubeclient"
    assert emu.requests.rbac() == {("", "secrets", "create"), ("", "secrets", "list")}
    emu.requests.clear()
    assert len(emu.requests) == 0


def test_kmock_reactions_take_precedence_when_a_test_adds_them(emu: KubeEmulator, client: KubeClient) -> None:
    seen: list[object] = []
    (emu.handler["get", "/api/v1/namespaces/default/secrets/special"] >> seen << {"metadata": {"name": "canned"}})
    assert client.get(f"{SECRETS}/special") == {"metadata": {"name": "canned"}}
    assert len(seen) == 1
    with pytest.raises(KubeApiError):  # everything else is still served by the emulator
        client.get(f"{SECRETS}/other")
