#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian machine (idempotent, fast when done):
# PostgreSQL and MariaDB servers (Debian packages), kubectl if missing, and a virtualenv in .venv with
# rdsiam and rdsiam-testing (both editable) and the test dependency group.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
# The server's initdb, not just the directory: postgresql-client creates /usr/lib/postgresql/N/bin too.
pg_initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
if ! command -v initdb >/dev/null 2>&1 && [ -z "$pg_initdb" ]; then missing+=(postgresql); fi
if ! command -v psql >/dev/null 2>&1; then missing+=(postgresql-client); fi
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then missing+=(mariadb-server); fi
if ! command -v kubectl >/dev/null 2>&1; then missing+=(kubernetes-client); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "setup: need root (or sudo) to install: ${missing[*]}; install them, or run as root" >&2
      exit 1
    fi
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
UV=0.13.9  # the installer of the test environment (not a dependency of rdsiam)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.rdsiam-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ testing/pyproject.toml -nt "$stamp" ] \
    || [ constraints.txt -nt "$stamp" ]; then
  echo "setup: installing Python dependencies into .venv (versions pinned by constraints.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -U "pip>=25.1" "uv==$UV"
  # uv installs the same pins in seconds where pip takes a minute; pip stays the fallback (uv does not
  # read pip.conf: a machine that needs one for its index can set RDSIAM_SETUP_PIP=1).
  if [ "${RDSIAM_SETUP_PIP:-}" = 1 ] || ! .venv/bin/uv pip install -q --python .venv/bin/python \
      -c constraints.txt -e . -e ./testing --group test; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e . -e ./testing --group test
  fi
  touch "$stamp"
fi
echo "setup: ready"
