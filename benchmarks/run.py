"""``make bench``: every benchmark, one after the other, printing figures and ratios.

    .venv/bin/python benchmarks/run.py [--quick]

--quick: the emulator's scale run at N = 1,000 only, and the real-API run at N = 200 with a one-minute
interval phase; default: the emulator's at N = 1,000 and 5,000 with a 150-second rotation phase, and the
real-API run at N = 1,000 and 5,000 with 2,000 resources at refreshInterval=1m for 10 minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = [[str(HERE / "bench_library.py")]]
    if args.quick:
        runs.append([str(HERE / "bench_scale.py"), "--n", "1000", "--idle-seconds", "10"])
    else:
        runs.append([str(HERE / "bench_scale.py"), "--n", "1000", "--n", "5000", "--rotate-seconds", "150",
                     "--rounds", "7"])
    runs.append([str(HERE / "bench_identity.py")])
    runs.append([str(HERE / "bench_mysql_probe.py")])
    # Against the real kube-apiserver (skips itself with the reason when the binaries are not built).
    runs.append([str(HERE / "bench_realapi.py"), *(["--n", "200", "--interval-n", "200", "--interval-minutes", "1"]
                                                   if args.quick else ["--n", "1000", "--n", "5000"])])
    for cmd in runs:
        print(f"\n### {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd)}", flush=True)
        code = subprocess.call([sys.executable, *cmd])
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
