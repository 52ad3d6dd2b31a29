"""SQLAlchemy asyncio with asyncpg: the same do_connect hook on the async engine."""

import asyncio
import os
import ssl

import sqlalchemy

from rdsiam.integrations import sqlalchemy as rdsiam_sa

MOUNT = os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")
CA = os.environ.get("RDS_CA_BUNDLE", "/etc/rds/global-bundle.pem")  # the RDS CA bundle
CONNECT_HOST = os.environ.get("DB_CONNECT_HOST")  # optional: dial this instead of the mount's host


async def main() -> None:
    connect_args: dict[str, object] = {"ssl": ssl.create_default_context(cafile=CA)}
    if CONNECT_HOST:
        connect_args["host"] = CONNECT_HOST
    engine = rdsiam_sa.create_async_engine(MOUNT, "postgresql+asyncpg", connect_args=connect_args)
    async with engine.connect() as conn:
        print(await conn.scalar(sqlalchemy.text("select current_user")))
    await engine.dispose()


asyncio.run(main())
