"""asyncpg connections and pools that log in with the mount's current token.

::

    from rdsiam.integrations import asyncpg as rdsiam_asyncpg

    MOUNT = "/var/run/secrets/rdsiam/orders-db"
    conn = await rdsiam_asyncpg.connect(MOUNT, ssl="verify-full")
    pool = await rdsiam_asyncpg.create_pool(MOUNT, ssl="verify-full", min_size=1, max_size=10)

asyncpg (0.21+) accepts a callable ``password`` and calls it for every connection attempt,
including each new connection of a pool: these helpers pass one that reads the mount.
``user``, ``host``, ``port`` and ``database`` come from the mount unless given.
For TLS verification against the RDS CA bundle pass an ``ssl.SSLContext``::

    ctx = ssl.create_default_context(cafile="/etc/rds-ca.pem")
    pool = await rdsiam_asyncpg.create_pool(MOUNT, ssl=ctx)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rdsiam._mounted import MountedCredential, Snapshot
from rdsiam.integrations._common import as_credential, reject_password

if TYPE_CHECKING:
    import asyncpg
    import asyncpg.pool

__all__ = ["connect", "connect_kwargs", "create_pool", "password"]


def password(cred: MountedCredential | str | os.PathLike[str]) -> Callable[[], str]:
    """A callable for asyncpg's ``password=``: returns the current token at each call."""
    credential = as_credential(cred)

    def current() -> str:
        return credential.snapshot().password

    return current


def connect_kwargs(cred: MountedCredential | str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect``/``create_pool``: the mount's user, host, port,
    database (``kwargs`` win) and a callable ``password``."""
    reject_password(kwargs, "rdsiam.integrations.asyncpg")
    credential = as_credential(cred)
    snap = credential.snapshot()
    out: dict[str, Any] = {
        "user": snap.username,
        "host": snap.host,
        "port": snap.port,
        "database": snap.dbname,
    }
    out.update(kwargs)
    out["password"] = password(credential)
    return out


def _params(snap: Snapshot, kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "user": snap.username,
        "host": snap.host,
        "port": snap.port,
        "database": snap.dbname,
    }
    out.update(kwargs)
    out["password"] = snap.password
    return out


async def connect(
    cred: MountedCredential | str | os.PathLike[str],
    *,
    retry: bool = True,
    **kwargs: Any,
) -> asyncpg.Connection:
    """``asyncpg.connect(**kwargs)`` with the mount's current user, host and token.

    With ``retry``, a rejected login is tried once more if the mount holds a newer token.
    """
    import asyncpg

    reject_password(kwargs, "rdsiam.integrations.asyncpg.connect")
    credential = as_credential(cred)

    async def attempt(snap: Snapshot) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(**_params(snap, kwargs))
        return conn

    return await (credential.with_retry_async(attempt) if retry else attempt(credential.snapshot()))


def _has_pool_connect() -> bool:
    import asyncpg

    try:
        major, minor = (int(x) for x in asyncpg.__version__.split(".")[:2])
    except ValueError:  # pragma: no cover
        return True
    return (major, minor) >= (0, 30)


def create_pool(
    cred: MountedCredential | str | os.PathLike[str], *, retry: bool = True, **kwargs: Any
) -> asyncpg.pool.Pool:
    """``asyncpg.create_pool(**kwargs)`` whose every new connection reads the mount.

    Await it (``pool = await create_pool(...)``) or use ``async with create_pool(...) as pool``.
    With asyncpg 0.30+ the pool's ``connect`` hook takes user, host, port, database and token
    of the current generation (``kwargs`` win), and retries a rejected login once when the
    mount holds a newer token; older asyncpg gets a callable ``password`` (the rest is read once).
    """
    import asyncpg

    reject_password(kwargs, "rdsiam.integrations.asyncpg.create_pool")
    credential = as_credential(cred)
    if not _has_pool_connect() or "connect" in kwargs:
        legacy: asyncpg.pool.Pool = asyncpg.create_pool(**connect_kwargs(credential, **kwargs))
        return legacy

    async def pool_connect(*args: Any, **connect_kw: Any) -> asyncpg.Connection:
        async def attempt(snap: Snapshot) -> asyncpg.Connection:
            conn: asyncpg.Connection = await asyncpg.connect(*args, **_params(snap, connect_kw))
            return conn

        return await (credential.with_retry_async(attempt) if retry else attempt(credential.snapshot()))

    pool: asyncpg.pool.Pool = asyncpg.create_pool(connect=pool_connect, **kwargs)
    return pool
