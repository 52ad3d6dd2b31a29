"""Secrets stay secret: the leak guard really catches a token, and failures provoked with real tokens
around (logins refused, a server that echoes the password, a ValidatingAdmissionPolicy that quotes the
refused Secret's real token, a webhook that echoes a Secret in base64, ``rdsiam check`` on broken mounts)
put none into logs, Events, status, metrics, exception text or command output. And the Secret's shape
lets an app's RBAC name exactly it.

The guard itself is ``rdsiam.testing``'s: ``operator_factory`` searches every operator's DEBUG log,
metrics page, and every Event and status in the cluster at teardown; a hook fails any test whose
failure text or captured output shows a token or SigV4 parameters (and redacts the report).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from rdsiam._check import main as check_main
from rdsiam.testing._fixtures_operator import find_leaks, leak_guard, redact
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.kubefaults import KubeFaultProxy
from rdsiam.testing.kubelet import AtomicWriter
from rdsiam.testing.operator import OperatorProcess
from rdsiam.testing.realapi import RealCluster
from tests.fault._audit import (
    CREDENTIAL_LABEL,
    MANAGED_BY,
    Audit,
    call,
    credential,
    decode,
    request_refresh,
    secret,
    unique,
    wait_for,
)
from tests.fault._echo import MODES, EchoServer
from tests.fault._figures import record

# A token-shaped string (not a live token) for what a webhook might echo.
FAKE_TOKEN = ("db.cluster-x.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app"
              "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAFAKE%2F20250101%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20250101T000000Z"
              "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEFAKEFAKEFAKE"
              "&X-Amz-Signature=" + "5f" * 32)


def wait_secret(cluster: RealCluster, ns: str, name: str, timeout: float = 15.0) -> dict[str, str]:
    return decode(wait_for(f"Secret {ns}/{name}", lambda: secret(cluster, ns, name), timeout=timeout))


def condition(cluster: RealCluster, ns: str, name: str, type_: str) -> dict[str, Any] | None:
    obj = cluster.get("rdsiam.io/v1alpha1", "RdsIamCredential", name, ns) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


@contextlib.contextmanager
def echoing_policy(cluster: RealCluster, namespace: str) -> Iterator[str]:
    """A ValidatingAdmissionPolicy (and its binding) refusing Secrets with a ``dsn`` key in ``namespace``,
    its message quoting their ``password`` and ``dsn``; yields its name once the API server enforces it."""
    name = unique("echo")
    api = "/apis/admissionregistration.k8s.io/v1"
    call(cluster, "POST", f"{api}/validatingadmissionpolicies", {"metadata": {"name": name}, "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                                "resources": ["secrets"]}]},
        "validations": [{"expression": "!has(object.data) || !('dsn' in object.data)", "messageExpression": (
            "'pw=' + string(object.data['password']) + ' dsn=' + string(object.data['dsn'])")}]}})
    call(cluster, "POST", f"{api}/validatingadmissionpolicybindings", {"metadata": {"name": name}, "spec": {
        "policyName": name, "validationActions": ["Deny"],
        "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}})
    try:
        probe = {"metadata": {"name": "probe"}, "data": {"password": "cHJvYmU=", "dsn": "cHJvYmU="}}
        wait_for("the policy enforced", lambda: call(
            cluster, "POST", f"/api/v1/namespaces/{namespace}/secrets?dryRun=All", probe, ok=(201, 422)
        ).get("code") == 422)
        yield name
    finally:
        call(cluster, "DELETE", f"{api}/validatingadmissionpolicybindings/{name}")
        call(cluster, "DELETE", f"{api}/validatingadmissionpolicies/{name}")


def test_the_guard_finds_a_token_wherever_it_shows(
    cluster: RealCluster, kubectl: Kubectl, sts: Any, rds: Any, spaces: Callable[[str], str],
    operator_env: dict[str, str], app_user: str, tmp_path: Path,
) -> None:
    ns = spaces("guard")
    op = OperatorProcess(cluster.kubeconfig, operator_env, ["--namespace", ns], log_dir=str(tmp_path / "op")).start()
    try:
        cluster.apply_manifest(credential(rds, "db", ns))
        data = wait_secret(cluster, ns, "db")
        wait_for("Ready", lambda: condition(cluster, ns, "db", "Ready"))
    finally:
        op.stop()
    token = data["password"]
    assert leak_guard([op], kubectl) == [], "a clean run must pass"
    found = {}
    # A Warning Event quoting the DSN (the token percent-encoded).
    event = call(cluster, "POST", f"/api/v1/namespaces/{ns}/events", {
        "metadata": {"generateName": "leak."}, "type": "Warning", "reason": "Leak", "message": f"dsn {data['dsn']}",
        "involvedObject": {"kind": "RdsIamCredential", "name": "db", "namespace": ns}})
    found["Event with the DSN"] = leak_guard([op], kubectl)
    call(cluster, "DELETE", f"/api/v1/namespaces/{ns}/events/{event['metadata']['name']}")
    # A status condition quoting only the signature.
    path = f"/apis/rdsiam.io/v1alpha1/namespaces/{ns}/rdsiamcredentials/db/status"
    signature = token.rsplit("X-Amz-Signature=", 1)[1]
    before = call(cluster, "GET", path)["status"]
    call(cluster, "PATCH", path, {"status": {"conditions": [{**before["conditions"][0],
                                                            "message": f"sig {signature}"}]}})
    found["status with the signature"] = leak_guard([op], kubectl)
    call(cluster, "PATCH", path, {"status": before})
    # The operator's log holding the session token alone, or the Secret's data (base64).
    session = dict(p.split("=", 1) for p in token.split("?", 1)[1].split("&"))["X-Amz-Security-Token"]
    original = op.log_path.read_text()
    for what, line in (("log with the session token", session),
                       ("log with the Secret's data", base64.b64encode(token.encode()).decode())):
        op.log_path.write_text(original + f"\nDEBUG {line}\n")
        found[what] = leak_guard([op], kubectl)
    op.log_path.write_text(original)
    assert leak_guard([op], kubectl) == []
    missed = [what for what, leaks in found.items() if not leaks]
    assert not missed, f"the guard missed: {missed}"
    assert found["Event with the DSN"] == ["events: SigV4 query parameters", "events: a token"]
    assert found["status with the signature"] == ["status: a token"]
    record("leak guard self-test", f"{len(found)} planted leaks found: " + "; ".join(
        f"{what} -> {leaks}" for what, leaks in found.items()))


def test_the_report_hook_fails_and_redacts_a_test_that_shows_a_token(tmp_path: Path) -> None:
    (tmp_path / "test_shows.py").write_text(textwrap.dedent(f"""
        import base64
        TOKEN = {FAKE_TOKEN!r}

        def test_prints_it():
            print("token:", TOKEN)

        def test_asserts_on_it():
            assert {{"password": TOKEN}} == {{"password": "other"}}

        def test_prints_a_secret_object():
            print({{"data": {{"password": base64.b64encode(TOKEN.encode()).decode()}}}})

        def test_clean():
            print("nothing secret here")
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "test_shows.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-2000:]
    assert "3 failed, 1 passed" in out, out[-2000:]
    assert out.count("rdsiam leak guard") >= 3
    assert FAKE_TOKEN not in out and "5f" * 32 not in out and "IQoJb3JpZ2luX2VjEFAKE" not in out
    assert find_leaks({"output": out}, [FAKE_TOKEN]) == []


