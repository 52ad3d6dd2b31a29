"""Drive a cluster the way a user does: the real ``kubectl`` binary against a kubeconfig.

Works unchanged against the emulator, a kube-apiserver built from Go modules, or a real cluster,
so the operator scenarios run on all three tiers.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class KubectlError(RuntimeError):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed ({returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Kubectl:
    def __init__(self, kubeconfig: str, binary: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.binary = binary or shutil.which("kubectl") or "kubectl"

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        proc = subprocess.run([self.binary, *args], env=env, input=input, capture_output=True, text=True,
                              timeout=60, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc.returncode, proc.stderr)
        return proc.stdout if check else proc.stdout + proc.stderr

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]] | str, *extra: str) -> str:
        text = obj if isinstance(obj, str) else yaml.safe_dump_all(obj if isinstance(obj, list) else [obj])
        return self.run("apply", "-f", "-", *extra, input=text)

    def apply_file(self, path: str, *extra: str) -> str:
        return self.run("apply", "-f", path, *extra)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        try:
            return dict(json.loads(self.run(*args)))
        except KubectlError as exc:
            if "NotFound" in exc.stderr or "not found" in exc.stderr:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-n", namespace] if namespace else ["-A"])
        if selector:
            args += ["-l", selector]
        return list(json.loads(self.run(*args)).get("items", []))

    def secret_data(self, name: str, namespace: str) -> dict[str, str] | None:
        secret = self.get("secret", name, namespace)
        if secret is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def condition(self, name: str, namespace: str, type_: str = "Ready") -> dict[str, Any] | None:
        obj = self.get("rdsiamcredential", name, namespace)
        for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return None

    def describe(self, kind: str, name: str, namespace: str) -> str:
        return self.run("describe", kind, name, "-n", namespace)

    def delete(self, kind: str, name: str, namespace: str | None = None, *extra: str) -> str:
        return self.run("delete", kind, name, *(["-n", namespace] if namespace else []), *extra)

    def create_namespace(self, name: str) -> None:
        self.run("create", "namespace", name)

    def apply_crds(self, directory: str) -> None:
        self.run("apply", "-f", directory)

    @staticmethod
    def wait(what: str, fn: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.1) -> T:
        deadline = time.monotonic() + timeout
        last: T | None = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def write_kubeconfig(server: str, token: str | None = None, ca_file: str | None = None) -> str:
    """A kubeconfig file for a server (used by tiers that start their own API server)."""
    cluster: dict[str, Any] = {"server": server}
    if ca_file:
        cluster["certificate-authority"] = ca_file
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
    }
    fd, path = tempfile.mkstemp(prefix="kubeconfig-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg, f)
    return path
