"""SQLAlchemy: an engine whose pool never freezes the token (a do_connect hook reads the mount)."""

import os

import sqlalchemy

from rdsiam.integrations import sqlalchemy as rdsiam_sa

MOUNT = os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")

engine = rdsiam_sa.create_engine(MOUNT, "postgresql+psycopg", pool_pre_ping=True)
with engine.connect() as conn:
    print(conn.scalar(sqlalchemy.text("select current_user")))
engine.dispose()
