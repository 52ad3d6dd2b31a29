"""A real MariaDB server in a temporary directory, for the MySQL side of the in-pod library.

::

    with MariaDBServer() as db:                        # loopback port + unix socket, TLS on
        db.create_user("app", "pw1", database="orders")  # REQUIRE SSL, like RDS IAM users
        pymysql.connect(host=db.host, port=db.port, user="app", password="pw1",
                        ssl_ca=db.ca_file, database="orders")
        db.set_password("app", "pw2")                  # a rotation

Needs the Debian package ``mariadb-server`` (``mariadbd`` and ``mariadb-install-db``);
:class:`MariaDBUnavailable` says so when they are missing. Administrative statements run as
``root`` over the unix socket with PyMySQL. The TLS certificate is made by a CA generated at
start (``ca_file``) and names ``localhost`` and ``127.0.0.1``.

RDS MySQL's IAM plugin asks clients for ``mysql_clear_password``; MariaDB has no such plugin
without PAM configuration in ``/etc``, so users here use ``mysql_native_password`` and the
rotation is a password change (``ALTER USER``) between two generations of the mount. For IAM
tokens over ``mysql_clear_password``, put :class:`rdsiam.testing.rds_mysql.IamMySQL` in front.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rdsiam.testing.rds import write_server_pki

__all__ = ["MariaDBServer", "MariaDBUnavailable"]

_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/libexec")


class MariaDBUnavailable(RuntimeError):
    """MariaDB is not installed or would not start."""


def _which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class MariaDBServer:
    """``mariadbd`` on ``127.0.0.1:port`` and a unix socket, data in a temporary directory."""

    def __init__(self, *, tls: bool = True, startup_timeout: float = 60.0) -> None:
        self.tls = tls
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.ca_file = ""
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        assert self.directory is not None
        return str(self.directory / "mysqld.sock")

    def start(self) -> MariaDBServer:
        server = _which("mariadbd", "mysqld")
        install = _which("mariadb-install-db", "mysql_install_db")
        if server is None or install is None:
            raise MariaDBUnavailable(
                "MariaDB is not installed: apt-get install mariadb-server "
                "(needs mariadbd and mariadb-install-db)"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="rdsiam-mariadb-"))
        os.chmod(self.directory, 0o755)
        data = self.directory / "data"
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        proc = subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *as_root,
            ],
            capture_output=True,
            timeout=120,
        )
        if proc.returncode != 0:
            self.stop()
            raise MariaDBUnavailable(
                f"mariadb-install-db failed: {proc.stderr.decode(errors='replace')[-2000:]}"
            )
        self.port = _free_port()
        args = [
            server,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.directory / 'mysqld.pid'}",
            f"--log-error={self.directory / 'error.log'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
            "--skip-log-bin",
            *as_root,
        ]
        if self.tls:
            self.ca_file, cert, key = write_server_pki(self.directory, "localhost", "rdsiam test MariaDB CA")
            args += [f"--ssl-ca={self.ca_file}", f"--ssl-cert={cert}", f"--ssl-key={key}"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                self.execute("SELECT 1")
                break
            except Exception as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log_tail()
                    self.stop()
                    raise MariaDBUnavailable(f"mariadbd did not start ({exc}): {log}") from None
                time.sleep(0.1)
        return self

    def log_tail(self, size: int = 2000) -> str:
        if self.directory is None:
            return ""
        try:
            return (self.directory / "error.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> MariaDBServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def execute(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement as root over the unix socket; returns its rows."""
        import pymysql.connections

        conn = pymysql.connections.Connection(
            unix_socket=self.socket, user="root", password="", connect_timeout=5
        )
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                rows = list(cur.fetchall())
            conn.commit()
            return rows
        finally:
            conn.close()

    def create_user(
        self, name: str, password: str, *, database: str | None = None, require_ssl: bool = True
    ) -> str:
        """``CREATE USER name@'%' IDENTIFIED BY password [REQUIRE SSL]`` (+ a database it owns)."""
        require = " REQUIRE SSL" if require_ssl and self.tls else ""
        self.execute(f"CREATE OR REPLACE USER {_quote(name)}@'%' IDENTIFIED BY {_quote(password)}{require}")
        if database is not None:
            self.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            self.execute(f"GRANT ALL ON `{database}`.* TO {_quote(name)}@'%'")
        return name

    def set_password(self, name: str, password: str) -> None:
        """``ALTER USER``: the old password stops working for new logins, sessions stay open."""
        self.execute(f"ALTER USER {_quote(name)}@'%' IDENTIFIED BY {_quote(password)}")
