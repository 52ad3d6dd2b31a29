# The few targets a newcomer needs. `make demo` and `make test` set everything up first.
PY := .venv/bin/python

.PHONY: setup demo test unit integration e2e realapi-build node-images lint bench crd clean

setup:
	@scripts/setup.sh

demo: setup
	@$(PY) -m rdsiam.testing.demo

test: setup
	@scripts/test.sh

unit: setup
	@$(PY) -m pytest tests/unit -q

integration: setup
	@$(PY) -m pytest tests/integration -q

e2e: setup
	@scripts/e2e.sh

realapi-build:
	@scripts/build-realapi.sh

node-images:
	@scripts/build-node-images.sh

lint: setup
	@.venv/bin/ruff check operator testing tests benchmarks
	@.venv/bin/mypy
	@.venv/bin/lint-imports

bench: setup
	@$(PY) benchmarks/run.py

crd: setup
	@.venv/bin/rdsiam crd > crds/rdsiam.io_rdsiamcredentials.yaml
	@cp crds/rdsiam.io_rdsiamcredentials.yaml charts/rdsiam/files/

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
