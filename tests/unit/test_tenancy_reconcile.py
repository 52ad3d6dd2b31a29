"""The tenancy policy inside a reconciliation: fail closed, and retry refusals a namespace can lift."""

from __future__ import annotations

from typing import Any

from rdsiam.operator import reasons
from rdsiam.operator.kube import ApiError
from rdsiam.operator.reconcile import Reconciler
from rdsiam.operator.tenancy import OPERATOR_IDENTITY_LABEL, TenancyPolicy
from tests.unit.test_reconcile import HOST, T0, FakeIdentities, FakeKube, resource

SPEC = {"host": HOST, "username": "app_user", "database": "orders"}


def reconciler(kube: FakeKube, ids: FakeIdentities, policy: TenancyPolicy) -> Reconciler:
    return Reconciler(kube, ids, clock=lambda: T0, tenancy=policy)  # type: ignore[arg-type]


async def test_refusal_by_flags_is_final_and_never_asks_aws() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    out = await reconciler(kube, ids, TenancyPolicy(require_service_account=True)).reconcile(resource(SPEC))
    assert out.reason == reasons.IDENTITY_NOT_ALLOWED and out.next_due is None and out.retry_after is None
    assert ids.keys == [] and kube.secrets == {}
    ready = kube.statuses[-1]["conditions"][0]
    assert ready["status"] == "False" and "rule require-service-account:" in ready["message"]
    assert kube.events[-1]["type"] == "Warning" and kube.events[-1]["reason"] == reasons.IDENTITY_NOT_ALLOWED


async def test_refusal_by_namespace_labels_is_retried_and_lifted_by_a_label() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    labels: dict[str, str] = {}

    async def get_namespace(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": dict(labels)}}

    kube.get_namespace = get_namespace  # type: ignore[method-assign]
    rec = reconciler(kube, ids, TenancyPolicy(allow_operator_identity=False))
    out = await rec.reconcile(resource(SPEC))
    assert out.reason == reasons.IDENTITY_NOT_ALLOWED and out.retry_after == 60.0
    assert "rule no-operator-identity:" in kube.statuses[-1]["conditions"][0]["message"]
    labels[OPERATOR_IDENTITY_LABEL] = "true"  # the admin's fix; the resource itself is unchanged
    out = await rec.reconcile(resource(SPEC))
    assert out.ok and out.refreshed and ("shop", "orders") in kube.secrets


async def test_unreadable_namespace_fails_closed_as_a_kubernetes_error() -> None:
    kube, ids = FakeKube(), FakeIdentities()

    async def forbidden(name: str) -> dict[str, Any]:
        raise ApiError(403, "Forbidden", 'namespaces "shop" is forbidden')

    kube.get_namespace = forbidden  # type: ignore[method-assign]
    # --namespace-policy narrows roles: an unread annotation must not count as "no narrowing".
    policy = TenancyPolicy(namespace_policy=True)
    spec = {**SPEC, "assumeRoleArn": "arn:aws:iam::123456789012:role/anything"}
    out = await reconciler(kube, ids, policy).reconcile(resource(spec))
    assert out.reason == reasons.KUBERNETES_ERROR and out.retry_after
    assert ids.keys == [] and kube.secrets == {}
    message = kube.statuses[-1]["conditions"][0]["message"]
    assert "namespace shop" in message and "namespaces get" in message
