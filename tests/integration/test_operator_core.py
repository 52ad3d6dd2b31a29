"""Operator-core scenarios against the Kubernetes API emulator (see tests/scenarios)."""

from tests.scenarios.operator_core import *  # noqa: F401,F403
