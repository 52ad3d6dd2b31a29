"""Operator-core scenarios (tests/scenarios) on the real node, the operator running as the chart's pod;
or against RDSIAM_E2E_KUBECONFIG's cluster with the operator on this machine (see conftest.py)."""

from tests.scenarios.operator_core import *  # noqa: F401,F403
