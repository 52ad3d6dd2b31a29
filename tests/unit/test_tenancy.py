"""Tenancy policy (pure): which identity a resource in a namespace may sign with, and why not."""

from __future__ import annotations

from typing import Any

import pytest

from rdsiam.operator.tenancy import OPERATOR_IDENTITY_LABEL, ROLE_ARNS_ANNOTATION, TenancyPolicy

ACCOUNT = "123456789012"


def role(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


def ns(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "x", "labels": labels or {}, "annotations": annotations or {}}}


def test_default_is_permissive() -> None:
    policy = TenancyPolicy()
    assert not policy.needs_namespace and policy.warnings() == []
    for kwargs in ({"role_arn": None, "service_account": None}, {"role_arn": role("any"), "service_account": None},
                   {"role_arn": None, "service_account": "app"}):
        assert policy.check(namespace="shop", **kwargs) is None


def test_role_patterns_expand_the_namespace_and_refuse_another_namespaces_role() -> None:
    policy = TenancyPolicy(allowed_role_arns=("arn:aws:iam::*:role/{namespace}.*",))
    assert policy.check(namespace="shop", role_arn=role("shop.orders"), service_account=None) is None
    refusal = policy.check(namespace="shop", role_arn=role("billing.ledger"), service_account=None)
    assert refusal is not None and refusal.rule == "allowed-role-arns" and not refusal.depends_on_namespace
    assert "arn:aws:iam::*:role/shop.*" in refusal.message and role("billing.ledger") in refusal.message
    # The operator's own identity and ServiceAccounts are not role patterns' business.
    assert policy.check(namespace="shop", role_arn=None, service_account=None) is None


def test_require_service_account() -> None:
    policy = TenancyPolicy(require_service_account=True)
    for role_arn in (None, role("shop-db")):
        refusal = policy.check(namespace="shop", role_arn=role_arn, service_account=None)
        assert refusal is not None and refusal.rule == "require-service-account"
        assert "spec.serviceAccountName" in refusal.message
    assert policy.check(namespace="shop", role_arn=None, service_account="orders-app") is None
    # A ServiceAccount chaining into a role: the role patterns still apply.
    strict = TenancyPolicy(require_service_account=True, allowed_role_arns=("arn:aws:iam::*:role/{namespace}/*",))
    assert strict.check(namespace="shop", role_arn=role("shop/db"), service_account="app") is None
    assert strict.check(namespace="shop", role_arn=role("bank/db"), service_account="app") is not None


def test_no_operator_identity_unless_the_namespace_is_labelled() -> None:
    policy = TenancyPolicy(allow_operator_identity=False)
    assert policy.needs_namespace
    refusal = policy.check(namespace="shop", role_arn=None, service_account=None, namespace_obj=ns())
    assert refusal is not None and refusal.rule == "no-operator-identity" and refusal.depends_on_namespace
    assert OPERATOR_IDENTITY_LABEL in refusal.message
    # A missing/unreadable namespace has no label: refused (fail closed).
    assert policy.check(namespace="shop", role_arn=None, service_account=None, namespace_obj=None) is not None
    assert policy.check(namespace="shop", role_arn=None, service_account=None,
                        namespace_obj=ns(labels={OPERATOR_IDENTITY_LABEL: "true"})) is None
    # An annotation is not a label (annotations are often writable by more people).
    assert policy.check(namespace="shop", role_arn=None, service_account=None,
                        namespace_obj=ns(annotations={OPERATOR_IDENTITY_LABEL: "true"})) is not None
    assert policy.check(namespace="shop", role_arn=role("x"), service_account=None, namespace_obj=ns()) is None
    assert policy.check(namespace="shop", role_arn=None, service_account="app", namespace_obj=ns()) is None


def test_namespace_annotation_narrows_but_never_widens() -> None:
    policy = TenancyPolicy(allowed_role_arns=("arn:aws:iam::*:role/{namespace}.*",), namespace_policy=True)
    narrowed = ns(annotations={ROLE_ARNS_ANNOTATION: "arn:aws:iam::*:role/{namespace}.orders, "
                               f"arn:aws:iam::{ACCOUNT}:role/anything"})
    assert policy.check(namespace="shop", role_arn=role("shop.orders"), service_account=None,
                        namespace_obj=narrowed) is None
    refusal = policy.check(namespace="shop", role_arn=role("shop.payments"), service_account=None,
                           namespace_obj=narrowed)
    assert refusal is not None and refusal.rule == "namespace-allowed-role-arns" and refusal.depends_on_namespace
    wider = policy.check(namespace="shop", role_arn=role("anything"), service_account=None, namespace_obj=narrowed)
    assert wider is not None and wider.rule == "allowed-role-arns"
    # Without --namespace-policy the annotation is ignored.
    off = TenancyPolicy(allowed_role_arns=("*",))
    assert off.check(namespace="shop", role_arn=role("shop.payments"), service_account=None,
                     namespace_obj=narrowed) is None


@pytest.mark.parametrize(("pattern", "ambiguous"), [
    ("arn:aws:iam::*:role/{namespace}-*", True),
    ("arn:aws:iam::*:role/{namespace}*", True),
    ("arn:aws:iam::*:role/{namespace}x", True),
    ("arn:aws:iam::*:role/{namespace}.*", False),
    ("arn:aws:iam::*:role/{namespace}_*", False),
    ("arn:aws:iam::*:role/{namespace}/*", False),
    ("arn:aws:iam::*:role/{namespace}", False),
    ("arn:aws:iam::*:role/rdsiam-*", False),
])
def test_patterns_that_let_a_namespace_take_a_longer_namespaces_roles_are_flagged(pattern: str,
                                                                                 ambiguous: bool) -> None:
    policy = TenancyPolicy(allowed_role_arns=(pattern,))
    assert bool(policy.warnings()) is ambiguous
    if ambiguous and pattern.endswith("-*"):
        # ...because it does: 'team' may use the role meant for namespace 'team-a'.
        assert policy.check(namespace="team", role_arn=role("team-a-db"), service_account=None) is None
        assert "team-a" in policy.warnings()[0]
    if pattern.endswith(".*"):
        assert policy.check(namespace="team", role_arn=role("team-a.db"), service_account=None) is not None
