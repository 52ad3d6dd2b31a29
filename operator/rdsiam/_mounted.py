"""Read the rdsiam Secret mounted as a volume, always at its current generation.

Kubelet writes a Secret volume with its AtomicWriter::

    DIR/..2024_05_01_12_00_00.123456789/{username,password,host,...}   real files
    DIR/..data -> ..2024_05_01_12_00_00.123456789                     swapped atomically
    DIR/password -> ..data/password                                   one symlink per key

An update writes a new timestamped directory, renames a ``..data_tmp`` symlink over
``..data`` and then deletes the old directory. :class:`MountedCredential` resolves
``..data`` once per read and reads every key from that one directory, so the keys it
returns always belong to one generation; if kubelet deletes the directory in the middle
of a read, the read starts over from the new ``..data``.

Each access costs one ``readlink(DIR/..data)``: when the link still names the generation
already read, the cached values are returned; otherwise the new generation is read.
No thread, no timer, no inotify.

Keys it needs (``REQUIRED_KEYS``): ``username``, ``password``, ``host``, ``port``, ``dbname`` and ``dsn``;
``expires-at`` is optional (without it nothing is known of expiry). Every other key, ``pgpass`` and the
keys a ``spec.target.template`` adds under ``mergePolicy: Merge``, is in :attr:`Snapshot.extra`. A
Secret written with ``mergePolicy: Replace`` holds only its template's keys: it suits this library only
when those templates recreate the keys above.

This module imports nothing outside the standard library.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

__all__ = [
    "CredentialError",
    "CredentialExpired",
    "CredentialIncomplete",
    "CredentialMissing",
    "CredentialUnreadable",
    "MountedCredential",
    "MountWarning",
    "Snapshot",
    "is_auth_error",
]

T = TypeVar("T")

DATA_LINK: Final = "..data"
REQUIRED_KEYS: Final = ("username", "password", "host", "port", "dbname", "dsn")
OPTIONAL_KEYS: Final = ("expires-at",)
_MAX_ATTEMPTS: Final = 50  # re-resolutions of ..data while kubelet keeps swapping under us

_HINT_OPERATOR: Final = (
    "check the RdsIamCredential's Ready condition (kubectl describe rdsiamcredential NAME) "
    "and that the pod mounts its Secret as a volume at this path"
)


class CredentialError(Exception):
    """Base class of every rdsiam credential error. ``path`` is the mount directory.

    Messages name the path and the likely cause; they never contain the token.
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class CredentialMissing(CredentialError):
    """The mount directory does not exist or is not a directory."""


class CredentialIncomplete(CredentialError):
    """Keys are missing from the mount, or hold values that cannot be parsed.

    ``missing`` lists the missing keys (empty when a value was malformed).
    """

    def __init__(self, message: str, path: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message, path)
        self.missing = missing


class CredentialUnreadable(CredentialError):
    """The mount exists but this process is not allowed to read it (file or directory mode).

    ``filename`` is the file or directory that could not be opened.
    """

    def __init__(self, message: str, path: str, filename: str) -> None:
        super().__init__(message, path)
        self.filename = filename


class CredentialExpired(CredentialError):
    """The mounted token's ``expires-at`` is in the past: the Secret is not being refreshed.

    ``expired_at`` is the instant, ``ago`` how many seconds ago it was.
    """

    def __init__(self, message: str, path: str, expired_at: _dt.datetime, ago: float) -> None:
        super().__init__(message, path)
        self.expired_at = expired_at
        self.ago = ago


