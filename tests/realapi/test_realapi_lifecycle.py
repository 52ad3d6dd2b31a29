"""RealCluster's own contract: availability check, clean stop, nothing left after a killed run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rdsiam.testing.realapi import BUILD_HINT, RealCluster

from ._helpers import wait_for


def _alive(pid: int) -> bool:
    """True while any thread of the process runs (a zombie leader may still have live threads)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except FileNotFoundError:
            continue
    return False


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("https://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _require_binaries() -> None:
    ok, reason = RealCluster.available()
    if not ok:
        pytest.skip(reason)


def test_available_names_the_missing_binaries_and_how_to_build_them(tmp_path: Path) -> None:
    ok, reason = RealCluster.available(tmp_path)
    assert not ok
    assert reason == f"etcd, kube-apiserver, kube-controller-manager not found in {tmp_path}: {BUILD_HINT}"
    assert "scripts/build-realapi.sh (needs Go and the Go module proxy)" in reason


@pytest.mark.slow
def test_stop_ends_every_process_and_removes_the_directory() -> None:
    _require_binaries()
    with RealCluster() as cluster:
        pids = [p.pid for p in cluster._procs.values()]
        directory = cluster.directory
        assert directory is not None and directory.is_dir()
        assert len(pids) == 3 and all(_alive(pid) for pid in pids)
        url = cluster.url
    assert not any(_alive(pid) for pid in pids)
    assert not directory.exists()
    assert not _port_open(url)


_CHILD = """
import json, sys, time
from rdsiam.testing.realapi import RealCluster
cluster = RealCluster().start()
print(json.dumps({"pids": [p.pid for p in cluster._procs.values()], "dir": str(cluster.directory),
                  "url": cluster.url}), flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_a_killed_test_process_leaves_no_process_or_directory_behind() -> None:
    _require_binaries()
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        state = json.loads(child.stdout.readline())
        assert all(_alive(pid) for pid in state["pids"])
        os.kill(child.pid, signal.SIGKILL)  # no teardown runs: the watchdog must clean up
        child.wait()
        wait_for(lambda: not any(_alive(pid) for pid in state["pids"]), 15, "the control plane to be ended")
        wait_for(lambda: not Path(state["dir"]).exists(), 10, "the temporary directory to be removed")
        wait_for(lambda: not _port_open(state["url"]), 10, "the API server port to close")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        time.sleep(0)