def mount(directory: Path, data: dict[str, str], **override: str) -> Path:
    AtomicWriter(directory).write({k: v.encode() for k, v in {**data, **override}.items()})
    return directory


def check(directory: Path, *args: str, process: bool = False) -> tuple[str, list[str]]:
    """``rdsiam check`` in-process (to see any exception it raises), and as a user runs it (a process).
    Returns its text (to search for leaks) and its crashes: the type of an exception raised in-process,
    a traceback in the process's output. A crash is a bug; only its type is named here, as its message
    could quote the token."""
    text, crashes = "", []
    if process:
        run = subprocess.run([sys.executable, "-m", "rdsiam.cli", "check", str(directory), *args],
                             capture_output=True, text=True, timeout=60)
        text = run.stdout + run.stderr
        if "Traceback (most recent call last)" in text:
            crashes.append("the process printed a traceback")
    out = io.StringIO()
    try:
        check_main([str(directory), *args], out=out)
    except Exception as exc:  # its text is searched for leaks too
        out.write(f"\nraised {type(exc).__name__}: {exc}")
        crashes.append(f"raised {type(exc).__name__}")
    return text + out.getvalue(), crashes


@pytest.mark.slow
def test_failures_with_real_tokens_around_leak_nothing(
    cluster: RealCluster, kube_faults: KubeFaultProxy, kubectl: Kubectl, sts: Any, rds: Any, postgres: Any,
    spaces: Callable[[str], str], operator_factory: Any, app_user: str, tmp_path: Path,
) -> None:
    ns, policed, hooked = spaces("leaks"), spaces("policy"), spaces("webhook")
    postgres.create_user("not_iam", rds_iam=False)
    echoes = {mode: EchoServer(mode) for mode in MODES}
    with contextlib.ExitStack() as stack:
        for server in echoes.values():
            stack.enter_context(server)
        # A ValidatingAdmissionPolicy that refuses the operator's Secret and quotes it: the real token, raw
        # and in the DSN (percent-encoded).
        policy = stack.enter_context(echoing_policy(cluster, policed))
        op = operator_factory(args=["--namespace", ns, "--namespace", policed, "--namespace", hooked])
        # A webhook quoting it in base64 too (what no policy's CEL can write): the fault proxy answers for it.
        echo_body = f"dsn={quote(FAKE_TOKEN, safe='')} password={base64.b64encode(FAKE_TOKEN.encode()).decode()}"
        webhook = kube_faults.inject(rf"/namespaces/{hooked}/secrets", method="POST", status=400, times=None,
                                     reason="BadRequest", message='admission webhook "policy.example.com" denied '
                                     f"the request: {echo_body}")
        resources = [credential(rds, "not-iam", ns, user="not_iam", verify=True),
                     credential(rds, "no-db", ns, verify=True, database="no_such_db"),
                     credential(rds, "policy", policed), credential(rds, "webhook", hooked)]
        for mode, server in echoes.items():
            name = "echo-" + mode.replace(" ", "-")
            resources.append({**credential(rds, name, ns), "spec": {
                "dsn": f"postgresql://app_user:x@{rds.endpoint}:{server.port}/postgres?sslmode=require"
                       "&hostaddr=127.0.0.1", "verify": True}})
        cluster.apply_manifest(resources)
        names = [r["metadata"]["name"] for r in resources if r["metadata"]["namespace"] == ns]
        connected = {n: wait_for(f"{n} Connected", lambda n=n: (c := condition(cluster, ns, n, "Connected"))
                                 and c["status"] == "False" and c, timeout=20) for n in names}
        refused = wait_for("the webhook's refusal", lambda: (c := condition(cluster, hooked, "webhook", "Ready"))
                           and c["reason"] == "KubernetesError" and c)
        denied = wait_for("the policy's refusal", lambda: (c := condition(cluster, policed, "policy", "Ready"))
                          and c["reason"] == "KubernetesError" and c)
        assert f"ValidatingAdmissionPolicy '{policy}'" in denied["message"], "not refused by the policy"
        # It quoted the Secret (its message is not the fallback), and what it quoted was cut out.
        assert "pw=" in denied["message"] and "<redacted>" in denied["message"], "the policy quoted nothing"
        assert secret(cluster, policed, "policy") is None and secret(cluster, hooked, "webhook") is None
        assert webhook.hits >= 1 and all(s.received >= 1 for s in echoes.values())
        tokens = [wait_secret(cluster, ns, n)["password"] for n in names]

        # Everything a user or an admin can read, searched now (the fixture searches again at teardown).
        texts = {f"describe {n}": kubectl.describe("rdsiamcredential", n, ns) for n in names}
        texts["describe webhook"] = kubectl.describe("rdsiamcredential", "webhook", hooked)
        texts["describe policy"] = kubectl.describe("rdsiamcredential", "policy", policed)
        texts["events"] = json.dumps(kubectl.list("events"))  # parsed: kubectl's JSON escapes "<" in "<redacted>"
        texts["operator log"] = op.log()
        texts["metrics"] = op.metrics()

        # rdsiam check on mounts of those Secrets, and on broken ones holding the token in odd places.
        checks = 0
        crashes: dict[str, list[str]] = {}
        for n in names:
            data = wait_secret(cluster, ns, n)
            what = f"check --connect {n}"
            texts[what], crashes[what] = check(mount(tmp_path / n, data), "--connect", "--timeout", "3",
                                               process=n.startswith("echo"))
            checks += 1
        data = wait_secret(cluster, ns, "not-iam")
        token = data["password"]
        broken = {"token as port": {"port": token}, "token as expires-at": {"expires-at": token},
                  "token as host": {"host": token}, "token as username": {"username": token},
                  "dsn with a bad port": {"dsn": f"postgresql://not_iam:{quote(token, safe='')}@h:notaport/d"},
                  "dsn that is not a URL": {"dsn": f"host=h password={token} port=x"},
                  "dsn of another generation": {"dsn": data["dsn"].replace("Signature%3D", "Signature%3D0")},
                  "refused connection": {"port": "1"}}
        for what, override in broken.items():
            texts[f"check {what}"], crashes[f"check {what}"] = check(
                mount(tmp_path / what.replace(" ", "-"), data, **override), "--connect", "--timeout", "3")
            checks += 1
        leaks = find_leaks(texts, [*tokens, FAKE_TOKEN])
    reasons = sorted({c["reason"] for c in connected.values()})
    record("secrets stay secret", (
        f"{len(names)} refused verify logins (reasons {reasons}; 3 from a server echoing the token whole, "
        f"percent-encoded and cut short), a ValidatingAdmissionPolicy echoing the real token ({denied['reason']}), "
        f"a webhook echoing a token-shaped Secret in base64 ({refused['reason']}), {checks} "
        f"`rdsiam check --connect` runs on real and broken mounts: {len(texts)} texts searched, {len(leaks)} leaks"))
    assert not leaks, f"leaked into: {leaks}; e.g. {redact(texts[leaks[0].split(':')[0]])[:600]}"
    crashed = {what: c for what, c in crashes.items() if c}
    assert not crashed, f"rdsiam check crashed: {crashed}"


