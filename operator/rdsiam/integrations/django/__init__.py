"""Django database backends that log in with the mounted Secret's current token.

``settings.py``::

    DATABASES = {
        "default": {
            "ENGINE": "rdsiam.integrations.django.postgresql",   # or ...django.mysql
            "OPTIONS": {
                "rdsiam_path": "/var/run/secrets/rdsiam/orders-db",
                "sslmode": "verify-full",
                "sslrootcert": "/etc/rds-ca.pem",
            },
        }
    }

``NAME``, ``USER``, ``HOST`` and ``PORT`` come from the mount when left empty (set them to
override, e.g. to dial an RDS Proxy); ``PASSWORD`` is never used. Every new connection
(``CONN_MAX_AGE`` expiry, a new thread, a health check reconnect) calls
``get_connection_params()``, which reads the mount's current generation.

Django 5.1+'s native pool (``OPTIONS["pool"]``, psycopg 3 only) builds one
``psycopg_pool.ConnectionPool`` with the parameters of its first connection and would
reuse that token forever; these backends give the pool a callable ``kwargs`` instead,
which psycopg_pool (3.3+) calls before each new connection. With an older psycopg_pool
the backend refuses the pool with ``ImproperlyConfigured`` rather than freeze the token.

The MySQL backend works with mysqlclient (it sets ``LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1``
for the process, which RDS IAM logins need) and with PyMySQL installed as ``MySQLdb``;
it turns TLS on (``ssl_mode=REQUIRED``, or an encrypting context with PyMySQL) unless
``OPTIONS`` configures TLS itself.
"""

from __future__ import annotations

import threading
from typing import Any

from rdsiam._mounted import MountedCredential, Snapshot

OPTION_PATH = "rdsiam_path"

_credentials: dict[str, MountedCredential] = {}
_lock = threading.Lock()


def credential_for(settings_dict: dict[str, Any]) -> MountedCredential:
    """The process-wide :class:`MountedCredential` named by ``OPTIONS["rdsiam_path"]``."""
    from django.core.exceptions import ImproperlyConfigured

    path = settings_dict.get("OPTIONS", {}).get(OPTION_PATH)
    if not path:
        raise ImproperlyConfigured(
            f"rdsiam: set DATABASES[...]['OPTIONS']['{OPTION_PATH}'] to the directory where the "
            "rdsiam Secret is mounted (e.g. /var/run/secrets/rdsiam/orders-db)"
        )
    with _lock:
        cred = _credentials.get(path)
        if cred is None:
            cred = _credentials[path] = MountedCredential(path)
    return cred


def settings_for(settings_dict: dict[str, Any], snap: Snapshot) -> dict[str, Any]:
    """A copy of ``settings_dict`` with empty NAME/USER/HOST/PORT filled from the mount, the
    token as PASSWORD, and the ``rdsiam_*`` options removed (the original is not touched)."""
    options = {k: v for k, v in settings_dict.get("OPTIONS", {}).items() if not k.startswith("rdsiam_")}
    return {
        **settings_dict,
        "NAME": settings_dict.get("NAME") or snap.dbname,
        "USER": settings_dict.get("USER") or snap.username,
        "HOST": settings_dict.get("HOST") or snap.host,
        "PORT": settings_dict.get("PORT") or str(snap.port),
        "PASSWORD": snap.password,
        "OPTIONS": options,
    }
