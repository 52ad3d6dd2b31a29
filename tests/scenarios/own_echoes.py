"""The operator's client knows the watch events of its own Secret writes without decoding them, on each
tier's wire format: the emulator (tests/integration) and kube-apiserver (tests/realapi). Its status writes'
events are decoded (a write that changes nothing must not hide someone else's change). Each tier's module
imports this test and provides the ``cluster`` (``url``, ``token``, an optional ``ca_file``, ``client()``)
and ``ns`` fixtures.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from rdsiam.operator.kubeapi import KubeApi

CREDS = "/apis/rdsiam.io/v1alpha1/namespaces/{ns}/rdsiamcredentials"


def operator_client(cluster: Any) -> KubeApi:
    ca_file = getattr(cluster, "ca_file", "")
    return KubeApi(cluster.url, headers={"Authorization": f"Bearer {cluster.token}"},
                   ssl_context=ssl.create_default_context(cafile=ca_file) if ca_file else True)


async def events_of(kube: KubeApi, path: str, since: str, name: str, count: int, metadata_only: bool
                    ) -> list[tuple[str, dict[str, Any]]]:
    """The first ``count`` watch events from ``since`` that are about ``name`` or are own echoes."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(30):
        async for event in kube.watch_objects(path, since, timeout=20, metadata_only=metadata_only):
            meta = event["object"]["metadata"]
            if event["type"] == "ECHO" or meta.get("name") == name:
                seen.append((event["type"], meta))
            if len(seen) == count:
                break
    return seen


def test_own_secret_writes_echo_undecoded_and_other_changes_do_not(cluster: Any, ns: str) -> None:
    async def scenario() -> None:
        kube = operator_client(cluster)
        try:
            # Secrets, watched as metadata (as the operator does): a create, a replace, then someone else.
            secrets = f"/api/v1/namespaces/{ns}/secrets"
            since = (await kube.list_objects(secrets))["metadata"]["resourceVersion"]
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "own", "namespace": ns, "labels": {"app": "x"},
                                 "annotations": {"resourceVersion": "1", "note": '"resourceVersion":"1"'}},
                    "data": {"password": "dG9rZW4="}}
            created = (await kube.create_secret(ns, body))["metadata"]["resourceVersion"]
            body["metadata"]["resourceVersion"] = created
            body["data"] = {"password": "dG9rZW4y"}  # a write that changes nothing makes no event
            replaced = (await kube.replace_secret(ns, "own", body))["metadata"]["resourceVersion"]
            cluster.client().patch(f"{secrets}/own", {"metadata": {"labels": {"by": "someone-else"}}})
            events = await events_of(kube, secrets, since, "own", 3, metadata_only=True)
            # The annotation keyed "resourceVersion" makes both own events ambiguous text: decoded, and
            # handed on like any other event (nothing is skipped on a guess).
            assert [kind for kind, _ in events] == ["ADDED", "MODIFIED", "MODIFIED"], events
            assert [meta["resourceVersion"] for _, meta in events[:2]] == [created, replaced]

            body["metadata"]["annotations"] = {"note": '"resourceVersion":"1"'}  # escaped quotes: no key
            body["metadata"]["resourceVersion"] = events[2][1]["resourceVersion"]
            since = body["metadata"]["resourceVersion"]
            again = (await kube.replace_secret(ns, "own", body))["metadata"]["resourceVersion"]
            cluster.client().patch(f"{secrets}/own", {"metadata": {"labels": {"by": "someone-else-again"}}})
            events = await events_of(kube, secrets, since, "own", 2, metadata_only=True)
            assert events[0] == ("ECHO", {"resourceVersion": again})
            assert events[1][0] == "MODIFIED" and events[1][1]["labels"]["by"] == "someone-else-again"

            # Status writes are decoded like any other event: an unconditional patch that changes nothing
            # answers with the version of the object's last change, here someone else's, whose event must
            # not be taken for an echo. (kube-apiserver adds managedFields to these events.)
            path = CREDS.format(ns=ns)
            cluster.client().create(path, {"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
                                           "metadata": {"name": "own"},
                                           "spec": {"host": "db.abc.us-east-1.rds.amazonaws.com", "username": "u"}})
            since = (await kube.list_objects(path))["metadata"]["resourceVersion"]
            status = {"secretName": "own", "expiresAt": "2026-11-21T10:15:00Z"}
            await kube.patch_status(ns, "own", status)
            cluster.client().patch(f"{path}/own", {"metadata": {"labels": {"by": "someone-else"}}})
            await kube.patch_status(ns, "own", status)  # changes nothing: answers with the label's version
            events = await events_of(kube, path, since, "own", 2, metadata_only=False)
            assert [kind for kind, _ in events] == ["MODIFIED", "MODIFIED"], events
            assert events[1][1].get("labels") == {"by": "someone-else"}, events
        finally:
            await kube.close()

    asyncio.run(scenario())
