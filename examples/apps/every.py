"""Run one of these example scripts again and again: `python every.py SECONDS SCRIPT.py`.

Each run opens new connections the way the script does, so a pod running this shows that every new
connection picks up the current token across rotations. One line per run: `login ok: ...` or
`login failed: ...` (driver messages never contain the token). The imports stay loaded between runs.
"""

import contextlib
import io
import runpy
import sys
import time
from datetime import UTC, datetime

seconds, script = float(sys.argv[1]), sys.argv[2]
while True:
    began = time.monotonic()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        result = "login ok: " + " ".join(out.getvalue().split())
    except Exception as exc:  # report and go on: the next run may succeed
        result = f"login failed: {type(exc).__name__}: {exc}".replace("\n", " ")
    print(f"{datetime.now(UTC):%H:%M:%S} {result}", flush=True)
    time.sleep(max(0.0, seconds - (time.monotonic() - began)))
