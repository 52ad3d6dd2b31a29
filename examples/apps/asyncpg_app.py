"""asyncpg: a pool whose every new connection reads the current token."""

import asyncio
import os
import ssl

from rdsiam.integrations import asyncpg as rdsiam_asyncpg

MOUNT = os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")
CA = os.environ.get("RDS_CA_BUNDLE", "/etc/rds/global-bundle.pem")  # the RDS CA bundle
CONNECT_HOST = os.environ.get("DB_CONNECT_HOST")  # optional: dial this instead of the mount's host


async def main() -> None:
    extra = {"host": CONNECT_HOST} if CONNECT_HOST else {}
    tls = ssl.create_default_context(cafile=CA)
    async with rdsiam_asyncpg.create_pool(MOUNT, ssl=tls, min_size=1, max_size=10, **extra) as pool:
        print(await pool.fetchval("select current_user"))


asyncio.run(main())
