"""pytest plugin of ``rdsiam.testing``: fixtures for the local stack.

Registered through the ``pytest11`` entry point, so installing ``rdsiam[testing]``
makes these fixtures available to any test suite:

- ``kube``: a Kubernetes API server emulator (session scope), see ``rdsiam.testing.kube``.
- ``sts``: a moto STS/IAM server on loopback reached the way IRSA reaches STS.
- ``postgres``: a real PostgreSQL in a temporary directory (unix socket, trust auth).
- ``rds``: an IAM-checking PostgreSQL front door that accepts only valid RDS IAM tokens.
- ``operator``: the rdsiam operator running against ``kube`` and ``sts``.

Each component module defines its own fixtures; this module only gathers them.

The entry point is registered whenever ``rdsiam`` is installed, also without the ``testing`` extra
(an app that installs only the in-pod library): then this module offers no fixtures and leaves the app's
test suite alone, rather than failing its start on a missing ``yaml`` or ``moto``.
"""

from __future__ import annotations

try:
    from rdsiam.testing.fixtures import *  # noqa: F401,F403
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] == "rdsiam":  # our own module missing is a bug, not an extra not installed
        raise
