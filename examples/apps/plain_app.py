"""No driver integration: read the mount yourself, one snapshot per new connection."""

import os

import psycopg

import rdsiam

cred = rdsiam.MountedCredential(os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db"))

snap = cred.snapshot()  # username, password, host, port, dbname of one generation
print(f"token expires at {snap.expires_at:%H:%M:%S}Z")
with psycopg.connect(snap.dsn) as conn:  # or cred.with_retry(lambda s: psycopg.connect(s.dsn))
    print(conn.execute("select current_user").fetchone()[0])
