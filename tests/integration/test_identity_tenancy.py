"""The tenancy policy end to end: a resource in namespace A cannot borrow an identity meant for B.

A refused resource gets Ready=False, reason IdentityNotAllowed, a message naming the rule, a Warning
Event, no Secret, and the operator never even asks STS for the refused identity.
"""

from __future__ import annotations

import time
from typing import Any

from rdsiam.testing.kubectl import Kubectl
from tests.integration.test_identity_modes import (
    assert_signed_by,
    assumed,
    create_service_account,
    forget_credentials,  # noqa: F401 - an autouse fixture
    other_ns,  # noqa: F401 - a fixture
    scoped,
    sessions_of,
    sts_requests,
    unique,
    wait_reason,
    wait_secret,
    warning_events,
)
from tests.scenarios.operator_core import app_user, credential  # noqa: F401 - app_user is a fixture


def refused(kubectl: Kubectl, name: str, ns: str, rule: str) -> str:
    cond = wait_reason(kubectl, name, ns, "IdentityNotAllowed")
    assert cond["status"] == "False" and f"rule {rule}:" in cond["message"]
    assert kubectl.get("secret", name, ns) is None
    events = warning_events(kubectl, name, ns, "IdentityNotAllowed")
    assert f"rule {rule}:" in events[0]["message"]
    return str(cond["message"])


def test_allowed_role_arns_refuse_another_namespaces_role(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    other_ns: str,  # noqa: F811
    app_user: str,  # noqa: F811
) -> None:
    other = other_ns
    mine = sts.create_role(f"{ns}-orders")
    theirs = sts.create_role(f"{other}-payments")
    operator = operator_factory(args=[*scoped(ns, other), "--allowed-role-arns", "arn:aws:iam::*:role/{namespace}-*"])
    kubectl.apply(
        [
            credential(rds, "borrow", ns, assumeRoleArn=theirs),
            credential(rds, "own", ns, assumeRoleArn=mine),
            credential(rds, "own", other, assumeRoleArn=theirs),
        ]
    )
    message = refused(kubectl, "borrow", ns, "allowed-role-arns")
    assert theirs in message and f"arn:aws:iam::*:role/{ns}-*" in message and "--allowed-role-arns" in message
    data = wait_secret(kubectl, "own", ns)
    assert_signed_by(sts, rds, kubectl, "own", ns, data, assumed(sts, mine, f"rdsiam-{ns}"))
    data = wait_secret(kubectl, "own", other)
    assert_signed_by(sts, rds, kubectl, "own", other, data, assumed(sts, theirs, f"rdsiam-{other}"))
    # The refused resource never even made the operator ask STS.
    assert [s.arn for s in sessions_of(sts, theirs)] == [assumed(sts, theirs, f"rdsiam-{other}")]
    assert sts_requests(operator).get("AssumeRole") == 2
    # The operator warns at startup that '{namespace}-' lets namespace 'team' match 'team-a-...' roles.
    assert "can continue a namespace name" in operator.log()


def test_namespace_annotation_narrows_the_allowed_roles(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    orders = sts.create_role(f"{ns}.orders")
    payments = sts.create_role(f"{ns}.payments")
    kubectl.run("annotate", "namespace", ns, "rdsiam.io/allowed-role-arns=arn:aws:iam::*:role/{namespace}.orders")
    operator = operator_factory(
        args=[*scoped(ns), "--allowed-role-arns", "arn:aws:iam::*:role/{namespace}.*", "--namespace-policy"]
    )
    kubectl.apply(
        [credential(rds, "payments", ns, assumeRoleArn=payments), credential(rds, "orders", ns, assumeRoleArn=orders)]
    )
    message = refused(kubectl, "payments", ns, "namespace-allowed-role-arns")
    assert payments in message and "rdsiam.io/allowed-role-arns" in message
    data = wait_secret(kubectl, "orders", ns)
    assert_signed_by(sts, rds, kubectl, "orders", ns, data, assumed(sts, orders, f"rdsiam-{ns}"))
    assert "can continue a namespace name" not in operator.log()


def test_require_service_account(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    app_user: str,  # noqa: F811
) -> None:
    role = sts.create_role(unique("orders-app"))
    create_service_account(kubectl, ns, "orders-app", role)
    operator_factory(args=[*scoped(ns), "--require-service-account"])
    kubectl.apply(
        [
            credential(rds, "own-identity", ns),
            credential(rds, "role-only", ns, assumeRoleArn=role),
            credential(rds, "with-sa", ns, serviceAccountName="orders-app"),
        ]
    )
    for name in ("own-identity", "role-only"):
        message = refused(kubectl, name, ns, "require-service-account")
        assert "spec.serviceAccountName" in message
    data = wait_secret(kubectl, "with-sa", ns)
    assert_signed_by(sts, rds, kubectl, "with-sa", ns, data, assumed(sts, role, f"rdsiam-{ns}-orders-app"))


def test_no_operator_identity_unless_the_namespace_is_labelled(
    kubectl: Kubectl,
    rds: Any,
    sts: Any,
    operator_factory: Any,
    ns: str,
    other_ns: str,  # noqa: F811
    app_user: str,  # noqa: F811
) -> None:
    role = sts.create_role(unique("orders"))
    trusted = other_ns
    kubectl.run("label", "namespace", trusted, "rdsiam.io/allow-operator-identity=true")
    operator_factory(args=[*scoped(ns, trusted), "--no-operator-identity"])
    kubectl.apply(
        [credential(rds, "own", ns), credential(rds, "role", ns, assumeRoleArn=role), credential(rds, "own", trusted)]
    )
    message = refused(kubectl, "own", ns, "no-operator-identity")
    assert "rdsiam.io/allow-operator-identity=true" in message
    data = wait_secret(kubectl, "role", ns)
    assert_signed_by(sts, rds, kubectl, "role", ns, data, assumed(sts, role, f"rdsiam-{ns}"))
    data = wait_secret(kubectl, "own", trusted)
    operator_arn = kubectl.get("rdsiamcredential", "own", trusted)["status"]["identity"]  # type: ignore[index]
    assert "assumed-role/rdsiam-operator/" in operator_arn
    assert_signed_by(sts, rds, kubectl, "own", trusted, data, operator_arn)
    # An admin labels the namespace: the refusal is lifted (a refresh request makes it immediate).
    kubectl.run("label", "namespace", ns, "rdsiam.io/allow-operator-identity=true")
    kubectl.run(
        "annotate",
        "rdsiamcredential",
        "own",
        "-n",
        ns,
        f"rdsiam.io/refresh-requested-at={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        "--overwrite",
    )
    data = wait_secret(kubectl, "own", ns)
    assert_signed_by(sts, rds, kubectl, "own", ns, data, operator_arn)
