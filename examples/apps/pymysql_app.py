"""PyMySQL against RDS/Aurora MySQL: the token is sent in cleartext over TLS, as RDS requires."""

import os

from rdsiam.integrations import pymysql as rdsiam_pymysql

MOUNT = os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")
CA = os.environ.get("RDS_CA_BUNDLE", "/etc/rds/global-bundle.pem")  # the RDS CA bundle: verify the server

conn = rdsiam_pymysql.connect(MOUNT, ssl_ca=CA)
with conn.cursor() as cur:
    cur.execute("SELECT CURRENT_USER()")
    print(cur.fetchone()[0])
conn.close()
