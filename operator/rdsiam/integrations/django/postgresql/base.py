"""``ENGINE = "rdsiam.integrations.django.postgresql"``: Django's PostgreSQL backend, with the
password (and empty NAME/USER/HOST/PORT) read from the rdsiam mount at every new connection."""

from __future__ import annotations

import copy
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as _pg

from rdsiam.integrations.django import credential_for, settings_for

__all__ = ["DatabaseWrapper"]


def _pool_supports_callable_kwargs() -> bool:
    import psycopg_pool

    parts = psycopg_pool.__version__.split(".")[:2]
    try:
        return (int(parts[0]), int(parts[1])) >= (3, 3)
    except (ValueError, IndexError):  # pragma: no cover - unparsable version: assume recent
        return True


class DatabaseWrapper(_pg.DatabaseWrapper):  # type: ignore[misc]
    """PostgreSQL ``DatabaseWrapper`` whose connection parameters come from the rdsiam mount."""

    def get_connection_params(self) -> dict[str, Any]:
        snap = credential_for(self.settings_dict).snapshot()
        # Django's own method reads self.settings_dict: run it on a shallow copy that sees the
        # filled-in settings, so the shared settings dict is never mutated (thread safety).
        view = copy.copy(self)
        view.settings_dict = settings_for(self.settings_dict, snap)
        params: dict[str, Any] = _pg.DatabaseWrapper.get_connection_params(view)
        return params

    @property
    def pool(self) -> Any:
        pool = super().pool
        if pool is None or callable(pool.kwargs):
            return pool
        if not _pool_supports_callable_kwargs():
            raise ImproperlyConfigured(
                "rdsiam: OPTIONS['pool'] needs psycopg_pool >= 3.3 (callable connection kwargs); "
                "older versions would keep the first IAM token for every new connection, which fails "
                "after 15 minutes. Upgrade psycopg_pool or remove OPTIONS['pool']."
            )
        frozen = dict(pool.kwargs)  # what Django built for the pool, with the first token
        settings_dict = self.settings_dict

        def current_kwargs() -> dict[str, Any]:
            # Called by psycopg_pool (from its worker threads) before each new connection.
            snap = credential_for(settings_dict).snapshot()
            filled = settings_for(settings_dict, snap)
            return {
                **frozen,
                "user": filled["USER"],
                "host": filled["HOST"],
                "port": filled["PORT"],
                "dbname": filled["NAME"],
                "password": snap.password,
            }

        pool.kwargs = current_kwargs
        return pool
