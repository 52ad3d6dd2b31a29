"""All fixtures of the local stack, gathered for the pytest plugin."""

from __future__ import annotations

from rdsiam.testing._fixtures_aws import *  # noqa: F401,F403
from rdsiam.testing._fixtures_kube import *  # noqa: F401,F403
from rdsiam.testing._fixtures_operator import *  # noqa: F401,F403
from rdsiam.testing._fixtures_realapi import *  # noqa: F401,F403
