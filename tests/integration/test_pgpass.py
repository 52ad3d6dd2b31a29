"""libpq clients rotate with no code: the Secret's ``pgpass`` key, mounted the way kubelet writes Secret
volumes (``defaultMode: 0400``) and named by ``PGPASSFILE``, is re-read by libpq on every connection.

psql (/usr/bin/psql, a new process per connection) and psycopg (one long-lived process) log in to the
IAM-checking PostgreSQL with no password in their conninfo, before and after a rotation, through a CNAME
(``spec.signingHost``). The example manifests in ``examples/pgpass`` are validated, and the sidecar script
of the non-root example is run as is.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import psycopg
import pytest
import yaml

from rdsiam.operator.target import escape_pgpass
from rdsiam.testing.kubectl import Kubectl
from rdsiam.testing.kubelet import AtomicWriter
from rdsiam.testing.postgres import PostgresServer
from rdsiam.testing.rds import IamPostgres

USER = "rdsiam_pgpass_app"
CNAME = "db.internal.example"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pgpass"
PSQL = "/usr/bin/psql"


@pytest.fixture(scope="module")
def user(postgres: PostgresServer) -> str:
    return postgres.create_user(USER)


def conninfo(rds: IamPostgres, **override: str) -> str:
    """What an app gives libpq: no password anywhere."""
    params = {"host": CNAME, "hostaddr": rds.hostaddr, "port": str(rds.port), "dbname": "postgres", "user": USER,
              "sslmode": "verify-ca", "sslrootcert": rds.ca_file, "connect_timeout": "5"}
    params.update(override)
    return " ".join(f"{k}={v}" for k, v in params.items() if v)


def psql(rds: IamPostgres, passfile: Path, **override: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = str(passfile)
    return subprocess.run([PSQL, "--no-password", "-XAtc", "select current_user", conninfo(rds, **override)],
                          env=env, capture_output=True, text=True, timeout=30, check=False)


def psycopg_login(rds: IamPostgres, **override: str) -> str:
    with psycopg.connect(conninfo(rds, **override)) as conn:  # libpq reads PGPASSFILE per connection
        row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


def issue(kubectl: Kubectl, rds: IamPostgres, ns: str) -> dict[str, str]:
    kubectl.apply({
        "apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential", "metadata": {"name": "orders", "namespace": ns},
        "spec": {"dsn": f"postgresql://{USER}@{CNAME}:{rds.port}/postgres?sslmode=verify-ca"
                        f"&sslrootcert={rds.ca_file}&hostaddr={rds.hostaddr}",
                 "signingHost": rds.endpoint}})
    return kubectl.wait("the Secret", lambda: kubectl.secret_data("orders", ns))


def mount(path: Path, data: dict[str, str], mode: int = 0o400) -> AtomicWriter:
    writer = AtomicWriter(path, default_mode=mode)
    writer.write({k: v.encode() for k, v in data.items()})
    return writer


def rotate(kubectl: Kubectl, ns: str, old: dict[str, str]) -> dict[str, str]:
    time.sleep(1.1)  # later than the last issue (one-second resolution)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kubectl.run("annotate", "-n", ns, "rdsiamcredential", "orders", f"rdsiam.io/refresh-requested-at={stamp}",
                "--overwrite")
    return kubectl.wait("a new token", lambda: (d := kubectl.secret_data("orders", ns)) and
                        d["password"] != old["password"] and d)


def last_login(rds: IamPostgres) -> Any:
    deadline = time.monotonic() + 5
    while not rds.login_log and time.monotonic() < deadline:
        time.sleep(0.01)
    return rds.login_log[-1]


def test_psql_and_psycopg_follow_rotations_through_pgpassfile(
    kubectl: Kubectl, rds: IamPostgres, operator: Any, ns: str, user: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = issue(kubectl, rds, ns)
    lines = first["pgpass"].splitlines()
    token = escape_pgpass(first["password"])
    # The client dials the CNAME (hostaddr when given alone), not the endpoint the token is signed for.
    assert lines == [f"{CNAME}:{rds.port}:postgres:{USER}:{token}",
                     f"{rds.hostaddr}:{rds.port}:postgres:{USER}:{token}"]

    volume = tmp_path / "orders-db"
    writer = mount(volume, first)
    passfile = volume / "pgpass"  # the per-key symlink into ..data, as in a pod
    assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o400 and os.path.islink(passfile)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    for var in ("PGPASSWORD", "PGHOST", "PGUSER"):
        monkeypatch.delenv(var, raising=False)

    done = psql(rds, passfile)
    assert (done.returncode, done.stdout.strip()) == (0, USER), done.stderr
    assert psycopg_login(rds) == USER
    assert last_login(rds).accepted and last_login(rds).method == "iam"

    # libpq reads the file again for every connection: a bad generation fails at once...
    writer.write({**{k: v.encode() for k, v in first.items()},
                  "pgpass": f"{CNAME}:{rds.port}:postgres:{USER}:not-a-token\n".encode()})
    done = psql(rds, passfile)
    assert done.returncode != 0
    assert "PAM authentication failed" in done.stderr  # the bad line was read: not "no password supplied"
    with pytest.raises(psycopg.OperationalError, match="PAM authentication failed"):
        psycopg_login(rds)

    # ...and the next rotation, written by kubelet, works in the same long-lived process and in new ones.
    second = rotate(kubectl, ns, first)
    assert second["pgpass"] != first["pgpass"]
    writer.write({k: v.encode() for k, v in second.items()})
    assert passfile.read_text() == second["pgpass"]
    done = psql(rds, passfile)
    assert (done.returncode, done.stdout.strip()) == (0, USER), done.stderr
    assert psycopg_login(rds) == USER

    # The hostaddr line serves a client that gives only hostaddr: libpq 17 and 18 (psycopg's and psycopg2's
    # wheels) match the line on it. (libpq 15, Debian 12's psql, looks up "localhost" instead: no line is
    # written for that, it would hand the token to any local server.)
    if psycopg.pq.version() >= 170000:
        assert psycopg_login(rds, host="", sslmode="require", sslrootcert="") == USER
    for text in (done.stderr, done.stdout):
        assert first["password"] not in text and second["password"] not in text


@pytest.mark.parametrize("mode", [0o644, 0o440])  # kubelet's default; 0400 with fsGroup set
def test_a_group_readable_password_file_is_ignored(
    kubectl: Kubectl, rds: IamPostgres, operator: Any, ns: str, user: str, tmp_path: Path, mode: int,
) -> None:
    data = issue(kubectl, rds, ns)
    mount(tmp_path / "orders-db", data, mode=mode)
    done = psql(rds, tmp_path / "orders-db" / "pgpass")
    assert done.returncode != 0
    assert "has group or world access; permissions should be u=rw (0600) or less" in done.stderr
    assert "no password supplied" in done.stderr


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-nonroot.yaml"])
def test_example_manifests_are_valid(name: str) -> None:
    for doc in _docs(name):
        kubernetes_validate.validate(doc, "1.30", strict=True)
    pod = _docs(name)[0]["spec"]["template"]["spec"]
    secret_volume = next(v for v in pod["volumes"] if "secret" in v)
    assert secret_volume["secret"]["defaultMode"] == 0o400
    app = pod["containers"][0]
    passfile = next(e["value"] for e in app["env"] if e["name"] == "PGPASSFILE")
    if name == "deployment.yaml":
        mount_path = next(m["mountPath"] for m in app["volumeMounts"] if m["name"] == secret_volume["name"])
        assert passfile == f"{mount_path}/pgpass"
        assert "fsGroup" not in pod.get("securityContext", {})  # it would make the file 0440
        assert app["securityContext"]["runAsUser"] == 0 and app["securityContext"]["capabilities"]["drop"] == ["ALL"]
    else:
        assert pod["securityContext"]["runAsNonRoot"] is True
        sidecar = pod["initContainers"][0]
        assert sidecar["restartPolicy"] == "Always"
        assert next(e["value"] for e in sidecar["env"] if e["name"] == "PGPASSFILE") == passfile


def test_nonroot_example_sidecar_copies_each_rotation_with_mode_0600(
    kubectl: Kubectl, rds: IamPostgres, operator: Any, ns: str, user: str, tmp_path: Path,
) -> None:
    sidecar = _docs("deployment-nonroot.yaml")[0]["spec"]["template"]["spec"]["initContainers"][0]
    script = sidecar["args"][0]
    first = issue(kubectl, rds, ns)
    writer = mount(tmp_path / "orders-db", first, mode=0o440)  # what kubelet writes with fsGroup
    copy_dir = tmp_path / "pgpass"
    copy_dir.mkdir()
    copy = copy_dir / "pgpass"
    env = {"PATH": os.environ["PATH"], "PGPASS_SOURCE": str(tmp_path / "orders-db" / "pgpass"),
           "PGPASSFILE": str(copy), "SYNC_SECONDS": "0.1"}
    proc = subprocess.Popen(["sh", "-c", script], env=env, start_new_session=True)
    try:
        Kubectl.wait("the first copy", lambda: copy.exists() and copy.read_text() == first["pgpass"], timeout=10)
        assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
        done = psql(rds, copy)
        assert (done.returncode, done.stdout.strip()) == (0, USER), done.stderr
        second = rotate(kubectl, ns, first)
        writer.write({k: v.encode() for k, v in second.items()})
        Kubectl.wait("the rotated copy", lambda: copy.read_text() == second["pgpass"], timeout=10)
        assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
        done = psql(rds, copy)
        assert (done.returncode, done.stdout.strip()) == (0, USER), done.stderr
        assert proc.poll() is None  # still syncing
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
