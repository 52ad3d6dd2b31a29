"""Operator-core scenarios against kube-apiserver + etcd + kube-controller-manager (see tests/scenarios).

The same test functions as tests/integration/test_operator_core.py; here the API server validates the
CRD's schema and CEL rules itself, and kube-controller-manager's garbage collector deletes owned Secrets.
"""

from tests.scenarios.operator_core import *  # noqa: F401,F403
