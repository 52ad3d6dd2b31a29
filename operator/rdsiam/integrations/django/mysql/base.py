"""``ENGINE = "rdsiam.integrations.django.mysql"``: Django's MySQL backend, with the password
(and empty NAME/USER/HOST/PORT) read from the rdsiam mount at every new connection, cleartext
authentication enabled and TLS on, as RDS MySQL IAM logins require."""

from __future__ import annotations

import copy
import os
from typing import Any

from django.db.backends.mysql import base as _mysql

from rdsiam.integrations.django import credential_for, settings_for

__all__ = ["DatabaseWrapper"]

_TLS_OPTIONS = ("ssl", "ssl_mode", "ssl_ca", "ssl_cert", "ssl_key", "ssl_disabled", "ssl_verify_cert")


def _is_pymysql() -> bool:
    return (
        _mysql.Database.__name__ == "pymysql" or getattr(_mysql.Database, "__file__", "").find("pymysql") >= 0
    )


class DatabaseWrapper(_mysql.DatabaseWrapper):  # type: ignore[misc]
    """MySQL ``DatabaseWrapper`` whose connection parameters come from the rdsiam mount."""

    def get_connection_params(self) -> dict[str, Any]:
        snap = credential_for(self.settings_dict).snapshot()
        view = copy.copy(self)
        view.settings_dict = settings_for(self.settings_dict, snap)
        params: dict[str, Any] = _mysql.DatabaseWrapper.get_connection_params(view)
        self.isolation_level = view.isolation_level  # type: ignore[has-type]
        if not any(key in params for key in _TLS_OPTIONS):
            if _is_pymysql():
                from rdsiam.integrations.pymysql import _encrypt_only

                params["ssl"] = _encrypt_only()
            else:
                params["ssl_mode"] = "REQUIRED"
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not _is_pymysql():
            # libmysqlclient sends the token with mysql_clear_password only when this is set.
            os.environ.setdefault("LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN", "1")
        return super().get_new_connection(conn_params)
