"""The real kubectl binary works against the emulator with the kubeconfig it writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rdsiam.testing.kube import KubeEmulator
from rdsiam.testing.kube.example import EXAMPLE_CRD, GROUP, PLURAL, VERSION

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

CRED = f"""
apiVersion: {GROUP}/{VERSION}
kind: DbCredential
metadata:
  name: orders
spec:
  host: orders.cluster-abc.us-east-1.rds.amazonaws.com
  port: 5432
"""


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


def kubectl(emu: KubeEmulator, *args: str, stdin: str | None = None, check: bool = True) -> str:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": emu.kubeconfig}
    proc = subprocess.run([KUBECTL, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


@pytest.fixture(scope="module")
def crd_applied(emu: KubeEmulator, tmp_path_factory: pytest.TempPathFactory) -> None:
    crds = tmp_path_factory.mktemp("crds")
    (crds / "dbcredentials.yaml").write_text(yaml.safe_dump(EXAMPLE_CRD))
    out = kubectl(emu, "apply", "-f", f"{crds}/")
    assert out.strip() == f"customresourcedefinition.apiextensions.k8s.io/{PLURAL}.{GROUP} created"


def test_kubeconfig_points_at_the_emulator_with_a_token(emu: KubeEmulator) -> None:
    config = yaml.safe_load(Path(emu.kubeconfig).read_text())
    assert config["clusters"][0]["cluster"]["server"] == emu.url
    assert config["users"][0]["user"]["token"] == emu.token
    assert config["contexts"][0]["context"]["namespace"] == "default"
    assert Path(emu.kubeconfig).stat().st_mode & 0o077 == 0


def test_apply_get_describe_patch_delete_custom_resources(emu: KubeEmulator, crd_applied: None) -> None:
    assert kubectl(emu, "apply", "-f", "-", stdin=CRED).strip() == f"dbcredential.{GROUP}/orders created"
    assert kubectl(emu, "apply", "-f", "-", stdin=CRED).strip() == f"dbcredential.{GROUP}/orders unchanged"

    table = kubectl(emu, "get", "dbc").splitlines()
    assert table[0].split() == ["NAME", "READY", "REASON", "SECRET", "AGE"]
    assert table[1].split()[0] == "orders"
    assert kubectl(emu, "get", "dbc", "-o", "wide").splitlines()[0].split()[4] == "PORT"
    assert kubectl(emu, "get", "dbcredentials", "orders", "-o", "jsonpath={.spec.engine}") == "postgres"

    status = {
        "status": {
            "secretName": "orders-db",
            "conditions": [{"type": "Ready", "status": "False", "reason": "AssumeRoleFailed", "message": "denied"}],
        }
    }
    kubectl(emu, "patch", "dbc", "orders", "--subresource=status", "--type=merge", "-p", json.dumps(status))
    row = kubectl(emu, "get", "dbc", "orders", "--no-headers").split()
    assert row[:4] == ["orders", "False", "AssumeRoleFailed", "orders-db"]

    uid = json.loads(kubectl(emu, "get", "dbc", "orders", "-o", "json"))["metadata"]["uid"]
    emu.client().create(
        "/api/v1/namespaces/default/events",
        {
            "metadata": {"generateName": "orders."},
            "type": "Warning",
            "reason": "AssumeRoleFailed",
            "message": "AccessDenied: check the role's trust policy",
            "source": {"component": "rdsiam"},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DbCredential",
                "name": "orders",
                "namespace": "default",
                "uid": uid,
            },
        },
    )
    described = kubectl(emu, "describe", "dbc", "orders")
    assert "Name:         orders" in described
    events = described.split("Events:", 1)[1]
    assert "Warning" in events and "AssumeRoleFailed" in events and "check the role's trust policy" in events

    assert kubectl(emu, "delete", "dbc", "orders").strip() == f'dbcredential.{GROUP} "orders" deleted'
    assert "NotFound" in kubectl(emu, "get", "dbc", "orders", check=False)


def test_invalid_custom_resources_are_explained(emu: KubeEmulator, crd_applied: None) -> None:
    bad = CRED.replace("port: 5432", "port: 70000")
    message = kubectl(emu, "apply", "-f", "-", stdin=bad, check=False)
    assert 'The DbCredential "orders" is invalid' in message
    assert "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535" in message
    unknown = CRED.replace("port: 5432", "port: 5432\n  bogus: 1")
    kubectl(emu, "apply", "-f", "-", stdin=unknown)  # fieldValidation is ignored: unknown fields are pruned
    assert "bogus" not in json.loads(kubectl(emu, "get", "dbc", "orders", "-o", "json"))["spec"]
    kubectl(emu, "delete", "dbc", "orders")


def test_built_in_objects_with_label_selectors_and_output_formats(emu: KubeEmulator) -> None:
    kubectl(emu, "create", "secret", "generic", "creds", "--from-literal=password=hunter2")  # protobuf body
    kubectl(emu, "label", "secret", "creds", "app.kubernetes.io/managed-by=rdsiam")
    rows = kubectl(emu, "get", "secrets", "-l", "app.kubernetes.io/managed-by=rdsiam").splitlines()
    assert rows[0].split() == ["NAME", "AGE"] and rows[1].split()[0] == "creds"
    assert kubectl(emu, "get", "secrets", "-l", "app=nope", "-o", "name") == ""
    doc = yaml.safe_load(kubectl(emu, "get", "secret", "creds", "-o", "yaml"))
    assert doc["data"] == {"password": "aHVudGVyMg=="}
    assert kubectl(emu, "get", "ns", "default", "-o", "jsonpath={.status.phase}") == "Active"
    kubectl(emu, "create", "namespace", "team-a")  # protobuf body
    assert emu.get("v1", "Namespace", "team-a") is not None
    kubectl(emu, "delete", "secret", "creds")
