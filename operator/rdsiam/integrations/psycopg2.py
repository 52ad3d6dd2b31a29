"""psycopg2: connections and pools that log in with the mount's current token.

::

    from rdsiam.integrations import psycopg2 as rdsiam_psycopg2

    MOUNT = "/var/run/secrets/rdsiam/orders-db"
    conn = rdsiam_psycopg2.connect(MOUNT, sslmode="verify-full", sslrootcert="/etc/rds-ca.pem")

    pool = rdsiam_psycopg2.ThreadedConnectionPool(MOUNT, 1, 10, sslmode="require")
    conn = pool.getconn()   # a connection the pool opens now uses the token current now

psycopg2 has no hook for per-connection parameters: its pools call ``psycopg2.connect``
with the keyword arguments given at construction, so the pools here recompute those
arguments from the mount each time the pool opens a connection.
``user``, ``host``, ``port`` and ``dbname`` come from the mount unless given; the password
always does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from rdsiam._mounted import MountedCredential, Snapshot
from rdsiam.integrations._common import as_credential, reject_password, with_conninfo
from rdsiam.integrations.psycopg import params

if TYPE_CHECKING:
    import psycopg2.extensions
    import psycopg2.pool

__all__ = ["SimpleConnectionPool", "ThreadedConnectionPool", "connect"]


def _given(dsn: str | None, kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``dsn`` (a libpq string or URL) and ``kwargs`` as one set of keywords (``with_conninfo``)."""
    if not dsn:
        return kwargs
    import psycopg2.extensions

    return with_conninfo(psycopg2.extensions.parse_dsn(dsn), kwargs, where)


def connect(
    cred: MountedCredential | str | os.PathLike[str],
    dsn: str | None = None,
    *,
    retry: bool = True,
    **kwargs: Any,
) -> psycopg2.extensions.connection:
    """``psycopg2.connect(dsn, **kwargs)`` with the mount's current user, host and token.

    With ``retry``, a rejected login is tried once more if the mount holds a newer token.
    """
    import psycopg2

    reject_password(kwargs, "rdsiam.integrations.psycopg2.connect")
    given = _given(dsn, kwargs, "rdsiam.integrations.psycopg2.connect")
    credential = as_credential(cred)

    def attempt(snap: Snapshot) -> psycopg2.extensions.connection:
        return psycopg2.connect(**params(snap, given))

    return credential.with_retry(attempt) if retry else attempt(credential.snapshot())


class _MountedKwargs:
    """``pool._kwargs`` recomputed from the mount at each read (psycopg2's ``_connect`` reads it)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, pool: Any, owner: type | None = None) -> Any:
        if pool is None:
            return self
        return params(pool._rdsiam.snapshot(), pool.__dict__["_rdsiam_kwargs"])

    def __set__(self, pool: Any, value: dict[str, Any]) -> None:
        where = f"rdsiam.integrations.psycopg2.{type(pool).__name__}"
        reject_password(value, where)
        kwargs = dict(value)
        pool.__dict__["_rdsiam_kwargs"] = _given(kwargs.pop("dsn", None), kwargs, where)


_pool_classes: dict[str, type] = {}


def _pool_class(name: str) -> type:
    cls = _pool_classes.get(name)
    if cls is None:
        import psycopg2.pool

        base: Any = getattr(psycopg2.pool, name)

        class Pool(base):  # type: ignore[misc]
            _kwargs = _MountedKwargs()

            def __init__(
                self,
                cred: MountedCredential | str | os.PathLike[str],
                minconn: int,
                maxconn: int,
                **kwargs: Any,
            ) -> None:
                self._rdsiam = as_credential(cred)
                super().__init__(minconn, maxconn, **kwargs)

        Pool.__name__ = Pool.__qualname__ = name
        Pool.__module__ = __name__
        Pool.__doc__ = f"``psycopg2.pool.{name}`` whose new connections use the mount's current token."
        cls = _pool_classes.setdefault(name, Pool)
    return cls


def SimpleConnectionPool(  # noqa: N802 - reads like the class it returns
    cred: MountedCredential | str | os.PathLike[str], minconn: int, maxconn: int, **kwargs: Any
) -> psycopg2.pool.SimpleConnectionPool:
    """``psycopg2.pool.SimpleConnectionPool`` (one thread) reading the mount per new connection."""
    pool: psycopg2.pool.SimpleConnectionPool = _pool_class("SimpleConnectionPool")(
        cred, minconn, maxconn, **kwargs
    )
    return pool


def ThreadedConnectionPool(  # noqa: N802 - reads like the class it returns
    cred: MountedCredential | str | os.PathLike[str], minconn: int, maxconn: int, **kwargs: Any
) -> psycopg2.pool.ThreadedConnectionPool:
    """``psycopg2.pool.ThreadedConnectionPool`` reading the mount per new connection."""
    pool: psycopg2.pool.ThreadedConnectionPool = _pool_class("ThreadedConnectionPool")(
        cred, minconn, maxconn, **kwargs
    )
    return pool
