"""Fault injection and the request log on the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rdsiam.testing.kube import KubeApiError, KubeClient, KubeEmulator


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu: KubeEmulator) -> Iterator[KubeClient]:
    client = emu.client()
    yield client
    client.close()


SECRETS = "/api/v1/namespaces/default/secrets"


def test_a_fault_answers_its_status_n_times_then_stops(emu: KubeEmulator, client: KubeClient) -> None:
    fault = emu.inject(r"/secrets$", method="POST", status=503, times=2)
    for _ in range(2):
        with pytest.raises(KubeApiError) as exc:
            client.create(SECRETS, {"metadata": {"generateName": "f-"}})
        assert (exc.value.code, exc.value.reason) == (503, "ServiceUnavailable")
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
    assert [r.rbac for r in records] == [("", "secrets", "create"), ("", "secrets", "list"), ("", "", "")]
    assert [r.method for r in emu.requests.filter(path=r"/secrets$")] == ["POST", "GET"]
    emu.requests.clear()
    assert len(emu.requests) == 0
