"""Operator-core scenarios against a real cluster (see tests/scenarios and tests/e2e/conftest.py)."""

from tests.scenarios.operator_core import *  # noqa: F401,F403
