"""Run the rdsiam operator for tests and the demo: a real ``rdsiam run`` process.

A subprocess (not a thread) so that its AWS environment is its own, it can be SIGKILLed and
restarted, and its whole log (at DEBUG) can be searched for secrets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """``rdsiam run`` against a kubeconfig, with the given AWS environment."""

    def __init__(
        self, kubeconfig: str, env: Mapping[str, str] | None = None, args: Sequence[str] = (),
        log_dir: str | None = None, metrics: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.env = dict(env or {})
        self.args = list(args)
        self.health_port = free_port()
        self.metrics_port = free_port() if metrics else None
        self._dir = Path(log_dir or tempfile.mkdtemp(prefix="rdsiam-operator-"))
        self._dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._dir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
        env.update(self.env)
        env["KUBECONFIG"] = self.kubeconfig
        env.setdefault("POD_NAME", f"rdsiam-test-{os.getpid()}-{id(self):x}-{self.starts}")
        cmd = [sys.executable, "-m", "rdsiam.cli", "run", "--log-level", "debug",
               "--liveness", f"http://127.0.0.1:{self.health_port}/healthz", *self.args]
        if self.metrics_port:
            cmd += ["--metrics-port", str(self.metrics_port)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                    if r.status == 200 and b'"ready": true' in r.read().replace(b'"ready":true', b'"ready": true'):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"operator not healthy within {timeout} s; log:\n{self.log_tail()}")

    def metrics(self) -> str:
        assert self.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, like an OOM kill or a node failure: no cleanup runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
