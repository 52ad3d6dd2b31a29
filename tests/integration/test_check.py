"""``rdsiam check DIR [--connect]`` against mounts written like kubelet and the IAM-checking PostgreSQL and
MySQL front doors."""

from __future__ import annotations

import datetime as dt
import io
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from rdsiam._check import main
from rdsiam.testing.kubelet import AtomicWriter, PlainWriter, secret_payload
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres
from rdsiam.testing.rds_mysql import IamMySQL
from rdsiam.testing.sts import StsServer

USER, NOT_IAM, DB = "rdsiam_check_app", "rdsiam_check_pw", "rdsiam_check_db"


@pytest.fixture(scope="module")
def mint(sts: StsServer, rds: IamPostgres, postgres: PostgresServer) -> Callable[[str], str]:
    postgres.create_user(USER, database=DB)
    postgres.create_user(NOT_IAM, rds_iam=False, database=DB, password="not-the-token")
    return sts.token_minter("rdsiam-check-tests", rds.endpoint, rds.port, rds.region)


def _payload(
    rds: IamPostgres | IamMySQL, user: str, token: str, *, expires_in: float = 900, dbname: str = DB,
    dsn: str | None = None,
) -> dict[str, bytes]:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in)
    return secret_payload(
        username=user,
        password=token,
        host=rds.endpoint,
        port=rds.port,
        dbname=dbname,
        dsn=dsn or rds.dsn(user, DB, token),  # type: ignore[union-attr]
        expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def _connect_args(rds: IamPostgres) -> list[str]:
    return ["--connect", "--sslmode", "verify-full", "--sslrootcert", rds.ca_file, "--hostaddr", rds.hostaddr]


def _assert_no_secret(output: str, token: str) -> None:
    assert token not in output
    assert token.split("X-Amz-Signature=")[1] not in output
    assert "X-Amz-Signature=" not in output


def test_good_mount_connects(tmp_path: Path, rds: IamPostgres, mint: Callable[[str], str]) -> None:
    token = mint(USER)
    AtomicWriter(tmp_path).write(_payload(rds, USER, token))
    code, out = _run(str(tmp_path), *_connect_args(rds))
    assert code == 0, out
    assert "follows rotations" in out
    assert f"for user {USER!r} at {rds.endpoint}:{rds.port}, region {rds.region}" in out
    assert "temporary (STS session) credentials" in out
    assert "expires:    " in out and "(in 14m" in out
    assert f"OK: logged in as {USER} on PostgreSQL" in out and "(TLS, login and SELECT 1 in" in out
    assert out.rstrip().endswith("OK")
    _assert_no_secret(out, token)


def test_connect_needs_no_driver(
    tmp_path: Path, rds: IamPostgres, mint: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = mint(USER)
    AtomicWriter(tmp_path).write(_payload(rds, USER, token))
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` raises ImportError
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no psql either: the stdlib wire probe logs in
    code, out = _run(str(tmp_path), *_connect_args(rds))
    assert code == 0, out
    assert f"OK: logged in as {USER} on PostgreSQL" in out and "(TLS, login and SELECT 1 in" in out
    _assert_no_secret(out, token)


def test_rejected_login_is_explained(tmp_path: Path, rds: IamPostgres, mint: Callable[[str], str]) -> None:
    token = mint(NOT_IAM)  # a valid token, but for a user without rds_iam
    AtomicWriter(tmp_path).write(_payload(rds, NOT_IAM, token))
    code, out = _run(str(tmp_path), *_connect_args(rds))
    assert code == 1
    assert "PROBLEM:    login failed:" in out and "password authentication failed" in out
    assert f'GRANT rds_iam TO "{NOT_IAM}"' in out
    _assert_no_secret(out, token)


def test_token_for_another_user(tmp_path: Path, rds: IamPostgres, mint: Callable[[str], str]) -> None:
    token = mint(NOT_IAM)
    AtomicWriter(tmp_path).write(_payload(rds, USER, token))
    code, out = _run(str(tmp_path), *_connect_args(rds))
    assert code == 1
    assert f"the token is for user {NOT_IAM!r} but the username key says {USER!r}" in out
    assert "PAM authentication failed" in out
    assert f"likely cause 1: the token is signed for user {NOT_IAM!r}, not {USER!r}" in out
    _assert_no_secret(out, token)


def test_expired_and_subpath_mounts(tmp_path: Path, rds: IamPostgres, mint: Callable[[str], str]) -> None:
    token = mint(USER)
    PlainWriter(tmp_path).write(_payload(rds, USER, token, expires_in=-300))
    code, out = _run(str(tmp_path))
    assert code == 1
    assert "no ..data symlink: this is a subPath mount or copied files" in out
    assert "expired 5m00s ago" in out
    assert "2 problem(s) found" in out
    _assert_no_secret(out, token)


def test_missing_directory(tmp_path: Path) -> None:
    code, out = _run(str(tmp_path / "nope"))
    assert code == 1 and "no credential directory at" in out


def test_dsn_disagreeing_with_password(tmp_path: Path, rds: IamPostgres, mint: Callable[[str], str]) -> None:
    token = mint(USER)
    payload = _payload(rds, USER, token)
    payload["dsn"] = rds.dsn(USER, DB, "stale").encode()
    AtomicWriter(tmp_path).write(payload)
    code, out = _run(str(tmp_path))
    assert code == 1 and "the dsn's password is not the password key" in out
    assert f"dsn:        postgresql://{USER}:***@{rds.endpoint}:{rds.port}/{DB}?sslmode=verify-full" in out
    _assert_no_secret(out, token)


# -- MySQL: the same probe and diagnosis, no driver --------------------------------------------------------

MY_USER, MY_DB = "rdsiam_check_my", "rdsiam_check_mydb"


@pytest.fixture(scope="module")
def mint_mysql(sts: StsServer, rds_mysql: IamMySQL) -> Callable[[str], str]:
    rds_mysql.create_user(MY_USER, database=MY_DB)
    return sts.token_minter("rdsiam-check-tests", rds_mysql.endpoint, rds_mysql.port, rds_mysql.region)


def _mysql_payload(rds: IamMySQL, user: str, token: str) -> dict[str, bytes]:
    query = f"ssl-mode=VERIFY_IDENTITY&ssl-ca={rds.ca_file}&hostaddr={rds.hostaddr}"
    dsn = f"mysql://{user}:{quote(token, safe='')}@{rds.endpoint}:{rds.port}/{MY_DB}?{query}"
    return _payload(rds, user, token, dbname=MY_DB, dsn=dsn)


def test_mysql_mount_connects_without_a_driver(
    tmp_path: Path, rds_mysql: IamMySQL, mint_mysql: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = mint_mysql(MY_USER)
    AtomicWriter(tmp_path).write(_mysql_payload(rds_mysql, MY_USER, token))
    monkeypatch.setitem(sys.modules, "pymysql", None)  # `import pymysql` raises ImportError
    code, out = _run(str(tmp_path), "--connect")  # ssl-mode, ssl-ca and hostaddr from the mounted DSN
    assert code == 0, out
    assert f"target:     MySQL {MY_USER}@{rds_mysql.endpoint}:{rds_mysql.port}/{MY_DB}" in out
    assert f"OK: logged in as {MY_USER} on " in out and "(TLS, login and SELECT 1 in" in out
    assert any(a.user == MY_USER and a.accepted and a.tls for a in rds_mysql.login_log)
    _assert_no_secret(out, token)


def test_mysql_token_for_another_user_is_explained(
    tmp_path: Path, rds_mysql: IamMySQL, mint_mysql: Callable[[str], str]
) -> None:
    token = mint_mysql("someone_else")
    AtomicWriter(tmp_path).write(_mysql_payload(rds_mysql, MY_USER, token))
    code, out = _run(str(tmp_path), "--connect", "--sslmode", "verify-full")  # libpq's names work too
    assert code == 1
    assert f"PROBLEM:    login failed: LoginRejected: {rds_mysql.endpoint}:{rds_mysql.port}" in out
    assert f"ERROR 1045 (28000): Access denied for user '{MY_USER}'" in out
    assert f"likely cause 1: the token is signed for user 'someone_else', not {MY_USER!r}" in out
    assert "rds-db:connect" in out and "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'" in out
    _assert_no_secret(out, token)
