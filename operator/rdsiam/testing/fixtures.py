"""All fixtures of the local stack, gathered for the pytest plugin."""

from __future__ import annotations

import importlib.util

# TEMPORARY during parallel development: skip areas whose module does not exist yet.
if importlib.util.find_spec("rdsiam.testing._fixtures_aws"):
    from rdsiam.testing._fixtures_aws import *  # noqa: F401,F403
if importlib.util.find_spec("rdsiam.testing._fixtures_kube"):
    from rdsiam.testing._fixtures_kube import *  # noqa: F401,F403
from rdsiam.testing._fixtures_operator import *  # noqa: F401,F403,E402
