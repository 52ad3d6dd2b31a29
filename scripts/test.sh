#!/usr/bin/env bash
# The whole test suite: lint, unit, integration (local stack), the real-API tier (kube-apiserver built
# from Go modules when Go is available; skipped with the reason otherwise), e2e (skips without a cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if command -v go >/dev/null 2>&1 && [ "${RDSIAM_SKIP_REALAPI_BUILD:-}" != "1" ]; then
  scripts/build-realapi.sh || echo "test: real-API build failed; that tier will skip (see the log above)"
fi
.venv/bin/ruff check operator tests benchmarks
.venv/bin/lint-imports
.venv/bin/mypy
.venv/bin/python -m pytest tests "$@"