class MountWarning(UserWarning):
    """The mount will not follow rotations (a ``subPath`` mount or copied files)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All keys of one generation of the mounted Secret.

    ``password`` and ``dsn`` hold the token and are left out of ``repr()``.

    >>> snap = MountedCredential("/var/run/secrets/rdsiam/orders-db").snapshot()  # doctest: +SKIP
    >>> psycopg.connect(user=snap.username, password=snap.password, host=snap.host,
    ...                 port=snap.port, dbname=snap.dbname)                        # doctest: +SKIP
    """

    path: str
    #: ``..data``'s target (``..2024_05_01_12_00_00.123``); for a mount without ``..data``,
    #: a fingerprint of the password file.
    generation: str
    username: str
    password: str = field(repr=False)
    host: str
    port: int
    dbname: str
    dsn: str = field(repr=False)
    #: ``None`` when the Secret carries no ``expires-at`` key.
    expires_at: _dt.datetime | None
    #: Keys beyond the standard ones (``pgpass`` and the like), by name.
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: False for a mount without ``..data`` (subPath or copied files): it never updates.
    atomic: bool = True

    def seconds_left(self, now: float | None = None) -> float | None:
        """Seconds until ``expires_at`` (negative once past), or ``None`` if unknown."""
        if self.expires_at is None:
            return None
        return self.expires_at.timestamp() - (time.time() if now is None else now)


def _strip(value: str) -> str:
    # `kubectl create secret --from-file` keeps a trailing newline; tokens never end in one.
    return value.rstrip("\r\n")


def _parse_expires_at(value: str) -> _dt.datetime:
    parsed = _dt.datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.astimezone(_dt.UTC)


