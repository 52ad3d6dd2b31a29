"""psycopg2: a threaded pool that reads the current token for each connection it opens."""

import os

from rdsiam.integrations import psycopg2 as rdsiam_psycopg2

MOUNT = os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")

pool = rdsiam_psycopg2.ThreadedConnectionPool(MOUNT, 1, 10)  # TLS from PGSSLMODE/PGSSLROOTCERT
conn = pool.getconn()
with conn.cursor() as cur:
    cur.execute("select current_user")
    print(cur.fetchone()[0])
pool.putconn(conn)
pool.closeall()
