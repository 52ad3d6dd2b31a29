"""The Helm chart (charts/rdsiam): what it renders, with helm and with the fallback renderer.

Rendering uses ``helm template`` when helm is installed (on PATH or built by scripts/build-realapi.sh)
and ``rdsiam.testing.helm`` otherwise; while helm exists, both must produce the same objects, so the
fallback stays honest. Every rendered object is validated against the Kubernetes OpenAPI schemas
(kubernetes-validate). The RBAC rules are cross-checked against the operator's real API calls in
test_chart_rbac.py.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rdsiam.testing import helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rdsiam"
CRD_FILE = ROOT / "crds" / "rdsiam.io_rdsiamcredentials.yaml"
KUBE_VERSION = "1.33.0"  # a recent Kubernetes; kubernetes-validate has its schemas
HELM = helm.find_helm()
needs_helm = pytest.mark.skipif(HELM is None, reason="helm not installed (PATH or scripts/build-realapi.sh helm)")

# Value sets every check runs on: the defaults, the ci/ files, and switches the ci/ files leave out.
VALUE_SETS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "defaults": ((), {}),
    "ci-all": (("ci/all-values.yaml",), {}),
    "ci-namespaced": (("ci/namespaced-values.yaml",), {}),
    "no-rbac-existing-sa": (
        (),
        {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}, "crds": {"keep": False}},
    ),
    "pdb-max-unavailable-zero": ((), {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 0}}),
    "digest-pdb-max-unavailable": (
        (),
        {
            "fullnameOverride": "iam-tokens",
            "image": {"digest": "sha256:" + "a" * 64},
            "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
            "metrics": {"service": {"enabled": True}},
            "tenancy": {"allowOperatorIdentity": False},
            "identity": {"serviceAccountMode": False},
            "watchNamespaces": ["team-a"],
        },
    ),
}


@functools.cache
def _render(name: str, with_helm: bool = False) -> tuple[dict[str, Any], ...]:
    files, values = VALUE_SETS[name]
    paths = [CHART / f for f in files]
    if with_helm:
        text = helm.template(CHART, values_files=paths, values=values, kube_version=KUBE_VERSION)
        assert text is not None
        return tuple(helm.objects(text))
    return tuple(helm.objects(helm.render(CHART, values_files=paths, values=values, kube_version=KUBE_VERSION)))


def rendered(name: str) -> list[dict[str, Any]]:
    """The objects, from helm when installed (the real thing), else from the fallback renderer."""
    return list(_render(name, with_helm=HELM is not None))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0])


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


# ---- both renderers agree; helm lint ---------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("name", VALUE_SETS)
def test_fallback_renderer_matches_helm(name: str) -> None:
    ours = {_key(o): o for o in _render(name)}
    helms = {_key(o): o for o in _render(name, with_helm=True)}
    assert sorted(ours) == sorted(helms)
    for key, obj in helms.items():
        assert ours[key] == obj, f"{key} differs between helm and the fallback renderer"


@needs_helm
def test_notes_are_the_same_with_both_renderers(tmp_path: Path) -> None:
    # helm template never prints NOTES.txt: render it into a ConfigMap of a copy of the chart.
    chart = tmp_path / "rdsiam"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include "notes" . | toJson }}\n'
    )
    for files in ((), (chart / "ci" / "all-values.yaml",), (chart / "ci" / "namespaced-values.yaml",)):
        text = helm.template(chart, values_files=files, kube_version=KUBE_VERSION)
        assert text is not None
        from_helm = next(o for o in helm.objects(text) if o["kind"] == "ConfigMap")["data"]["notes"]
        ours = helm.render(chart, values_files=files, kube_version=KUBE_VERSION)["NOTES.txt"]
        assert from_helm.strip() == ours.strip()


@needs_helm
@pytest.mark.parametrize("files", [(), ("ci/all-values.yaml",), ("ci/namespaced-values.yaml",)])
def test_helm_lint_strict(files: tuple[str, ...]) -> None:
    out = helm.lint(CHART, values_files=[CHART / f for f in files])
    assert out is not None and "0 chart(s) failed" in out


# ---- the objects are valid Kubernetes objects ---------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_validates_against_the_kubernetes_schemas(name: str) -> None:
    objects = rendered(name)
    assert objects
    for obj in objects:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # not a Kubernetes API; its fields are checked in test_metrics_service_and_servicemonitor
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{_key(obj)}: {str(exc).splitlines()[0]} at {list(exc.path)}")
        names = [obj["metadata"]["name"]]
        assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n) and len(n) <= 63 for n in names), names


# ---- the CRD ----------------------------------------------------------------------------------


def test_chart_crd_copy_is_identical_to_crds_dir() -> None:
    copy = CHART / "files" / CRD_FILE.name
    assert copy.read_bytes() == CRD_FILE.read_bytes(), (
        f"{copy.relative_to(ROOT)} drifted from crds/: cp {CRD_FILE.relative_to(ROOT)} {copy.relative_to(ROOT)}"
    )


def test_chart_installs_the_crd_and_keeps_it_on_uninstall() -> None:
    source = yaml.safe_load(CRD_FILE.read_text())
    crd = one(rendered("defaults"), "CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    loose = one(rendered("no-rbac-existing-sa"), "CustomResourceDefinition")  # crds.keep=false
    assert "annotations" not in loose["metadata"]
    assert not by_kind(rendered("ci-namespaced"), "CustomResourceDefinition")  # crds.enabled=false


# ---- the pod ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pod_is_hardened_and_probed(name: str) -> None:
    objects = rendered(name)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    liveness = next(a for a in c["args"] if a.startswith("--liveness="))
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["healthz"]
    assert liveness == f"--liveness=http://0.0.0.0:{port}/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # writable scratch on a read-only root
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    sa = pod["serviceAccountName"]
    if name == "no-rbac-existing-sa":
        assert sa == "ops" and not by_kind(objects, "ServiceAccount")
    else:
        assert one(objects, "ServiceAccount")["metadata"]["name"] == sa


def _parsed_args(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Deployment's args as the real `rdsiam run` parses them (unknown or malformed flags fail)."""
    import rdsiam.cli

    captured: list[Any] = []
    monkeypatch.setattr(rdsiam.cli, "_run", lambda args: captured.append(args) or 0)
    assert rdsiam.cli.main(["run", *container(objects)["args"]]) == 0
    return captured[0]


