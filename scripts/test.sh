#!/usr/bin/env bash
# The whole test suite: lint, unit, integration (local stack), the real-API tier (kube-apiserver built
# from Go modules when Go is available; skipped with the reason otherwise), then the real-node tier
# (scripts/e2e.sh: a one-node cluster built here, the operator as a pod; skipped without root or Go).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "${RDSIAM_SKIP_REALAPI_BUILD:-}" = "1" ]; then
  echo "test: RDSIAM_SKIP_REALAPI_BUILD=1: the real-API tier uses what is built already, or skips"
elif ! command -v go >/dev/null 2>&1; then
  echo "test: go not found: the real-API tier (kube-apiserver built from Go modules) will skip"
else
  # Bounded: a stalled Go module proxy must not hold CI (a cold build takes ~10 minutes here).
  timeout 1500 scripts/build-realapi.sh || echo "test: real-API build failed or timed out; that tier will skip (see above)"
fi
.venv/bin/ruff check operator testing tests benchmarks
.venv/bin/lint-imports
.venv/bin/mypy
.venv/bin/python -m pytest tests --ignore=tests/e2e "$@"
scripts/e2e.sh
