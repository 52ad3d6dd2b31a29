"""The property tier: pure properties, and a bounded sample end to end on the real kube-apiserver
(``real_cluster``, shared with tests/realapi and tests/fault; skipped with the reason where it is not
built), with the fault tier's fixtures: its ``cluster`` and ``kubectl`` (the real API server), fresh
namespaces deleted at teardown, the IAM database user."""

from tests.fault.conftest import app_user, cluster, kubectl, spaces  # noqa: F401
