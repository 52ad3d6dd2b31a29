"""The fault proxy the tier relies on does what the tests ask of it, against the real API server: it
forwards with the client's own credentials, streams a watch event by event (not when the watch ends),
answers injected faults with Kubernetes ``Status`` bodies (a 410 on a watch as kube-apiserver sends it),
holds requests for the latency asked, counts them, and ends or cuts open watches."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from rdsiam.testing.kubefaults import KubeFaultProxy
from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import call


def through(proxy: KubeFaultProxy, token: str, method: str, path: str, body: Any = None,
            timeout: float = 10.0) -> http.client.HTTPResponse:
    host, _, port = proxy.url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return conn.getresponse()


def test_the_proxy_streams_watches_and_injects_what_it_is_told(
    cluster: RealCluster, kube_faults: KubeFaultProxy, spaces: Callable[[str], str],
) -> None:
    ns = spaces("proxy")
    base = f"/api/v1/namespaces/{ns}/configmaps"
    proxy, token = kube_faults, cluster.token

    # Forwarded with the client's credentials; without them the API server refuses.
    assert through(proxy, token, "GET", base).status == 200
    assert through(proxy, "not-a-token", "GET", base).status == 401

    # An injected status, for its `times` only, with a Status body.
    conflict = proxy.inject(f"{base}$", method="POST", status=409, times=1)
    refused = through(proxy, token, "POST", base, {"metadata": {"name": "a"}})
    status = json.loads(refused.read())
    assert (refused.status, status["kind"], status["reason"], status["code"]) == (409, "Status", "Conflict", 409)
    assert through(proxy, token, "POST", base, {"metadata": {"name": "a"}}).status == 201
    assert conflict.hits == 1 and proxy.counts[f"POST {base}"] == 2

    # Latency: held before it is forwarded.
    proxy.inject(f"{base}/a$", method="GET", latency=1.0, times=1)
    began = time.monotonic()
    assert through(proxy, token, "GET", f"{base}/a").status == 200
    assert time.monotonic() - began >= 1.0

    # A watch streams each event as it comes, and ends cleanly when told.
    rv = call(cluster, "GET", base)["metadata"]["resourceVersion"]
    watch = through(proxy, token, "GET", f"{base}?watch=1&resourceVersion={rv}&timeoutSeconds=60", timeout=20)
    call(cluster, "POST", base, {"metadata": {"name": "b"}})
    began = time.monotonic()
    event = json.loads(watch.readline())
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "b")
    assert time.monotonic() - began < 5, "the event came only when the watch ended: buffered"
    assert proxy.open_watches(f"^{base}$") == 1
    assert proxy.end_watches(f"^{base}$") == 1
    assert watch.read() == b""  # a complete answer: no IncompleteRead

    # ...or is cut, as by a network failure.
    watch = through(proxy, token, "GET", f"{base}?watch=1&resourceVersion={rv}&timeoutSeconds=60", timeout=20)
    assert json.loads(watch.readline())["type"] == "ADDED"
    assert proxy.drop_watches() == 1
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while watch.read(65536):
            pass

    # 410 on a watch: HTTP 200 and one ERROR event holding an Expired Status, as kube-apiserver sends it.
    proxy.inject(f"^{base}$", status=410, watch=True)
    gone = through(proxy, token, "GET", f"{base}?watch=1&resourceVersion={rv}")
    event = json.loads(gone.read())
    assert gone.status == 200 and event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    assert not any(hasattr(proxy, fault) for fault in ("throttle", "fail", "delay", "deny"))  # STS faults
