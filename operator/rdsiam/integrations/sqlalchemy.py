"""SQLAlchemy engines (sync and asyncio) whose new connections use the mount's current token.

::

    from rdsiam.integrations import sqlalchemy as rdsiam_sa

    MOUNT = "/var/run/secrets/rdsiam/orders-db"
    engine = rdsiam_sa.create_engine(MOUNT, "postgresql+psycopg", connect_args={"sslmode": "require"})
    aengine = rdsiam_sa.create_async_engine(MOUNT, "postgresql+asyncpg", connect_args={"ssl": "require"})
    mysql = rdsiam_sa.create_engine(MOUNT, "mysql+pymysql", connect_args={"ssl": {"ca": "/etc/rds-ca.pem"}})

or, for an engine you build yourself::

    engine = sqlalchemy.create_engine("postgresql+psycopg://app_user@orders.cluster-...:5432/orders")
    rdsiam_sa.attach(engine, MOUNT)

The URL carries user, host, port and database read from the mount, and no password. A
``do_connect`` listener makes each new DBAPI connection itself, with the password (and, for
engines made by this module, user, host, port and database unless ``connect_args`` overrides
them) of the mount's current generation, so the pool never freezes a token. It works on its
own copy of the parameters SQLAlchemy hands it (SQLAlchemy 2.0 hands every connect the same
dict) and never changes them. With ``retry`` (default) a rejected login is tried once more
when the mount already holds a newer token. ``do_connect`` listeners registered before it
run first and may change the parameters; listeners registered after it do not run.

With PyMySQL (``mysql+pymysql``, ``mariadb+pymysql``) or aiomysql, TLS is always on as in
:mod:`rdsiam.integrations.pymysql`: RDS asks for the token in clear text, so when neither
``connect_args`` nor the URL set ``ssl`` (or another of PyMySQL's ``ssl*`` arguments), the
connection is encrypted without verifying the server. Pass ``connect_args={"ssl": {"ca": ...}}``
to verify it. Other MySQL drivers get no TLS setting from rdsiam.

An alternative without events is ``creator``/``async_creator``::

    from rdsiam.integrations import psycopg as rdsiam_psycopg
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: rdsiam_psycopg.connect(MOUNT))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rdsiam._mounted import MountedCredential, Snapshot
from rdsiam.integrations._common import as_credential
from rdsiam.integrations.pymysql import _SSL_KEYS, _encrypt_only

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Dialect, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["attach", "create_async_engine", "create_engine", "url"]

_PROBE: dict[str, Any] = {
    "username": "rdsiam-probe-user",
    "password": "rdsiam-probe-password",
    "host": "rdsiam-probe-host",
    "port": 65001,
    "database": "rdsiam-probe-db",
}

# DBAPIs whose ``ssl=`` takes PyMySQL's arguments, an ``ssl.SSLContext`` among them.
_PYMYSQL_LIKE = frozenset({"pymysql", "aiomysql"})


def url(
    cred: MountedCredential | str | os.PathLike[str],
    drivername: str = "postgresql+psycopg",
    *,
    query: dict[str, str] | None = None,
) -> URL:
    """A SQLAlchemy URL for the mount's user, host, port and database, without password."""
    import sqlalchemy

    snap = as_credential(cred).snapshot()
    return sqlalchemy.URL.create(
        drivername,
        username=snap.username,
        host=snap.host,
        port=snap.port,
        database=snap.dbname,
        query=query or {},
    )


def _connect_keys(dialect: Dialect, engine_url: URL) -> dict[str, str]:
    """URL field -> the DBAPI keyword the dialect passes it as (``passwd``/``db`` for mysqldb)."""
    keys = {"password": "password"}
    try:
        _args, opts = dialect.create_connect_args(engine_url.set(**_PROBE))
    except Exception:  # pragma: no cover - exotic dialects: only the password is set
        return keys
    for key, value in opts.items():
        for name, probe in _PROBE.items():
            if value == probe or (name == "port" and str(value) == str(probe)):
                keys[name] = str(key)
    return keys


def attach(
    engine: Engine | AsyncEngine,
    cred: MountedCredential | str | os.PathLike[str],
    *,
    retry: bool = True,
    all_fields: bool = False,
) -> None:
    """Make every new DBAPI connection of ``engine`` log in with the mount's current token.

    With ``all_fields`` (what :func:`create_engine` uses, its URL being built from the mount),
    user, host, port and database are also taken from the mount's current generation, except
    where ``connect_args`` overrides them; otherwise only the password is.
    """
    from sqlalchemy import event

    credential = as_credential(cred)
    sync_engine: Engine = engine.sync_engine if hasattr(engine, "sync_engine") else engine
    dialect = sync_engine.dialect
    keys = _connect_keys(dialect, sync_engine.url)
    from_url: Mapping[str, Any] = {}
    if all_fields:
        _args, from_url = dialect.create_connect_args(sync_engine.url)

    # One context for every connection: it verifies nothing, so it holds no state to refresh.
    tls = _encrypt_only() if dialect.driver in _PYMYSQL_LIKE else None

    def params_for(snap: Snapshot, cparams: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(cparams)
        params[keys["password"]] = snap.password
        current = {"username": snap.username, "host": snap.host, "port": snap.port, "database": snap.dbname}
        for name, value in current.items():
            key = keys.get(name)
            # Replace only what came from the URL, not what connect_args set.
            if key is not None and key in from_url and params.get(key) == from_url[key]:
                params[key] = str(value) if isinstance(from_url[key], str) else value
        if tls is not None and not any(key in params for key in _SSL_KEYS):
            params["ssl"] = tls
        return params

    def do_connect(dialect: Dialect, conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        # SQLAlchemy 2.0 passes every connect the same cparams dict (2.1 a copy): writing to it
        # would leak one generation into the next and race between threads, so connect here
        # with a copy and return the connection.
        def attempt(snap: Snapshot) -> Any:
            return dialect.connect(*cargs, **params_for(snap, cparams))

        return credential.with_retry(attempt) if retry else attempt(credential.snapshot())

    event.listen(sync_engine, "do_connect", do_connect)


def create_engine(
    cred: MountedCredential | str | os.PathLike[str],
    drivername: str = "postgresql+psycopg",
    *,
    query: dict[str, str] | None = None,
    retry: bool = True,
    **kwargs: Any,
) -> Engine:
    """``sqlalchemy.create_engine`` for the mount (see the module docstring)."""
    import sqlalchemy

    credential = as_credential(cred)
    engine = sqlalchemy.create_engine(url(credential, drivername, query=query), **kwargs)
    attach(engine, credential, retry=retry, all_fields=True)
    return engine


def create_async_engine(
    cred: MountedCredential | str | os.PathLike[str],
    drivername: str = "postgresql+asyncpg",
    *,
    query: dict[str, str] | None = None,
    retry: bool = True,
    **kwargs: Any,
) -> AsyncEngine:
    """``sqlalchemy.ext.asyncio.create_async_engine`` for the mount (see the module docstring)."""
    from sqlalchemy.ext.asyncio import create_async_engine as _create

    credential = as_credential(cred)
    engine = _create(url(credential, drivername, query=query), **kwargs)
    attach(engine, credential, retry=retry, all_fields=True)
    return engine
