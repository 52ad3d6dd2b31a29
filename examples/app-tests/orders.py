"""An app team's database code: it connects with the mounted rdsiam credential, so every new
connection logs in with the token the operator wrote last."""

from __future__ import annotations

import os

import psycopg

import rdsiam

CREDENTIAL_DIR = os.environ.get("ORDERS_DB_CREDENTIAL", "/var/run/secrets/rdsiam/orders-db")


def credential(directory: str = CREDENTIAL_DIR) -> rdsiam.MountedCredential:
    return rdsiam.MountedCredential(directory)


def open_orders(cred: rdsiam.MountedCredential) -> int:
    """How many orders are open (a new connection, so a fresh token)."""
    with psycopg.connect(cred.dsn, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM orders WHERE state = 'open'").fetchone()
    return int(row[0]) if row else 0