def _human(seconds: float) -> str:
    seconds = int(abs(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(path: str, message: str) -> None:
    with _warned_lock:
        if path in _warned:
            return
        _warned.add(path)
    warnings.warn(message, MountWarning, stacklevel=4)


_DIR_FLAGS: Final = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS: Final = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_CHUNK: Final = 65536


def _read_at(dir_fd: int, name: str) -> bytes | None:
    """The content of ``name`` in the open directory (``None`` for a directory)."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise _Gone() from None
    except PermissionError:
        raise _Denied() from None
    try:
        chunks = [os.read(fd, _CHUNK)]
        while len(chunks[-1]) == _CHUNK:  # a short read of a regular file is its end
            chunks.append(os.read(fd, _CHUNK))
        return b"".join(chunks)
    except IsADirectoryError:
        return None
    finally:
        os.close(fd)


class _Gone(Exception):
    """The generation directory vanished mid-read (kubelet swapped and cleaned up)."""


class _Denied(Exception):
    """The file's mode does not let this process read it."""


@dataclass(frozen=True, slots=True)
class _Unread:
    """Why the key ``name`` could not be read: ``"gone"``, ``"denied"`` or ``"not-text"``."""

    name: str
    why: Literal["gone", "denied", "not-text"]


def _read_keys(dir_fd: int, names: list[str]) -> dict[str, str] | _Unread:
    """The text of each file ``names`` in the open directory (nested directories skipped).

    A failure is returned, not raised, so that no traceback holds this frame and with it
    the values already read (the token).
    """
    values: dict[str, str] = {}
    for name in names:
        try:
            raw = _read_at(dir_fd, name)
        except _Gone:
            return _Unread(name, "gone")
        except _Denied:
            return _Unread(name, "denied")
        if raw is None:
            continue  # a nested directory (`items[].path` with a slash): not ours
        try:
            values[name] = _strip(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return _Unread(name, "not-text")
    return values


class _Missing(Exception):
    """Required keys are absent from the directory read."""

    def __init__(self, missing: tuple[str, ...], present: tuple[str, ...]) -> None:
        super().__init__()
        self.missing = missing
        self.present = present


class MountedCredential:
    """The rdsiam Secret mounted at ``path``; every access returns the current generation.

    >>> import rdsiam
    >>> cred = rdsiam.MountedCredential("/var/run/secrets/rdsiam/orders-db")  # doctest: +SKIP
    >>> conn = psycopg.connect(cred.dsn)                                       # doctest: +SKIP
    >>> snap = cred.snapshot()   # username, password, host, ... of one generation

    Reading one attribute after another (``cred.username`` then ``cred.password``) may
    straddle a rotation; use :meth:`snapshot` to get all keys of one generation.

    Accesses raise :class:`CredentialMissing` (no such directory),
    :class:`CredentialUnreadable` (file modes forbid this user to read the mount),
    :class:`CredentialIncomplete` (keys missing or malformed) and
    :class:`CredentialExpired` (``expires-at`` is past, unless ``allow_expired``).
    A mount without ``..data`` (``subPath`` or copied files) works but warns once
    with :class:`MountWarning`, since it will never see a new token.

    ``clock`` returns the current Unix time; tests pass a fake one.
    Instances are safe to share between threads and event loops.
    """

    __slots__ = ("_allow_expired", "_clock", "_data_link", "_snap", "path")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        allow_expired: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path: str = os.fspath(path)
        self._data_link = os.path.join(self.path, DATA_LINK)
        self._allow_expired = allow_expired
        self._clock = clock
        self._snap: Snapshot | None = None

    def __repr__(self) -> str:
        return f"MountedCredential({self.path!r})"

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """All keys of the current generation (cached until ``..data`` changes)."""
        snap = self._current()
        if not self._allow_expired and snap.expires_at is not None:
            now = self._clock()
            deadline = snap.expires_at.timestamp()
            if now >= deadline:
                raise self._expired_error(snap, now - deadline)
        return snap

    def refresh(self) -> Snapshot:
        """Drop the cache and read the mount again (expiry is not checked)."""
        self._snap = None
        return self._current()

    def _current(self) -> Snapshot:
        try:
            target = os.readlink(self._data_link)
        except PermissionError:  # the mount directory is not searchable by this user
            raise self._unreadable(self.path) from None
        except OSError:  # no ..data, or ..data is no symlink (someone copied the directory)
            return self._current_plain()
        snap = self._snap
        if snap is not None and snap.generation == target:
            return snap
        snap = self._load_atomic(target)
        self._snap = snap
        return snap

    def _load_atomic(self, target: str) -> Snapshot:
        for _ in range(_MAX_ATTEMPTS):
            missing: _Missing | None = None
            try:
                return self._read_dir(os.path.join(self.path, target), target, atomic=True)
            except _Gone:
                pass
            except _Missing as exc:
                missing = exc
            try:
                newer: str | None = os.readlink(self._data_link)
            except OSError:
                newer = None
            if newer is None:
                # ..data itself disappeared: the volume is being torn down or replaced.
                return self._current_plain()
            if newer == target:
                # Not a swap in progress (kubelet removes a directory only after moving ..data).
                if missing is not None:
                    raise self._incomplete(missing)
                raise CredentialIncomplete(
                    f"rdsiam: {self.path}/{DATA_LINK} points to {target!r}, which cannot be read; "
                    f"the volume is damaged: {_HINT_OPERATOR}",
                    self.path,
                )
            target = newer
        raise CredentialError(
            f"rdsiam: {self.path} changed {_MAX_ATTEMPTS} times while being read; giving up",
            self.path,
        )

    def _incomplete(self, exc: _Missing) -> CredentialIncomplete:
        return CredentialIncomplete(
            f"rdsiam: {self.path} lacks key(s) {', '.join(exc.missing)} "
            f"(found: {', '.join(exc.present) or 'nothing'}); the Secret may not be written by "
            "rdsiam yet, or the volume's `items:` selects only some keys: " + _HINT_OPERATOR,
            self.path,
            exc.missing,
        )

    def _unreadable(self, filename: str) -> CredentialUnreadable:
        return CredentialUnreadable(
            f"rdsiam: permission denied reading {filename} (this process runs as uid {os.geteuid()}, "
            f"gid {os.getegid()}): the mounted Secret is not readable by this user. Check the "
            "volume's defaultMode (0400 lets only the files' owner, root, read them; use 0440 with the "
            "pod's securityContext.fsGroup, or 0444) and the pod's securityContext runAsUser and fsGroup",
            self.path,
            filename,
        )

    def _current_plain(self) -> Snapshot:
        if not os.path.isdir(self.path):
            hint = (
                "the path exists but is not a directory; mount the Secret as a volume (not with subPath)"
                if os.path.exists(self.path)
                else "mount the Secret as a volume at this path "
                "(volumes[].secret.secretName and volumeMounts[].mountPath, without subPath)"
            )
            raise CredentialMissing(f"rdsiam: no credential directory at {self.path}: {hint}", self.path)
        try:
            st = os.stat(os.path.join(self.path, "password"))
            fingerprint = f"plain:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
        except OSError:
            fingerprint = "plain:none"
        snap = self._snap
        if snap is None or snap.generation != fingerprint:
            try:
                snap = self._read_dir(self.path, fingerprint, atomic=False)
            except _Missing as exc:
                raise self._incomplete(exc) from None
            except _Gone:
                raise CredentialIncomplete(
                    f"rdsiam: files in {self.path} changed while being read; try again", self.path
                ) from None
            self._snap = snap
        _warn_once(
            self.path,
            f"rdsiam: {self.path} has no {DATA_LINK} symlink, so it is not a Secret volume that kubelet "
            "updates (a subPath mount or copied files); the token will not follow rotations and will "
            "fail within 15 minutes. Mount the whole Secret as a volume directory without subPath.",
        )
        return snap

    def _read_dir(self, directory: str, generation: str, *, atomic: bool) -> Snapshot:
        # Open the directory once and read the keys relative to it: no path walk per file.
        try:
            dir_fd = os.open(directory, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise _Gone() from None
        except PermissionError:
            raise self._unreadable(directory) from None
        try:
            present = sorted(n for n in os.listdir(dir_fd) if not n.startswith(".."))
            missing = tuple(k for k in REQUIRED_KEYS if k not in present)
            if missing:
                raise _Missing(missing, tuple(present))
            values = _read_keys(dir_fd, present)
        finally:
            os.close(dir_fd)
        if isinstance(values, _Unread):
            raise self._unread_error(values)
        try:
            return self._parse(values, generation, atomic=atomic)
        finally:
            # The Snapshot keeps its own references: empty the dict so that a traceback that
            # captures local variables (Sentry, Django's debug page) cannot show the token.
            values.clear()

    def _unread_error(self, unread: _Unread) -> Exception:
        if unread.why == "gone":
            return _Gone()
        if unread.why == "denied":
            return self._unreadable(os.path.join(self.path, unread.name))
        return CredentialIncomplete(f"rdsiam: {self.path}/{unread.name} is not UTF-8 text", self.path)

    def _parse(self, values: dict[str, str], generation: str, *, atomic: bool) -> Snapshot:
        missing = tuple(k for k in REQUIRED_KEYS if k not in values)
        if missing:  # a required key that is a directory
            raise _Missing(missing, tuple(sorted(values)))
        try:
            port = int(values["port"])
        except ValueError:
            raise CredentialIncomplete(
                f"rdsiam: {self.path}/port is not a number: {values['port'][:20]!r}", self.path
            ) from None
        expires_at = None
        if "expires-at" in values:
            try:
                expires_at = _parse_expires_at(values["expires-at"])
            except ValueError:
                raise CredentialIncomplete(
                    f"rdsiam: {self.path}/expires-at is not an RFC 3339 instant: {values['expires-at'][:40]!r}",
                    self.path,
                ) from None
        known = set(REQUIRED_KEYS) | set(OPTIONAL_KEYS)
        return Snapshot(
            path=self.path,
            generation=generation,
            username=values["username"],
            password=values["password"],
            host=values["host"],
            port=port,
            dbname=values["dbname"],
            dsn=values["dsn"],
            expires_at=expires_at,
            extra={k: v for k, v in values.items() if k not in known},
            atomic=atomic,
        )

    def _expired_error(self, snap: Snapshot, ago: float) -> CredentialExpired:
        assert snap.expires_at is not None
        when = snap.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if snap.atomic:
            cause = (
                "the Secret is not being refreshed: " + _HINT_OPERATOR + "; kubelet shows a new "
                "Secret in the volume about a minute after the operator writes it"
            )
        else:
            cause = (
                f"{self.path} has no {DATA_LINK} symlink (a subPath mount or copied files), so it never "
                "updates: mount the whole Secret as a volume directory without subPath"
            )
        return CredentialExpired(
            f"rdsiam: the token in {self.path} expired {_human(ago)} ago (expires-at {when}); {cause}",
            self.path,
            snap.expires_at,
            ago,
        )

    # -- attribute access (each one checks ..data; use snapshot() for a consistent set) ----

    @property
    def username(self) -> str:
        """The database user name."""
        return self.snapshot().username

    @property
    def password(self) -> str:
        """The current IAM token, to pass as the password."""
        return self.snapshot().password

    @property
    def host(self) -> str:
        """The host clients connect to: the RDS endpoint, or the CNAME in front of it (signingHost)."""
        return self.snapshot().host

    @property
    def port(self) -> int:
        """The database port."""
        return self.snapshot().port

    @property
    def dbname(self) -> str:
        """The database name."""
        return self.snapshot().dbname

    @property
    def dsn(self) -> str:
        """A DSN with the current token, percent-encoded for libpq, psycopg, SQLAlchemy, PyMySQL."""
        return self.snapshot().dsn

    @property
    def expires_at(self) -> _dt.datetime | None:
        """When the current token stops being accepted (UTC), if the Secret says."""
        return self.snapshot().expires_at

    @property
    def generation(self) -> str:
        """The current generation's name (``..data``'s target)."""
        return self.snapshot().generation

    # -- retry once on a rejected login --------------------------------------------------

    def with_retry(
        self,
        connect: Callable[[Snapshot], T],
        *,
        auth_error: Callable[[BaseException], bool] | None = None,
    ) -> T:
        """Call ``connect(snapshot)``; if the server rejects the login and the mount holds a
        newer generation than the one used, call it once more with the newer one.

        ``auth_error(exc)`` tells a rejected login apart from other failures; the default,
        :func:`is_auth_error`, knows PostgreSQL's and MySQL's codes and messages.

        >>> conn = cred.with_retry(lambda s: psycopg.connect(s.dsn))  # doctest: +SKIP
        """
        check = auth_error or is_auth_error
        snap = self.snapshot()
        try:
            return connect(snap)
        except Exception as exc:
            newer = self._newer_than(snap) if check(exc) else None
            if newer is None:
                raise
        return connect(newer)

    async def with_retry_async(
        self,
        connect: Callable[[Snapshot], Awaitable[T]],
        *,
        auth_error: Callable[[BaseException], bool] | None = None,
    ) -> T:
        """The ``async`` form of :meth:`with_retry`."""
        check = auth_error or is_auth_error
        snap = self.snapshot()
        try:
            return await connect(snap)
        except Exception as exc:
            newer = self._newer_than(snap) if check(exc) else None
            if newer is None:
                raise
        return await connect(newer)

    def _newer_than(self, used: Snapshot) -> Snapshot | None:
        try:
            snap = self.snapshot()
        except CredentialError:
            return None
        return snap if snap.generation != used.generation else None


# SQLSTATEs: 28000 invalid_authorization_specification (PAM failure), 28P01 invalid_password.
_AUTH_SQLSTATES: Final = frozenset({"28000", "28P01"})
_AUTH_MYSQL_ERRNOS: Final = frozenset({1045, 1698})  # ER_ACCESS_DENIED_ERROR, ER_ACCESS_DENIED_NO_PASSWORD
_AUTH_PHRASES: Final = (
    "pam authentication failed",
    "password authentication failed",
    "access denied for user",
)


def is_auth_error(exc: BaseException) -> bool:
    """Whether ``exc`` (from any supported driver) says the server refused the credentials."""
    for attr in ("sqlstate", "pgcode"):
        code = getattr(exc, attr, None)
        if isinstance(code, str) and code in _AUTH_SQLSTATES:
            return True
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and args[0] in _AUTH_MYSQL_ERRNOS:
        return True
    text = str(exc).lower()
    return any(phrase in text for phrase in _AUTH_PHRASES)
