"""MountedCredential against Secret volumes laid out exactly as kubelet writes them."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import rdsiam
from rdsiam._mounted import is_auth_error
from rdsiam.testing.kubelet import AtomicWriter, PlainWriter, secret_payload

NOW = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=dt.UTC).timestamp()


def payload(n: int, *, expires_in: float = 600, **over: str) -> dict[str, bytes]:
    expires = dt.datetime.fromtimestamp(NOW + expires_in, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields: dict[str, str] = {
        "username": f"user{n}",
        "password": f"orders.abc.us-east-1.rds.amazonaws.com:5432/?Action=connect&X-Amz-Signature=sig{n}",
        "host": "orders.abc.us-east-1.rds.amazonaws.com",
        "dbname": f"db{n}",
        "expires_at": expires,
    }
    fields.update(over)
    return secret_payload(port=5000 + n, **fields)  # type: ignore[arg-type]


def test_reads_every_key_of_the_current_generation(tmp_path: Path) -> None:
    AtomicWriter(tmp_path).write(payload(1))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    snap = cred.snapshot()
    assert (snap.username, snap.host, snap.port, snap.dbname) == (
        "user1",
        "orders.abc.us-east-1.rds.amazonaws.com",
        5001,
        "db1",
    )
    assert snap.password.endswith("sig1")
    assert snap.dsn.startswith("postgresql://user1:orders.abc")
    assert snap.expires_at == dt.datetime(2024, 5, 1, 12, 10, tzinfo=dt.UTC)
    assert snap.generation == os.readlink(tmp_path / "..data")
    assert snap.atomic
    assert cred.password == snap.password and cred.port == 5001 and cred.dbname == "db1"
    assert cred.expires_at == snap.expires_at


def test_repr_never_shows_the_token(tmp_path: Path) -> None:
    AtomicWriter(tmp_path).write(payload(1))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    text = repr(cred.snapshot()) + repr(cred) + str(cred.snapshot())
    assert "sig1" not in text and "user1" in text


def test_next_access_after_a_rotation_sees_the_new_generation(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    first = cred.snapshot()
    assert cred.snapshot() is first  # unchanged ..data: cached, nothing re-read
    writer.write(payload(2))
    second = cred.snapshot()
    assert second.username == "user2" and second.password.endswith("sig2")
    assert second.generation != first.generation
    assert first.password.endswith("sig1")  # a snapshot stays what it was


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    cred = rdsiam.MountedCredential(tmp_path / "orders-db")
    with pytest.raises(rdsiam.CredentialMissing, match=r"no credential directory at .*orders-db.*volume"):
        cred.snapshot()
    (tmp_path / "file").write_text("x")
    with pytest.raises(rdsiam.CredentialMissing, match="not a directory"):
        rdsiam.MountedCredential(tmp_path / "file").password  # noqa: B018


def test_missing_keys_are_listed(tmp_path: Path) -> None:
    data = payload(1)
    del data["dsn"], data["port"]
    AtomicWriter(tmp_path).write(data)
    with pytest.raises(rdsiam.CredentialIncomplete) as info:
        rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    assert info.value.missing == ("port", "dsn")
    assert "lacks key(s) port, dsn" in str(info.value)
    assert "sig1" not in str(info.value)
    assert isinstance(info.value, rdsiam.CredentialError) and info.value.path == str(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("port", "fifty", "port is not a number"), ("expires-at", "tomorrow", "not an RFC 3339")],
)
def test_malformed_values(tmp_path: Path, key: str, value: str, message: str) -> None:
    data = payload(1)
    data[key] = value.encode()
    AtomicWriter(tmp_path).write(data)
    with pytest.raises(rdsiam.CredentialIncomplete, match=message):
        rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()


def _traceback_text(exc: BaseException) -> str:
    """What an error reporter that records local variables (Sentry, Django's debug page) shows."""
    return "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())


@pytest.mark.parametrize(
    ("key", "value"),
    [("port", b"fifty"), ("expires-at", b"tomorrow"), ("username", b"\xffuser"), ("pgpass", b"\xfe")],
)
def test_errors_after_the_token_was_read_keep_it_out_of_traceback_locals(
    tmp_path: Path, key: str, value: bytes
) -> None:
    AtomicWriter(tmp_path).write({**payload(1), key: value})  # keys are read in name order
    with pytest.raises(rdsiam.CredentialIncomplete) as info:
        rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    text = _traceback_text(info.value)
    leaked = "X-Amz-Signature=sig1" in text
    assert "directory = " in text  # the reader's local variables are in the text
    assert not leaked, "the token is in the traceback's local variables"


def _deny(monkeypatch: pytest.MonkeyPatch, denied: str) -> None:
    """Make ``os.open`` of ``denied`` (a key name or a directory path) fail as for a 0400 file."""
    real_open = os.open

    def open_(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr("rdsiam._mounted.os.open", open_)


@pytest.mark.parametrize("writer", [AtomicWriter, PlainWriter])
def test_an_unreadable_key_file_says_which_and_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: type[AtomicWriter | PlainWriter]
) -> None:
    writer(tmp_path).write(payload(1))
    _deny(monkeypatch, "username")  # read after password: the token is already in memory
    with pytest.raises(rdsiam.CredentialUnreadable) as info:
        rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    message = str(info.value)
    assert f"permission denied reading {tmp_path / 'username'}" in message
    assert "defaultMode" in message and "fsGroup" in message and "runAsUser" in message
    assert isinstance(info.value, rdsiam.CredentialError) and info.value.path == str(tmp_path)
    assert info.value.filename == str(tmp_path / "username")
    text = _traceback_text(info.value)
    assert "PermissionError" not in text  # one error, no chained OSError
    leaked = "sig1" in text
    assert not leaked, "the token is in the error or its traceback's local variables"


def test_an_unreadable_directory_says_which_and_what_to_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    AtomicWriter(tmp_path).write(payload(1))
    generation = str(tmp_path / os.readlink(tmp_path / "..data"))
    _deny(monkeypatch, generation)
    with pytest.raises(rdsiam.CredentialUnreadable, match=r"permission denied reading .*defaultMode") as info:
        rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    assert info.value.filename == generation

    # A mount directory this user may not search: ``..data`` cannot even be resolved.
    def readlink(path: str) -> str:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr("rdsiam._mounted.os.readlink", readlink)
    with pytest.raises(rdsiam.CredentialUnreadable) as info:
        rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    assert info.value.filename == str(tmp_path) and "fsGroup" in str(info.value)


NOBODY = 65534


def _read_as_nobody(mount: Path) -> str:
    """What reading ``mount`` raises in a forked child that runs as uid/gid 65534 (root reads any file
    whatever its mode, and the tests run as root in CI): the exception's type and message."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(rfd)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                rdsiam.MountedCredential(mount, clock=lambda: NOW).snapshot()
                said = "read it"
            except Exception as exc:
                said = f"{type(exc).__name__}: {exc}"
            os.write(wfd, said.encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.mark.parametrize("where", ["files", "directory"])
def test_a_mount_this_user_may_not_read(where: str) -> None:
    """As in a pod with defaultMode 0400, a non-root runAsUser and no fsGroup: real file modes, read by
    another user (uid 65534: as root, a forked child that drops to it)."""
    base = Path(tempfile.mkdtemp(prefix="rdsiam-perm-"))  # not pytest's tmp_path: that is 0700, root's
    mount = base / "orders-db"
    try:
        base.chmod(0o755)
        AtomicWriter(mount, default_mode=0o000 if where == "files" else 0o644).write(payload(1))
        mount.chmod(0o000 if where == "directory" else 0o755)
        if os.geteuid() == 0:
            said = _read_as_nobody(mount)
        else:
            try:
                rdsiam.MountedCredential(mount, clock=lambda: NOW).snapshot()
                said = "read it"
            except Exception as exc:
                said = f"{type(exc).__name__}: {exc}"
        assert said.startswith("CredentialUnreadable: rdsiam: permission denied reading"), said
        assert str(mount) in said and "fsGroup" in said
    finally:
        mount.chmod(0o755)
        shutil.rmtree(base)


def test_expired_token_says_where_and_how_long_ago(tmp_path: Path) -> None:
    AtomicWriter(tmp_path).write(payload(1, expires_in=-125))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    with pytest.raises(rdsiam.CredentialExpired) as info:
        cred.password  # noqa: B018
    message = str(info.value)
    assert str(tmp_path) in message and "expired 2m05s ago" in message
    assert "kubectl describe rdsiamcredential" in message and "sig1" not in message
    assert info.value.ago == pytest.approx(125)
    # Opting out returns the expired generation; a rotation clears the error.
    assert rdsiam.MountedCredential(tmp_path, clock=lambda: NOW, allow_expired=True).username == "user1"
    AtomicWriter(tmp_path).write(payload(2))
    assert cred.username == "user2"


def test_secret_without_expires_at(tmp_path: Path) -> None:
    data = payload(1)
    del data["expires-at"]
    AtomicWriter(tmp_path).write(data)
    snap = rdsiam.MountedCredential(tmp_path).snapshot()
    assert snap.expires_at is None and snap.seconds_left() is None


def test_trailing_newlines_from_kubectl_from_file_are_dropped(tmp_path: Path) -> None:
    data = {k: v + b"\n" for k, v in payload(1).items()}
    AtomicWriter(tmp_path).write(data)
    snap = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    assert snap.port == 5001 and not snap.password.endswith("\n") and snap.username == "user1"


def test_extra_keys_are_kept(tmp_path: Path) -> None:
    AtomicWriter(tmp_path).write({**payload(1), "pgpass": b"*:*:*:*:tok"})
    snap = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    assert snap.extra == {"pgpass": "*:*:*:*:tok"}


def test_subpath_or_copied_mount_warns_once_and_still_works(tmp_path: Path) -> None:
    writer = PlainWriter(tmp_path)
    writer.write(payload(1))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    with pytest.warns(rdsiam.MountWarning, match=r"no \.\.data symlink.*will not follow rotations"):
        snap = cred.snapshot()
    assert snap.username == "user1" and not snap.atomic
    cred.snapshot()  # no second warning (filterwarnings=error would fail the test)
    rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).password  # noqa: B018  # once per path
    writer.write(payload(2))  # if something rewrites the copy, it is noticed
    assert cred.username == "user2"


def test_expired_subpath_mount_names_subpath_as_the_cause(tmp_path: Path) -> None:
    PlainWriter(tmp_path).write(payload(1, expires_in=-3600))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    with pytest.warns(rdsiam.MountWarning):
        with pytest.raises(rdsiam.CredentialExpired, match=r"expired 1h00m ago.*subPath"):
            cred.snapshot()


def test_a_generation_deleted_mid_read_is_read_again_from_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    stale = writer.current()
    writer.write(payload(2))  # swaps ..data and deletes the directory `stale`
    assert stale is not None and not (tmp_path / stale).exists()
    real_readlink = os.readlink
    calls: list[str] = []

    def racing_readlink(path: str) -> str:
        calls.append(path)
        # The reader resolved ..data just before kubelet swapped it.
        return stale if len(calls) == 1 else real_readlink(path)

    monkeypatch.setattr("rdsiam._mounted.os.readlink", racing_readlink)
    snap = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW).snapshot()
    assert snap.username == "user2" and snap.password.endswith("sig2") and len(calls) == 2


def test_partial_listing_of_a_directory_being_removed_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    old = writer.current()
    assert old is not None

    def half_removed(stage_new: str, stage_old: str | None) -> None:
        # The reader lists the old directory while kubelet's RemoveAll is half done.
        os.unlink(tmp_path / old / "port")
        cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
        monkeypatch.setattr(cred, "_snap", None)
        seen.append(cred._load_atomic(old))

    seen: list[rdsiam.Snapshot] = []
    writer.write(payload(2), before_cleanup=half_removed)
    assert seen[0].username == "user2"


_ROTATOR = """
import sys
from rdsiam.testing.kubelet import AtomicWriter
sys.path.insert(0, sys.argv[3])
from test_mounted import payload
writer = AtomicWriter(sys.argv[1])
for n in range(1, int(sys.argv[2]) + 1):
    writer.write(payload(n % 997))
"""


@pytest.fixture
def tmpfs_path(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs when there is one: kubelet keeps Secret volumes on tmpfs."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="rdsiam-test-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_concurrent_readers_never_see_two_generations_mixed(tmpfs_path: Path) -> None:
    """Kubelet (here a separate process, as in a pod) rotates thousands of times while
    threads read; every snapshot holds the keys of exactly one generation."""
    rotations = 2000
    writer = AtomicWriter(tmpfs_path)
    writer.write(payload(0))
    cred = rdsiam.MountedCredential(tmpfs_path, clock=lambda: NOW)
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[set[int]] = []

    def reader() -> None:
        generations: set[int] = set()
        own = rdsiam.MountedCredential(tmpfs_path, clock=lambda: NOW)
        try:
            while not done.is_set():
                for source in (cred, own):
                    s = source.snapshot()
                    n = int(s.username.removeprefix("user"))
                    assert s.password.endswith(f"sig{n}") and s.dbname == f"db{n}"
                    assert s.port == 5000 + n and f"sig{n}@" in s.dsn
                    generations.add(n)
                time.sleep(0.00005)  # leave the writer a CPU on small machines
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        seen.append(generations)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _ROTATOR, str(tmpfs_path), str(rotations), str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        done.set()
        for t in threads:
            t.join()
    assert proc.returncode == 0, proc.stderr
    assert not errors, errors[0]
    assert all(len(g) > 20 for g in seen), [len(g) for g in seen]
    assert len(os.listdir(tmpfs_path)) == len(payload(0)) + 2  # keys, ..data, one ts dir
    assert cred.username == f"user{rotations % 997}"


def test_with_retry_uses_a_newer_generation_after_a_rejected_login(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    used: list[str] = []

    def connect(snap: rdsiam.Snapshot) -> str:
        used.append(snap.username)
        if snap.username == "user1":
            writer.write(payload(2))  # kubelet swapped while the login was in flight
            raise RuntimeError('FATAL:  PAM authentication failed for user "user1"')
        return "connected"

    assert cred.with_retry(connect) == "connected"
    assert used == ["user1", "user2"]


def test_with_retry_reraises_without_a_newer_generation_or_on_other_errors(tmp_path: Path) -> None:
    AtomicWriter(tmp_path).write(payload(1))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)
    calls = 0

    def rejected(snap: rdsiam.Snapshot) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("password authentication failed")

    with pytest.raises(RuntimeError, match="password authentication failed"):
        cred.with_retry(rejected)
    assert calls == 1

    def refused(snap: rdsiam.Snapshot) -> None:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(ConnectionRefusedError):
        cred.with_retry(refused)


async def test_with_retry_async(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path)
    writer.write(payload(1))
    cred = rdsiam.MountedCredential(tmp_path, clock=lambda: NOW)

    class Rejected(Exception):
        sqlstate = "28P01"

    async def connect(snap: rdsiam.Snapshot) -> str:
        if snap.username == "user1":
            writer.write(payload(2))
            raise Rejected()
        return snap.username

    assert await cred.with_retry_async(connect) == "user2"


class _PgError(Exception):
    def __init__(self, msg: str, code: str) -> None:
        super().__init__(msg)
        self.pgcode = code


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError('FATAL:  PAM authentication failed for user "app"'), True),
        (_PgError("x", "28000"), True),
        (_PgError("x", "57P03"), False),
        (RuntimeError(1045, "Access denied for user 'app'@'10.0.0.1' (using password: YES)"), True),
        (RuntimeError("server closed the connection unexpectedly"), False),
        (TimeoutError("timed out"), False),
    ],
)
def test_is_auth_error(exc: BaseException, expected: bool) -> None:
    assert is_auth_error(exc) is expected


def test_kubelet_layout(tmp_path: Path) -> None:
    writer = AtomicWriter(tmp_path, default_mode=0o400)
    assert writer.write(payload(1))
    assert not writer.write(payload(1))  # unchanged content is not rewritten
    first = writer.current()
    assert first is not None and first.startswith("..20") and len(first.split(".")[-1]) > 0
    assert writer.write({**payload(2), "pgpass": b"x"})
    second = writer.current()
    assert second != first and not (tmp_path / str(first)).exists()
    names = sorted(os.listdir(tmp_path))
    assert names == sorted([*payload(2), "pgpass", "..data", str(second)])
    assert os.readlink(tmp_path / "password") == "..data/password"
    assert os.stat(tmp_path / str(second) / "password").st_mode & 0o777 == 0o400
    assert os.stat(tmp_path / str(second)).st_mode & 0o777 == 0o755
    writer.write(payload(3))  # a key that disappears loses its symlink
    assert not os.path.lexists(tmp_path / "pgpass")
