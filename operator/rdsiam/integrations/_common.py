"""Helpers shared by the driver integrations (standard library only)."""

from __future__ import annotations

import os
from collections.abc import Mapping

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
