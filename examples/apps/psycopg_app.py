"""psycopg 3 + psycopg_pool: a pool whose every new connection uses the current token.

The Secret is mounted as a volume (see deployment.yaml); TLS settings come from the usual
libpq environment (PGSSLMODE=verify-full, PGSSLROOTCERT=/etc/rds/global-bundle.pem).
"""

import os

from psycopg_pool import ConnectionPool

from rdsiam.integrations import psycopg as rdsiam_psycopg

MOUNT = os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")

pool = ConnectionPool(kwargs=rdsiam_psycopg.connect_kwargs(MOUNT), min_size=1, max_size=10, open=True)
with pool.connection() as conn:
    print(conn.execute("select current_user").fetchone()[0])
pool.close()
