"""pytest fixtures of the AWS side of the local stack (gathered by ``rdsiam.testing.fixtures``).

- ``sts`` (session): :class:`rdsiam.testing.sts.StsServer`, moto STS/IAM on loopback.
- ``postgres`` (session): :class:`rdsiam.testing.postgres.PostgresServer`, a real PostgreSQL.
- ``rds`` (session): :class:`rdsiam.testing.rds.IamPostgres` in front of ``postgres``, checking
  tokens against the credentials ``sts`` issued. It is shared by the session: change its settings
  with ``monkeypatch.setattr(rds, "clock_offset", 901)`` so they are restored after the test.
- ``mariadb`` (session): :class:`rdsiam.testing.mysql.MariaDBServer`, a real MariaDB (TLS on).
- ``rds_mysql`` (session): :class:`rdsiam.testing.rds_mysql.IamMySQL` in front of ``mariadb``,
  the MySQL counterpart of ``rds``; ``rds_mysql.create_user(name, database=...)`` makes an IAM user.
- ``sts_faults`` (function): a :class:`rdsiam.testing.faults.FaultProxy` in front of ``sts``
  (one per session, ``sts_fault_proxy``), cleared before and after each test. Point
  ``AWS_ENDPOINT_URL_STS`` at ``sts_faults.url``.

A missing PostgreSQL installation makes ``postgres``/``rds`` fail with a message naming
``scripts/setup.sh``, a missing MariaDB makes ``mariadb``/``rds_mysql`` fail with
:class:`~rdsiam.testing.mysql.MariaDBUnavailable`; neither is turned into a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rdsiam.testing.faults import FaultProxy
from rdsiam.testing.mysql import MariaDBServer
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.sts import StsServer

__all__ = ["mariadb", "postgres", "rds", "rds_mysql", "sts", "sts_fault_proxy", "sts_faults"]


@pytest.fixture(scope="session")
def sts() -> Iterator[StsServer]:
    with StsServer(region="us-east-1") as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def rds(postgres: PostgresServer, sts: StsServer) -> Iterator[IamPostgres]:
    with IamPostgres(postgres, sts.lookup, region=sts.region) as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    with MariaDBServer() as server:
        yield server


@pytest.fixture(scope="session")
def rds_mysql(mariadb: MariaDBServer, sts: StsServer) -> Iterator[IamMySQL]:
    with IamMySQL(mariadb, sts.lookup, region=sts.region) as server:
        yield server


@pytest.fixture(scope="session")
def sts_fault_proxy(sts: StsServer) -> Iterator[FaultProxy]:
    with FaultProxy(sts.url, identify=sts.arn_of) as proxy:
        yield proxy


@pytest.fixture
def sts_faults(sts_fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    sts_fault_proxy.clear()
    yield sts_fault_proxy
    sts_fault_proxy.clear()
