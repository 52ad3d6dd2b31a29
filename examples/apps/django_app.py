"""Django: the rdsiam database backend, with Django's native connection pool.

In a project this is settings.py's DATABASES; here a one-file app configures it inline.
"""

import os

import django
from django.conf import settings

MOUNT = os.environ.get("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")

if not settings.configured:  # every.py runs this file again in one process
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "rdsiam.integrations.django.postgresql",
                "OPTIONS": {
                    "rdsiam_path": MOUNT,  # NAME, USER, HOST, PORT and the token come from here
                    "sslmode": os.environ.get("PGSSLMODE", "verify-full"),
                    "sslrootcert": os.environ.get("RDS_CA_BUNDLE", "/etc/rds/global-bundle.pem"),
                    "pool": {"min_size": 1, "max_size": 10},  # Django 5.1+: new connections get fresh tokens
                },
            }
        },
        USE_TZ=True,
    )
django.setup()

from django.db import connection  # noqa: E402

with connection.cursor() as cursor:
    cursor.execute("select current_user")
    print(cursor.fetchone()[0])
connection.close()
connection.close_pool()