def test_the_secret_lets_an_app_scope_rbac_to_exactly_it(
    cluster: RealCluster, kubectl: Kubectl, sts: Any, rds: Any, spaces: Callable[[str], str], operator_factory: Any,
    app_user: str,
) -> None:
    ns = spaces("rbac")
    operator_factory(args=["--namespace", ns])
    with Audit(cluster, sts.lookup, [ns]) as audit:
        cluster.apply_manifest([
            credential(rds, "orders-db", ns, target={"name": "orders-db-credentials", "labels": {"team": "orders"},
                                                    "annotations": {"owner": "orders@example.com"}}),
            credential(rds, "billing-db", ns)])
        first = wait_secret(cluster, ns, "orders-db-credentials")
        wait_secret(cluster, ns, "billing-db")
        time.sleep(1.1)
        request_refresh(cluster, ns, ["orders-db"], audit)
        wait_for("a rotation", lambda: wait_secret(cluster, ns, "orders-db-credentials")["password"]
                 != first["password"])
    obj = secret(cluster, ns, "orders-db-credentials")
    assert obj is not None
    meta = obj["metadata"]
    # One stable name across rotations (written in place): a Role with resourceNames: [that name] and
    # verbs get/watch is all a reading app needs, and the Secret kind is the plain one RBAC treats like any other.
    written = {c.key for c in audit.snapshot() if c.kind == "Secret"}
    assert written == {(ns, "orders-db-credentials"), (ns, "billing-db")}
    assert obj["type"] == "Opaque"
    assert meta["labels"] == {"team": "orders", MANAGED_BY: "rdsiam", CREDENTIAL_LABEL: "orders-db"}
    selected = kubectl.list("secrets", ns, f"{CREDENTIAL_LABEL}=orders-db")
    assert [s["metadata"]["name"] for s in selected] == ["orders-db-credentials"]
    assert {s["metadata"]["name"] for s in kubectl.list("secrets", ns, f"{MANAGED_BY}=rdsiam")} == \
        {"orders-db-credentials", "billing-db"}
    owner = meta["ownerReferences"]
    assert [(o["kind"], o["name"], o["controller"]) for o in owner] == [("RdsIamCredential", "orders-db", True)]
    # Labels and annotations say who and when, never what: no token, no signature, no key in them.
    assert set(meta["annotations"]) == {"owner", "rdsiam.io/spec-hash", "rdsiam.io/issued-at", "rdsiam.io/expires-at",
                                        "rdsiam.io/identity", "rdsiam.io/refresh-served"}
    assert meta["annotations"]["rdsiam.io/identity"].startswith("arn:aws:sts::")
    data = decode(obj)
    in_metadata = find_leaks({"metadata": json.dumps(meta)}, [data["password"]])  # out of the assertion:
    assert in_metadata == []  # a failing assertion shows a call's arguments, here the token
    keys = sorted(data)
    assert keys == ["dbname", "dsn", "expires-at", "host", "password", "pgpass", "port", "username"]
