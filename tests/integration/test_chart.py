"""The Helm chart (charts/rdsiam): what the real helm renders (``helm template``, tests/_helm.py).

Every rendered object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate). The
RBAC rules are cross-checked against the operator's real API calls in test_chart_rbac.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import _helm as helm
from tests._helm import CHART, KUBE_VERSION

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "rdsiam.io_rdsiamcredentials.yaml"

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


def rendered(name: str) -> list[dict[str, Any]]:
    """The objects helm renders for a value set (once per session)."""
    files, values = VALUE_SETS[name]
    return helm.template(values_files=[CHART / f for f in files], values=values)


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


# ---- helm lint --------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [(), ("ci/all-values.yaml",), ("ci/namespaced-values.yaml",)])
def test_helm_lint_strict(files: tuple[str, ...]) -> None:
    out = helm.run("lint", "--strict", str(CHART), values_files=[CHART / f for f in files])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


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
    objects = helm.template(values={"replicaCount": 3}, namespace="ops")
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


# (values, the line helm's schema check prints)
BAD_VALUES = {
    "misspelt key": (
        {"tenancy": {"requireServiceAcount": True}},
        "at '/tenancy': additional properties 'requireServiceAcount' not allowed",
    ),
    "log format": ({"logFormat": "xml"}, "at '/logFormat': value must be one of 'json', 'text'"),
    "namespace name": ({"watchNamespaces": ["Shop_Team"]}, "at '/watchNamespaces/0': 'Shop_Team' does not match"),
    "require-service-account without ServiceAccount mode": (
        {"tenancy": {"requireServiceAccount": True}, "identity": {"serviceAccountMode": False}},
        "at '/identity/serviceAccountMode': value must be true",
    ),
    "existing ServiceAccount without a name": (
        {"serviceAccount": {"create": False}},
        "at '/serviceAccount/name': minLength: got 0, want 1",
    ),
    "port": ({"metrics": {"port": 70000}}, "at '/metrics/port': maximum: got 70,000, want 65,535"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_refuses_bad_values(case: str) -> None:
    values, message = BAD_VALUES[case]
    with pytest.raises(helm.HelmError) as failed:
        helm.template(values=values)
    assert failed.value.returncode == 1
    assert "Error: values don't meet the specifications of the schema(s)" in failed.value.output
    assert message in failed.value.output


# ---- NOTES.txt --------------------------------------------------------------------------------


def notes(tmp_path: Path, values_file: str | None = None) -> str:
    """NOTES.txt as helm renders it: helm template never prints it, so a copy of the chart puts it in a
    ConfigMap (the same template, the same context)."""
    chart = tmp_path / "rdsiam"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        text = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" -}}\n' + text + "{{- end }}\n")
        (chart / "templates" / "notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
            'data:\n  notes: {{ include "notes" . | toJson }}\n'
        )
    files = [chart / values_file] if values_file else []
    objects = helm.template(chart, values_files=files)
    return str(next(o for o in objects if o["kind"] == "ConfigMap")["data"]["notes"])


def test_notes_tell_the_next_step(tmp_path: Path) -> None:
    text = notes(tmp_path)
    assert "has no eks.amazonaws.com/role-arn annotation" in text  # the likely first problem
    assert "kubectl apply -f examples/basic/rdsiamcredential.yaml" in text
    assert "kubectl describe rdsiam" in text and "GRANT rds_iam" in text
    configured = notes(tmp_path, "ci/all-values.yaml")
    assert "role-arn annotation" not in configured
    assert "Lease rdsiam-system/rdsiam-leader" in configured
    assert "http://rdsiam-metrics.rdsiam-system.svc:9102/metrics" in configured
    assert "watching the whole cluster." in text and "use one of" not in text
    namespaced = notes(tmp_path, "ci/namespaced-values.yaml")
    assert "watching namespaces shop, billing." in namespaced
    assert "(it lives in namespace shop; use one of shop, billing)" in namespaced
