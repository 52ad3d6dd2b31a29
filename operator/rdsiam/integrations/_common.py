"""Helpers shared by the driver integrations (standard library only)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rdsiam._mounted import MountedCredential


def as_credential(cred: MountedCredential | str | os.PathLike[str]) -> MountedCredential:
    """``cred`` itself, or a :class:`MountedCredential` for the path ``cred``."""
    if isinstance(cred, MountedCredential):
        return cred
    return MountedCredential(cred)


def reject_password(kwargs: Mapping[str, object], where: str) -> None:
    """Refuse a password passed next to the mount: it would freeze the token."""
    for key in ("password", "passwd"):
        if key in kwargs:
            raise TypeError(
                f"{where}: do not pass {key}=; the token is read from the mounted Secret at each connect"
            )


def with_conninfo(parsed: dict[str, Any], kwargs: dict[str, Any], where: str | None) -> dict[str, Any]:
    """A libpq connection string's settings (``parsed`` by the driver) under the caller's keyword arguments,
    which win as in the drivers. Both then win over the mount's user, host, port and dbname: passed on as
    keywords, the mount's would silently win over the string's. A password in the string is refused
    (``where``: the caller's name) or, with ``where`` None (a connection class handed whatever a pool
    passes), dropped."""
    if where is not None:
        reject_password(parsed, where)
    parsed.pop("password", None)
    return {**parsed, **kwargs}
