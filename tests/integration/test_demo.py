"""`make demo`, the README's first command, runs end to end: exit 0, every step done, no token in its
output, nothing left behind."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile


def test_the_demo_runs_end_to_end_and_prints_no_token() -> None:
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "rdsiam-demo-*")))
    done = subprocess.run([sys.executable, "-m", "rdsiam.testing.demo"], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "RDSIAM_DEMO_KEEP"})
    out = done.stdout + done.stderr
    tail = out[-3000:].replace("X-Amz-", "X-Amz<cut>")  # shown on failure; a token's marks cut
    assert done.returncode == 0, tail
    for step in ("Waiting for the Secret", "Logging in", "connected as app_user", "new connection with the new "
                 "token: True", "InvalidSpec", "Demo finished"):
        assert step in out, (step, tail)
    leaked = "X-Amz-Signature" in out or "X-Amz-Security-Token" in out or "Action=connect" in out
    assert not leaked, "the demo printed a token"
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "rdsiam-demo-*"))) == before  # removed after
