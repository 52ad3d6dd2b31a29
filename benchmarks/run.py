"""``make bench``: every benchmark, one after the other, printing figures and ratios.

    .venv/bin/python benchmarks/run.py [--quick]

--quick: N = 1,000 only, three refresh-burst rounds and no rotation phase, four paired rounds and no
instruction count (about three minutes); default: N = 1,000 and 5,000, seven rounds and a 150-second
rotation phase at refreshInterval=1m, eight paired rounds, and instructions counted under valgrind when it
is installed (about seventeen minutes).
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
    for cmd in runs:
        print(f"\n### {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd)}", flush=True)
        code = subprocess.call([sys.executable, *cmd])
        if code:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
