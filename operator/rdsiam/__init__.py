"""rdsiam: Amazon RDS IAM authentication for Kubernetes workloads.

In the application pod, ``import rdsiam`` gives a reader of the Secret the operator
writes, mounted as a volume; every access returns the current token::

    import rdsiam

    cred = rdsiam.MountedCredential("/var/run/secrets/rdsiam/orders-db")
    conn = psycopg.connect(cred.dsn)          # a fresh token for each new connection
    snap = cred.snapshot()                    # username, password, host, ... of one generation

Driver integrations live in ``rdsiam.integrations.<driver>`` (psycopg, psycopg2,
sqlalchemy, asyncpg, django, pymysql). This package imports only the standard library.
"""

from rdsiam._mounted import (
    CredentialError,
    CredentialExpired,
    CredentialIncomplete,
    CredentialMissing,
    CredentialUnreadable,
    MountedCredential,
    MountWarning,
    Snapshot,
)

__version__ = "0.1.0"

__all__ = [
    "CredentialError",
    "CredentialExpired",
    "CredentialIncomplete",
    "CredentialMissing",
    "CredentialUnreadable",
    "MountWarning",
    "MountedCredential",
    "Snapshot",
    "__version__",
]
