"""Write Secret volumes exactly the way kubelet does, to test readers of a mount.

:class:`AtomicWriter` follows kubelet's ``pkg/volume/util/atomic_writer.go``:

1. read the current ``..data`` target (the old timestamped directory);
2. if the payload is unchanged, do nothing (kubelet does not rewrite equal content);
3. create ``..YYYY_MM_DD_HH_MM_SS.<digits>`` (``os.MkdirTemp`` with a UTC timestamp
   prefix, mode 0755) and write each file there with ``defaultMode`` (chmod after the
   write, so the umask does not matter);
4. ``symlink(tsdir, "..data_tmp")`` then ``rename("..data_tmp", "..data")``: the swap;
5. create the per-key symlinks ``key -> ..data/key`` that do not exist yet;
6. remove the symlinks of keys no longer in the payload;
7. remove the old timestamped directory.

:class:`PlainWriter` writes plain files in place, like a ``subPath`` mount or files copied
by an init container: a reader cannot see a consistent generation and it never updates.

>>> w = AtomicWriter(tmp_path / "orders-db")
>>> w.write({"username": b"app", "password": b"tok1", ...})
>>> w.write({"username": b"app", "password": b"tok2", ...})   # a rotation
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["AtomicWriter", "PlainWriter", "secret_payload"]

DATA_DIR = "..data"
DATA_DIR_TMP = "..data_tmp"


def secret_payload(
    *,
    username: str,
    password: str,
    host: str,
    port: int,
    dbname: str,
    dsn: str | None = None,
    expires_at: str | None = None,
    **extra: str,
) -> dict[str, bytes]:
    """The bytes of an rdsiam Secret's keys (``dsn`` built from the parts when omitted).

    ``extra`` keys use ``_`` for ``-``.
    """
    from urllib.parse import quote

    if dsn is None:
        scheme = "mysql" if port == 3306 else "postgresql"
        dsn = f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{host}:{port}/{dbname}"
    payload = {
        "username": username,
        "password": password,
        "host": host,
        "port": str(port),
        "dbname": dbname,
        "dsn": dsn,
    }
    if expires_at is not None:
        payload["expires-at"] = expires_at
    payload.update({k.replace("_", "-"): v for k, v in extra.items()})
    return {k: v.encode() for k, v in payload.items()}


class AtomicWriter:
    """A Secret volume at ``path``, written like kubelet's AtomicWriter.

    ``default_mode`` is the volume's ``defaultMode`` (kubelet's default 0644).
    ``before_swap`` and ``before_cleanup`` are test hooks called with the new and the old
    timestamped directory names, to interleave a reader with a rotation.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default_mode: int = 0o644,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.default_mode = default_mode
        self._clock = clock
        self.path.mkdir(parents=True, exist_ok=True)

    def current(self) -> str | None:
        """The name of the timestamped directory ``..data`` points to, if any."""
        try:
            return os.readlink(self.path / DATA_DIR)
        except FileNotFoundError:
            return None

    def _read_current(self, ts_dir: str | None) -> dict[str, bytes]:
        if ts_dir is None:
            return {}
        base = self.path / ts_dir
        out: dict[str, bytes] = {}
        for root, _dirs, files in os.walk(base):
            for name in files:
                full = Path(root) / name
                out[str(full.relative_to(base))] = full.read_bytes()
        return out

    def _new_ts_dir(self) -> str:
        now = self._clock()
        prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime(now))
        for _ in range(100):
            # os.MkdirTemp appends a random decimal string (strconv.Itoa(int(rand.Uint32()))).
            name = prefix + str(random.getrandbits(32))
            try:
                os.mkdir(self.path / name, 0o755)
            except FileExistsError:
                continue
            os.chmod(self.path / name, 0o755)
            return name
        raise RuntimeError("could not create a timestamped directory")

    def write(
        self,
        payload: Mapping[str, bytes],
        *,
        mode: Mapping[str, int] | None = None,
        before_swap: Callable[[str, str | None], None] | None = None,
        before_cleanup: Callable[[str, str | None], None] | None = None,
    ) -> bool:
        """Publish ``payload`` (key -> bytes) as the new generation; False if unchanged.

        ``mode`` overrides file modes per key (a Secret volume's ``items[].mode``).
        """
        for key in payload:
            if not key or key.startswith(("..", "/")) or ".." in key.split("/"):
                raise ValueError(f"invalid key {key!r}")
        old_ts = self.current()
        old_payload = self._read_current(old_ts)
        if old_ts is not None and old_payload == dict(payload):
            return False
        ts_dir = self._new_ts_dir()
        ts_path = self.path / ts_dir
        for key, content in payload.items():
            target = ts_path / key
            target.parent.mkdir(parents=True, exist_ok=True)
            file_mode = (mode or {}).get(key, self.default_mode)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode)
            try:
                os.write(fd, content)
            finally:
                os.close(fd)
            os.chmod(target, file_mode)
        if before_swap is not None:
            before_swap(ts_dir, old_ts)
        tmp_link = self.path / DATA_DIR_TMP
        try:
            os.unlink(tmp_link)
        except FileNotFoundError:
            pass
        os.symlink(ts_dir, tmp_link)
        os.rename(tmp_link, self.path / DATA_DIR)
        # User-visible paths: one symlink per top-level name, created when missing.
        top_new = {key.split("/", 1)[0] for key in payload}
        for name in sorted(top_new):
            link = self.path / name
            if not os.path.lexists(link):
                os.symlink(os.path.join(DATA_DIR, name), link)
        top_old = {key.split("/", 1)[0] for key in old_payload}
        for name in sorted(top_old - top_new):
            try:
                os.unlink(self.path / name)
            except FileNotFoundError:
                pass
        if before_cleanup is not None:
            before_cleanup(ts_dir, old_ts)
        if old_ts is not None:
            shutil.rmtree(self.path / old_ts, ignore_errors=True)
        return True


class PlainWriter:
    """Plain files in ``path``, rewritten in place: what a ``subPath`` mount or a copy looks like."""

    def __init__(self, path: str | os.PathLike[str], *, default_mode: int = 0o644) -> None:
        self.path = Path(path)
        self.default_mode = default_mode
        self.path.mkdir(parents=True, exist_ok=True)

    def write(self, payload: Mapping[str, bytes]) -> bool:
        """Overwrite each key's file (no ``..data``, no atomicity)."""
        for key, content in payload.items():
            target = self.path / key
            target.write_bytes(content)
            os.chmod(target, self.default_mode)
        return True
