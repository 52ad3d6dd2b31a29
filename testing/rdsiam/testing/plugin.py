"""pytest plugin of ``rdsiam.testing``: fixtures for the local stack.

Registered through the ``pytest11`` entry point of the ``rdsiam-testing`` distribution (installed by
``pip install rdsiam[testing]``), so these fixtures are available to any test suite that has it:

- ``kube``: a Kubernetes API server emulator (session scope), see ``rdsiam.testing.kube``.
- ``sts``: a moto STS/IAM server on loopback reached the way IRSA reaches STS.
- ``postgres``: a real PostgreSQL in a temporary directory (unix socket, trust auth).
- ``rds``: an IAM-checking PostgreSQL front door that accepts only valid RDS IAM tokens.
- ``mariadb``, ``rds_mysql``: a real MariaDB, and an IAM-checking MySQL front door in front of it.
- ``real_cluster``: etcd + kube-apiserver + kube-controller-manager built from Go modules (skipped
  when not built); ``kube_faults``: a fault-injecting proxy in front of it.
- ``operator``: the rdsiam operator running against ``cluster`` (``kube`` unless a tier says otherwise)
  and ``sts``.

Each component module defines its own fixtures; this module only gathers them. ``rdsiam`` alone
(the operator and the in-pod library) registers no plugin.
"""

from __future__ import annotations

from rdsiam.testing.fixtures import *  # noqa: F401,F403
