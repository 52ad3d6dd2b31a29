"""psycopg 3 and psycopg_pool: every new connection logs in with the mount's current token.

One-off connections::

    from rdsiam.integrations import psycopg as rdsiam_psycopg

    MOUNT = "/var/run/secrets/rdsiam/orders-db"
    with rdsiam_psycopg.connect(MOUNT, sslmode="verify-full", sslrootcert="/etc/rds-ca.pem") as conn:
        conn.execute("select 1")

Pools (psycopg_pool >= 3.3 calls ``kwargs`` before each new connection)::

    from psycopg_pool import ConnectionPool, AsyncConnectionPool

    pool = ConnectionPool(kwargs=rdsiam_psycopg.connect_kwargs(MOUNT, sslmode="require"), open=True)
    apool = AsyncConnectionPool(kwargs=rdsiam_psycopg.connect_kwargs(MOUNT, sslmode="require"), open=False)

or, with any psycopg_pool version, a connection class (which also retries a rejected login
once when the mount already holds a newer token)::

    pool = ConnectionPool(
        connection_class=rdsiam_psycopg.connection_class(MOUNT), kwargs={"sslmode": "require"}, open=True
    )

``user``, ``host``, ``port`` and ``dbname`` come from the mount unless given, as keyword arguments
or in ``conninfo``; the password always does (passing one is an error). Other settings go to
``psycopg.connect``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rdsiam._mounted import MountedCredential, Snapshot
from rdsiam.integrations._common import as_credential, reject_password, with_conninfo

if TYPE_CHECKING:
    import psycopg

__all__ = ["async_connection_class", "connect", "connect_async", "connect_kwargs", "connection_class"]


def params(snap: Snapshot, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """libpq keyword arguments for ``snap``; ``overrides`` win except for the password."""
    out: dict[str, Any] = {
        "user": snap.username,
        "host": snap.host,
        "port": snap.port,
        "dbname": snap.dbname,
    }
    if overrides:
        out.update(overrides)
    out["password"] = snap.password
    return out


def _given(conninfo: str, kwargs: dict[str, Any], where: str | None) -> dict[str, Any]:
    """``conninfo`` (a libpq string or URL) and ``kwargs`` as one set of keywords (``with_conninfo``)."""
    if not conninfo:
        return kwargs
    from psycopg.conninfo import conninfo_to_dict

    return with_conninfo(conninfo_to_dict(conninfo), kwargs, where)


def connect(
    cred: MountedCredential | str | os.PathLike[str],
    conninfo: str = "",
    *,
    retry: bool = True,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """``psycopg.connect(conninfo, **kwargs)`` with the mount's current user, host and token.

    With ``retry``, a login the server rejects is tried once more if the mount has meanwhile
    received a newer token.
    """
    import psycopg

    reject_password(kwargs, "rdsiam.integrations.psycopg.connect")
    given = _given(conninfo, kwargs, "rdsiam.integrations.psycopg.connect")
    credential = as_credential(cred)

    def attempt(snap: Snapshot) -> psycopg.Connection[Any]:
        return psycopg.Connection.connect("", **params(snap, given))

    return credential.with_retry(attempt) if retry else attempt(credential.snapshot())


async def connect_async(
    cred: MountedCredential | str | os.PathLike[str],
    conninfo: str = "",
    *,
    retry: bool = True,
    **kwargs: Any,
) -> psycopg.AsyncConnection[Any]:
    """The ``async`` form of :func:`connect` (``psycopg.AsyncConnection.connect``)."""
    import psycopg

    reject_password(kwargs, "rdsiam.integrations.psycopg.connect_async")
    given = _given(conninfo, kwargs, "rdsiam.integrations.psycopg.connect_async")
    credential = as_credential(cred)

    async def attempt(snap: Snapshot) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect("", **params(snap, given))

    return await (credential.with_retry_async(attempt) if retry else attempt(credential.snapshot()))


def connect_kwargs(
    cred: MountedCredential | str | os.PathLike[str], **kwargs: Any
) -> Callable[[], dict[str, Any]]:
    """A callable returning fresh connection keywords: pass it as a pool's ``kwargs``.

    psycopg_pool (3.3+) calls it before every new connection, sync and async pools alike.
    """
    reject_password(kwargs, "rdsiam.integrations.psycopg.connect_kwargs")
    credential = as_credential(cred)

    def current() -> dict[str, Any]:
        return params(credential.snapshot(), kwargs)

    return current


def connection_class(
    cred: MountedCredential | str | os.PathLike[str],
    base: type[psycopg.Connection[Any]] | None = None,
    *,
    retry: bool = True,
) -> type[psycopg.Connection[Any]]:
    """A ``psycopg.Connection`` subclass whose ``connect`` logs in with the current token.

    For ``ConnectionPool(connection_class=...)`` with any psycopg_pool version, or to hand to
    code that calls ``Connection.connect`` itself.
    """
    import psycopg

    credential = as_credential(cred)
    parent: Any = base or psycopg.Connection

    class RdsIamConnection(parent):  # type: ignore[misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            kwargs.pop("password", None)
            given = _given(conninfo, kwargs, None)

            def attempt(snap: Snapshot) -> Any:
                return super(RdsIamConnection, cls).connect("", **params(snap, given))

            return credential.with_retry(attempt) if retry else attempt(credential.snapshot())

    RdsIamConnection.__qualname__ = RdsIamConnection.__name__ = f"RdsIam{parent.__name__}"
    return RdsIamConnection


def async_connection_class(
    cred: MountedCredential | str | os.PathLike[str],
    base: type[psycopg.AsyncConnection[Any]] | None = None,
    *,
    retry: bool = True,
) -> type[psycopg.AsyncConnection[Any]]:
    """The ``async`` form of :func:`connection_class`, for ``AsyncConnectionPool``."""
    import psycopg

    credential = as_credential(cred)
    parent: Any = base or psycopg.AsyncConnection

    class RdsIamAsyncConnection(parent):  # type: ignore[misc]
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            kwargs.pop("password", None)
            given = _given(conninfo, kwargs, None)

            async def attempt(snap: Snapshot) -> Any:
                return await super(RdsIamAsyncConnection, cls).connect("", **params(snap, given))

            if retry:
                return await credential.with_retry_async(attempt)
            return await attempt(credential.snapshot())

    RdsIamAsyncConnection.__qualname__ = RdsIamAsyncConnection.__name__ = f"RdsIam{parent.__name__}"
    return RdsIamAsyncConnection
