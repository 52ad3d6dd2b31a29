"""The operator pod as the chart runs it on the node, and what `kubectl describe` says when AWS refuses."""

from __future__ import annotations

import uuid
from typing import Any

from rdsiam.testing.faults import FaultProxy
from rdsiam.testing.kubectl import Kubectl, KubectlError
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.sts import StsServer

from .conftest import Release, on_node

pytestmark = on_node


def test_the_operator_pod_runs_as_the_chart_says(release: Release, kubectl: Kubectl) -> None:
    (pod,) = release.pods()
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "localhost/rdsiam-e2e/rdsiam:dev"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["serviceAccountName"] == "rdsiam"
    name = pod["metadata"]["name"]

    def run(*command: str) -> str:
        return kubectl.run("exec", "-n", release.namespace, name, "--", *command)

    # What the kubelet really started: the image's non-root user, a read-only root, the in-cluster config
    # (no kubeconfig: the kubelet-rotated ServiceAccount token) and the projected web identity token.
    assert run("python", "-c", "import os; print(os.getuid(), os.getgid())").split() == ["65532", "65532"]
    try:
        run("python", "-c", "open('/probe', 'w')")
        raise AssertionError("the root filesystem is writable")
    except KubectlError as err:
        assert "Read-only file system" in err.stderr
    env = run("python", "-c", "import os; print(sorted(k for k in os.environ if k.startswith(('KUBE', 'AWS_'))))")
    assert "KUBECONFIG" not in env and "KUBERNETES_SERVICE_HOST" in env and "AWS_WEB_IDENTITY_TOKEN_FILE" in env
    audience = run("python", "-c", "import base64, json; t = open('/var/run/secrets/eks.amazonaws.com/"
                   "serviceaccount/token').read().split('.')[1]; print(json.loads(base64.urlsafe_b64decode("
                   "t + '==='))['aud'])")
    assert audience.strip() == "['sts.amazonaws.com']"


def test_describe_explains_access_denied(
    release: Release, kubectl: Kubectl, sts: StsServer, sts_faults: FaultProxy, rds: IamPostgres, postgres: Any
) -> None:
    ns = f"denied-{uuid.uuid4().hex[:6]}"
    kubectl.create_namespace(ns)
    role = sts.create_role(f"locked-{ns}")
    sts_faults.deny(role)
    kubectl.apply({
        "apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential", "metadata": {"name": "denied", "namespace": ns},
        "spec": {"dsn": f"postgresql://app_user@{rds.endpoint}:{rds.port}/orders?sslmode=verify-full",
                 "assumeRoleArn": role},
    })  # fmt: skip
    cond = kubectl.wait("AccessDenied", lambda: (c := kubectl.condition("denied", ns)) and
                        c["reason"] == "AccessDenied" and c, timeout=60, interval=0.5)
    assert cond["status"] == "False" and role in cond["message"] and "trust policy" in cond["message"]
    text = kubectl.describe("rdsiamcredential", "denied", ns)
    events = text.split("Events:")[-1]
    assert "AccessDenied" in text and "Warning" in events and "AccessDenied" in events
    assert kubectl.get("secret", "denied", ns) is None
    sts_faults.clear()  # the trust policy is fixed: the operator's next retry succeeds
    ready = kubectl.wait("Ready", lambda: (c := kubectl.condition("denied", ns)) and c["status"] == "True" and c,
                         timeout=60, interval=0.5)
    assert ready["reason"] == "TokenIssued"
