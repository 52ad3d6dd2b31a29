"""PyMySQL connections to RDS/Aurora MySQL with the mount's current token.

::

    from rdsiam.integrations import pymysql as rdsiam_pymysql

    MOUNT = "/var/run/secrets/rdsiam/orders-db"
    conn = rdsiam_pymysql.connect(MOUNT, ssl_ca="/etc/rds-ca.pem")   # TLS, verified

RDS MySQL's IAM plugin (``AWSAuthenticationPlugin``) asks the client for the
``mysql_clear_password`` method, which PyMySQL answers natively, and accepts it only over
TLS. So TLS is always on: pass ``ssl_ca=`` (the RDS CA bundle) to verify the server, or
``ssl=`` (an ``ssl.SSLContext`` or PyMySQL's dict); with none of PyMySQL's ``ssl*``
arguments, the connection is encrypted without verifying the server (like libpq's
``sslmode=require``). ``user``, ``host``, ``port`` and ``database`` come from the mount
unless given.

For SQLAlchemy use ``rdsiam.integrations.sqlalchemy.create_engine(MOUNT, "mysql+pymysql", ...)``.
"""

from __future__ import annotations

import os
import ssl as _ssl
from typing import TYPE_CHECKING, Any

from rdsiam._mounted import MountedCredential, Snapshot
from rdsiam.integrations._common import as_credential, reject_password

if TYPE_CHECKING:
    import pymysql.connections

__all__ = ["connect", "connect_kwargs"]

_SSL_KEYS = ("ssl", "ssl_ca", "ssl_cert", "ssl_key", "ssl_disabled", "ssl_verify_cert", "ssl_verify_identity")


def _encrypt_only() -> _ssl.SSLContext:
    ctx = _ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = _ssl.CERT_NONE
    return ctx


def connect_kwargs(snap: Snapshot, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``pymysql.connect`` keyword arguments for ``snap`` (``overrides`` win except the password)."""
    out: dict[str, Any] = {
        "user": snap.username,
        "host": snap.host,
        "port": snap.port,
        "database": snap.dbname,
    }
    if overrides:
        out.update(overrides)
    if not any(key in out for key in _SSL_KEYS):
        out["ssl"] = _encrypt_only()
    out["password"] = snap.password
    return out


def connect(
    cred: MountedCredential | str | os.PathLike[str],
    *,
    retry: bool = True,
    **kwargs: Any,
) -> pymysql.connections.Connection[Any]:
    """``pymysql.connect(**kwargs)`` with the mount's current user, host and token, over TLS.

    With ``retry``, a rejected login (error 1045) is tried once more if the mount holds a
    newer token.
    """
    import pymysql

    reject_password(kwargs, "rdsiam.integrations.pymysql.connect")
    credential = as_credential(cred)

    def attempt(snap: Snapshot) -> pymysql.connections.Connection[Any]:
        conn: pymysql.connections.Connection[Any] = pymysql.connect(**connect_kwargs(snap, kwargs))
        return conn

    return credential.with_retry(attempt) if retry else attempt(credential.snapshot())
