"""Tenancy policy: which AWS identities a resource in a namespace may sign with (no confused deputy).

Set by flags / Helm values. Default: permissive (single-tenant installs). Hardening:

- ``--require-service-account``: every resource must name ``spec.serviceAccountName``; the IAM trust
  policy on that ServiceAccount's role then decides who may connect.
- ``--no-operator-identity``: resources may not sign with the operator's own role, except in
  namespaces labelled ``rdsiam.io/allow-operator-identity=true``.
- ``--allowed-role-arns PATTERN,...``: ``spec.assumeRoleArn`` must match one of these shell-style
  patterns; ``{namespace}`` in a pattern is replaced by the resource's namespace
  (``arn:aws:iam::*:role/rdsiam/{namespace}/*``).
- ``--namespace-policy``: namespaces may narrow this further with the annotation
  ``rdsiam.io/allowed-role-arns: PATTERN,...`` (read by the operator; needs ``namespaces get``).

Put a character that namespace names cannot contain (``.``, ``_``, ``@``, ``+``, ``=``, ``/``) right after
``{namespace}``: with ``role/{namespace}-*``, namespace ``team`` also matches ``role/team-a-db``, a role
meant for namespace ``team-a``. :meth:`TenancyPolicy.warnings` says so at startup.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

OPERATOR_IDENTITY_LABEL = "rdsiam.io/allow-operator-identity"
ROLE_ARNS_ANNOTATION = "rdsiam.io/allowed-role-arns"


# Characters a namespace name (an RFC 1123 label) may contain, and glob characters that match them.
_NAMESPACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_GLOB = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class Refusal:
    rule: str
    message: str
    # True when the namespace's labels/annotations decided: a change there (not only to the resource)
    # can lift the refusal, so it is retried rather than final.
    depends_on_namespace: bool = False


@dataclasses.dataclass(frozen=True)
class TenancyPolicy:
    allow_operator_identity: bool = True
    require_service_account: bool = False
    allowed_role_arns: tuple[str, ...] = ("*",)
    namespace_policy: bool = False

    @property
    def needs_namespace(self) -> bool:
        return self.namespace_policy or not self.allow_operator_identity

    def warnings(self) -> list[str]:
        """Configuration mistakes worth a startup warning (pure)."""
        found = []
        for pattern in self.allowed_role_arns:
            at = pattern.find("{namespace}")
            if at < 0:
                continue
            after = pattern[at + len("{namespace}"):at + len("{namespace}") + 1]
            if after and (after in _NAMESPACE_CHARS or after in _GLOB):
                found.append(
                    f"--allowed-role-arns pattern {pattern!r}: {{namespace}} is followed by {after!r}, which can "
                    "continue a namespace name, so namespace 'team' may also use roles meant for namespace "
                    "'team-a'. Follow {namespace} with a character namespace names cannot contain, e.g. "
                    "'role/{namespace}.*', 'role/{namespace}_*' or an IAM path 'role/{namespace}/*'.")
        return found

    def check(
        self, *, namespace: str, role_arn: str | None, service_account: str | None,
        namespace_obj: dict[str, Any] | None = None,
    ) -> Refusal | None:
        """None when allowed; otherwise which rule refused and why (pure)."""
        meta = (namespace_obj or {}).get("metadata", {})
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        if self.require_service_account and not service_account:
            return Refusal(
                "require-service-account",
                "this operator requires spec.serviceAccountName (--require-service-account): name a "
                "ServiceAccount of this namespace whose eks.amazonaws.com/role-arn role may connect")
        if not service_account and not role_arn and not self.allow_operator_identity \
                and labels.get(OPERATOR_IDENTITY_LABEL) != "true":
            return Refusal(
                "no-operator-identity",
                "signing with the operator's own identity is not allowed in namespace "
                f"{namespace!r} (--no-operator-identity); set spec.serviceAccountName or spec.assumeRoleArn, "
                f"or have an admin label the namespace {OPERATOR_IDENTITY_LABEL}=true",
                depends_on_namespace=True)
        if role_arn:
            patterns = [p.replace("{namespace}", namespace) for p in self.allowed_role_arns]
            if not any(fnmatch.fnmatchcase(role_arn, p) for p in patterns):
                return Refusal(
                    "allowed-role-arns",
                    f"spec.assumeRoleArn {role_arn} is not allowed for namespace {namespace!r}: it matches "
                    f"none of the operator's --allowed-role-arns patterns ({', '.join(patterns)})")
            ns_rule = annotations.get(ROLE_ARNS_ANNOTATION) if self.namespace_policy else None
            if ns_rule is not None:
                ns_patterns = [p.strip().replace("{namespace}", namespace) for p in ns_rule.split(",")
                               if p.strip()]
                if not any(fnmatch.fnmatchcase(role_arn, p) for p in ns_patterns):
                    return Refusal(
                        "namespace-allowed-role-arns",
                        f"spec.assumeRoleArn {role_arn} is not allowed by namespace {namespace!r}'s "
                        f"{ROLE_ARNS_ANNOTATION} annotation ({', '.join(ns_patterns) or 'empty'})",
                        depends_on_namespace=True)
        return None
