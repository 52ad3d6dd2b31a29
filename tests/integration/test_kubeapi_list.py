"""KubeApi.list_objects against the Kubernetes API emulator: a LIST in pages (limit/continue, as client-go's
pager), each page reduced as it arrives, the listing's resourceVersion the first page's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rdsiam.operator import kubeapi
from rdsiam.operator.informer import Informer
from rdsiam.operator.kubeapi import KubeApi
from rdsiam.operator.reconcile import _strip_data

AGENT = {"User-Agent": "rdsiam-test-listing"}  # not the operator's: tests that audit its requests skip these


def secrets(ns: str, n: int) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": f"s-{i:04d}", "namespace": ns, "labels": {"test.rdsiam.io/listing": "paged"}},
             "data": {"password": "c2VjcmV0", "username": "dQ=="}} for i in range(n)]


@pytest.fixture
def filled(kube: Any) -> Iterator[str]:
    # Not labelled as the operator's: the session's leak guard treats every managed Secret's password as a
    # token to look for.
    ns = f"list-{uuid.uuid4().hex[:8]}"
    kube.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    kube.apply_manifest(secrets(ns, 1203))
    yield ns
    kube.delete_namespace(ns)


async def test_a_listing_comes_in_pages_and_each_page_is_reduced_as_it_arrives(kube: Any, filled: str) -> None:
    ns = filled
    path = f"/api/v1/namespaces/{ns}/secrets"
    before = len(kube.requests.filter(method="GET", path=path + "$"))
    version = str(kube.resource_version)
    seen: list[int] = []

    def each(secret: dict[str, Any]) -> dict[str, Any]:
        seen.append(len(seen))
        return _strip_data(secret)

    api = KubeApi(kube.url, headers=AGENT)
    try:
        listing = await api.list_objects(path, "test.rdsiam.io/listing=paged", each=each)
    finally:
        await api.close()
    pages = kube.requests.filter(method="GET", path=path + "$")[before:]
    assert [r.query.get("limit") for r in pages] == [str(kubeapi.LIST_PAGE)] * 3  # 500 + 500 + 203
    assert [bool(r.query.get("continue")) for r in pages] == [False, True, True]
    items = listing["items"]
    assert len(items) == len(seen) == 1203
    assert sorted(i["metadata"]["name"] for i in items) == [f"s-{i:04d}" for i in range(1203)]
    assert all("data" not in i and i["keys"] == ["password", "username"] for i in items)  # no data kept
    assert listing["metadata"]["resourceVersion"] == version  # the first page's


async def test_the_secret_informer_lists_in_pages_and_keeps_no_data(kube: Any, filled: str) -> None:
    got: list[list[dict[str, Any]]] = []
    api = KubeApi(kube.url, headers=AGENT)
    inf = Informer(api, f"/api/v1/namespaces/{filled}/secrets", on_list=got.append, on_event=lambda k, o: None,
                   label_selector="test.rdsiam.io/listing=paged", each=_strip_data)
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()
    assert len(got) == 1 and len(got[0]) == 1203 and not any("data" in s for s in got[0])
