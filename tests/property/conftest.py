"""The fault tier's fixtures (fresh namespaces deleted at teardown, the IAM database user)."""

from tests.fault.conftest import app_user, spaces  # noqa: F401
