"""Test the app's database code against IAM login, as on RDS, with the fixtures of ``rdsiam[testing]``.

``postgres`` is a real PostgreSQL, ``rds`` a TLS front door that accepts only valid RDS IAM tokens
(and refuses like RDS otherwise), ``sts`` a local STS whose roles sign those tokens. The mount is
written the way the kubelet writes a Secret volume, so the app reads it as it would in its pod.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

import orders
from rdsiam.testing.kubelet import AtomicWriter, secret_payload

USER, DATABASE = "orders_app", "orders"


@pytest.fixture(scope="module")
def database(postgres):
    postgres.create_user(USER, database=DATABASE)  # CREATE USER ...; GRANT rds_iam TO ...
    postgres.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, state text NOT NULL);"
                     "TRUNCATE orders; INSERT INTO orders (state) VALUES ('open'), ('open'), ('shipped');"
                     f"GRANT ALL ON orders TO {USER}", database=DATABASE)
    return DATABASE


class Mount:
    """The app's Secret volume: ``rotate()`` writes a new token, as the operator and the kubelet do."""

    def __init__(self, directory: Path, mint: Callable[[str], str], rds) -> None:
        self.directory, self._mint, self._rds = str(directory), mint, rds
        self._writer = AtomicWriter(directory)

    def rotate(self, *, signed_for: str = USER) -> None:
        token = self._mint(signed_for)
        self._writer.write(secret_payload(
            username=USER, password=token, host=self._rds.endpoint, port=self._rds.port, dbname=DATABASE,
            dsn=self._rds.dsn(USER, DATABASE, token)))


@pytest.fixture
def mount(database, rds, sts, tmp_path: Path) -> Mount:
    return Mount(tmp_path / "orders-db", sts.token_minter("orders-app", rds.endpoint, rds.port), rds)


def test_the_app_logs_in_with_the_mounted_token(mount, rds) -> None:
    mount.rotate()
    assert orders.open_orders(orders.credential(mount.directory)) == 2
    assert rds.last_login.accepted and rds.last_login.method == "iam"


def test_a_token_signed_for_another_user_is_refused_as_rds_does(mount, rds) -> None:
    mount.rotate(signed_for="someone_else")
    with pytest.raises(psycopg.OperationalError, match="PAM authentication failed"):
        orders.open_orders(orders.credential(mount.directory))
    assert not rds.last_login.accepted


def test_the_next_connection_uses_the_token_written_since(mount, rds) -> None:
    cred = orders.credential(mount.directory)  # opened once, as an app does at start
    mount.rotate(signed_for="someone_else")
    with pytest.raises(psycopg.OperationalError):
        orders.open_orders(cred)
    mount.rotate()
    assert orders.open_orders(cred) == 2
    assert rds.last_login.accepted