def test_default_values_map_to_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _parsed_args(rendered("defaults"), monkeypatch)
    assert (args.log_level, args.log_format, args.metrics_port, args.concurrency) == ("info", "json", 9102, 16)
    assert args.namespace is None and not args.leader_election
    assert not (args.require_service_account or args.no_operator_identity or args.namespace_policy)
    assert args.allowed_role_arns == "*"


def test_ci_values_map_to_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered("ci-all")
    args = _parsed_args(objects, monkeypatch)
    assert args.leader_election and (args.lease_namespace, args.lease_name) == ("rdsiam-system", "rdsiam-leader")
    assert args.require_service_account and args.no_operator_identity and args.namespace_policy
    assert (
        args.allowed_role_arns
        == "arn:aws:iam::123456789012:role/rdsiam/{namespace}/*,arn:aws:iam::123456789012:role/shared-readonly"
    )
    assert (args.log_level, args.concurrency, args.rotation_events) == ("debug", 32, True)
    assert args.verify_timeout == 2.5  # extraArgs come last and win
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    assert env["AWS_REGION"] == "us-east-1" and env["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    sa = one(objects, "ServiceAccount")["metadata"]
    assert sa["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/rdsiam-operator"}
    namespaced = _parsed_args(rendered("ci-namespaced"), monkeypatch)
    assert namespaced.namespace == ["shop", "billing"] and namespaced.metrics_port is None
    assert namespaced.leader_election and namespaced.log_format == "text"


def test_more_than_one_replica_turns_leader_election_on(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = helm.objects(helm.render(CHART, values={"replicaCount": 3}, namespace="ops"))
    args = _parsed_args(objects, monkeypatch)
    assert args.leader_election and args.lease_namespace == "ops"
    role = next(r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election"))
    assert role["metadata"]["namespace"] == "ops"


def test_metrics_service_and_servicemonitor() -> None:
    objects = rendered("ci-all")
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9102, "targetPort": "metrics", "protocol": "TCP"}]
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not by_kind(rendered("defaults"), "Service") and not by_kind(rendered("defaults"), "ServiceMonitor")
    assert one(rendered("digest-pdb-max-unavailable"), "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": pdb["spec"]["selector"],
    }
    # 0 (no voluntary disruption at all) is a value, not "unset"
    assert one(rendered("pdb-max-unavailable-zero"), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 0


# ---- RBAC shape (the cross-check with real API calls is in test_chart_rbac.py) ---------------


def _rules(obj: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v) for rule in obj["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def test_cluster_wide_install_has_one_clusterrole() -> None:
    objects = rendered("defaults")
    role = one(objects, "ClusterRole")
    assert ("", "serviceaccounts/token", "create") in _rules(role)
    assert ("", "namespaces", "get") not in _rules(role)  # no tenancy policy reads namespaces by default
    assert not by_kind(objects, "Role")  # no leader election with one replica
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rdsiam", "namespace": "rdsiam-system"}]
    everything = _rules(one(rendered("ci-all"), "ClusterRole"))
    assert ("", "namespaces", "get") in everything
    assert not any("*" in triple for triple in everything)


def test_namespaced_install_has_roles_and_no_cluster_wide_rule() -> None:
    objects = rendered("ci-namespaced")
    roles = {
        r["metadata"]["namespace"]: r
        for r in by_kind(objects, "Role")
        if not r["metadata"]["name"].endswith("-leader-election")
    }
    assert sorted(roles) == ["billing", "shop"]
    for role in roles.values():
        assert ("", "serviceaccounts/token", "create") not in _rules(role)  # identity.serviceAccountMode=false
        assert ("", "secrets", "list") in _rules(role)
    cluster = one(objects, "ClusterRole")  # only to read the two namespaces' tenancy labels/annotations
    assert cluster["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["shop", "billing"], "verbs": ["get"]}
    ]
    assert not by_kind(rendered("no-rbac-existing-sa"), "ClusterRole")


def test_every_rbac_rule_says_why() -> None:
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    rules = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rules) >= 9
    for i in rules:
        above = next(x.strip() for x in reversed(lines[:i]) if x.strip() and not x.strip().startswith("{{"))
        assert above.startswith("#"), f"rbac.yaml:{i + 1}: no comment right above this rule saying why"


# ---- values: documented, typed, validated -----------------------------------------------------


def _documented_keys() -> tuple[list[str], list[str]]:
    """(all keys, undocumented keys) of values.yaml: a key is documented by a comment right above it,
    or when all its child keys are."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    entries: list[tuple[int, str, bool]] = []  # (indent, dotted key, has a comment above)
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [m.group(2)])
        stack.append((indent, m.group(2)))
        entries.append((indent, key, i > 0 and lines[i - 1].strip().startswith("#")))
    documented: dict[str, bool] = {}
    for _, key, commented in reversed(entries):
        children = [documented[k] for k in documented if k.startswith(key + ".") and k.count(".") == key.count(".") + 1]
        documented[key] = commented or (bool(children) and all(children))
    keys = [k for _, k, _ in entries]
    return keys, [k for k in keys if not documented[k] and not any(documented.get(p) for p in _parents(k))]


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_every_values_key_is_documented_and_in_the_schema() -> None:
    keys, undocumented = _documented_keys()
    assert len(keys) > 40
    assert not undocumented, f"values.yaml keys without a comment: {undocumented}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], sub: dict[str, Any], path: str) -> None:
        for key, value in node.items():
            assert key in sub.get("properties", {}), f"{path}{key} is not in values.schema.json"
            child = sub["properties"][key]
            if isinstance(value, dict) and "properties" in child:
                walk(value, child, f"{path}{key}.")

    walk(values, schema, "")
    assert schema["additionalProperties"] is False  # a misspelt key is an error, not silently ignored


BAD_VALUES = {
    "misspelt key": {"tenancy": {"requireServiceAcount": True}},
    "log format": {"logFormat": "xml"},
    "namespace name": {"watchNamespaces": ["Shop_Team"]},
    "require-service-account without ServiceAccount mode": {
        "tenancy": {"requireServiceAccount": True},
        "identity": {"serviceAccountMode": False},
    },
    "existing ServiceAccount without a name": {"serviceAccount": {"create": False}},
    "port": {"metrics": {"port": 70000}},
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_refuses_bad_values(case: str) -> None:
    with pytest.raises(helm.ValuesError):
        helm.render(CHART, values=BAD_VALUES[case])
    if HELM is not None:
        with pytest.raises(helm.HelmError, match="values don't meet the specifications of the schema"):
            helm.template(CHART, values=BAD_VALUES[case], kube_version=KUBE_VERSION)


# ---- NOTES.txt --------------------------------------------------------------------------------


def test_notes_tell_the_next_step() -> None:
    notes = helm.render(CHART)["NOTES.txt"]
    assert "has no eks.amazonaws.com/role-arn annotation" in notes  # the likely first problem
    assert "kubectl apply -f examples/basic/rdsiamcredential.yaml" in notes
    assert "kubectl describe rdsiam" in notes and "GRANT rds_iam" in notes
    configured = helm.render(CHART, values_files=[CHART / "ci" / "all-values.yaml"])["NOTES.txt"]
    assert "role-arn annotation" not in configured
    assert "Lease rdsiam-system/rdsiam-leader" in configured
    assert "http://rdsiam-metrics.rdsiam-system.svc:9102/metrics" in configured


# ---- the fallback renderer refuses what it does not implement ------------------------------


def test_fallback_renderer_fails_loudly_on_unsupported_templates(tmp_path: Path) -> None:
    chart = tmp_path / "c"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("x: 1\n")
    (chart / "templates" / "a.yaml").write_text("v: {{ sha256sum .Values.x }}\n")
    with pytest.raises(helm.TemplateError, match="sha256sum"):
        helm.render(chart)
    (chart / "templates" / "a.yaml").write_text("{{ if .Values.x }}open\n")
    with pytest.raises(helm.TemplateError, match="end"):
        helm.render(chart)
