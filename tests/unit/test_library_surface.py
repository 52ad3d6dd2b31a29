"""The in-pod library's surface: what ``import rdsiam`` costs and names, and the pure helpers
of ``rdsiam check``."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rdsiam
from rdsiam._check import diagnose, parse_token, redact
from rdsiam.testing.kubelet import AtomicWriter, secret_payload

TOKEN = (
    "orders.cluster-abc.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app_user"
    "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE%2F20240501%2Fus-east-1%2Frds-db%2Faws4_request"
    "&X-Amz-Date=20240501T120000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-Signature=0123456789abcdef"
)

THIRD_PARTY = ["psycopg", "psycopg2", "psycopg_pool", "sqlalchemy", "asyncpg", "django", "pymysql", "boto3",
               "botocore", "kopf", "pydantic", "kubernetes", "rdsiam.operator", "rdsiam.testing"]  # fmt: skip


def _imported_after(code: str) -> dict[str, bool]:
    probe = f"import sys, json\n{code}\nprint(json.dumps({{m: m in sys.modules for m in {THIRD_PARTY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded: dict[str, bool] = json.loads(out)
    return loaded


@pytest.mark.parametrize(
    "code",
    [
        "import rdsiam",
        "import rdsiam.integrations.psycopg, rdsiam.integrations.psycopg2, rdsiam.integrations.sqlalchemy",
        "import rdsiam.integrations.asyncpg, rdsiam.integrations.pymysql, rdsiam.integrations.django",
        "import rdsiam._check",
    ],
)
def test_imports_pull_in_no_driver_and_no_operator_code(code: str) -> None:
    loaded = _imported_after(code)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


def test_public_names() -> None:
    assert set(rdsiam.__all__) == {
        "CredentialError",
        "CredentialExpired",
        "CredentialIncomplete",
        "CredentialMissing",
        "CredentialUnreadable",
        "MountWarning",
        "MountedCredential",
        "Snapshot",
        "__version__",
    }
    assert issubclass(rdsiam.CredentialExpired, rdsiam.CredentialError)
    assert issubclass(rdsiam.CredentialUnreadable, rdsiam.CredentialError)
    assert rdsiam.__version__


def test_parse_token() -> None:
    info = parse_token(TOKEN)
    assert info is not None
    assert (info.host, info.port, info.db_user, info.region, info.service) == (
        "orders.cluster-abc.us-east-1.rds.amazonaws.com",
        5432,
        "app_user",
        "us-east-1",
        "rds-db",
    )
    assert info.session and info.expires_at == dt.datetime(2024, 5, 1, 12, 15, tzinfo=dt.UTC)
    assert parse_token("hunter2") is None


def test_redact() -> None:
    text = f"failed for postgresql://app:{TOKEN}@host and X-Amz-Signature=deadbeef&x=1"
    out = redact(text, TOKEN)
    assert TOKEN not in out and "deadbeef" not in out and "0123456789abcdef" not in out
    assert "<token>" in out and "X-Amz-Signature=<redacted>&x=1" in out


def test_diagnose_is_extensible_and_never_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rdsiam import _check

    AtomicWriter(tmp_path).write(
        secret_payload(
            username="other_user",
            password=TOKEN,
            host="orders.cluster-abc.us-east-1.rds.amazonaws.com",
            port=5432,
            dbname="orders",
        )  # fmt: skip
    )
    snap = rdsiam.MountedCredential(tmp_path, allow_expired=True).snapshot()
    causes = diagnose('FATAL:  PAM authentication failed for user "other_user"', snap)
    assert causes[0] == "the token is signed for user 'app_user', not 'other_user'"
    assert any("expired" in c for c in causes) and any("GRANT rds_iam" in c for c in causes)
    monkeypatch.setattr(_check, "DIAGNOSERS", [*_check.DIAGNOSERS, lambda err, s: [f"custom {s.password}"]])
    assert diagnose("whatever", snap) == ["custom <token>"]


def test_integrations_refuse_a_password(tmp_path: Path) -> None:
    from rdsiam.integrations import asyncpg as rapg
    from rdsiam.integrations import psycopg as rp

    with pytest.raises(TypeError, match="read from the mounted Secret"):
        rp.connect_kwargs(tmp_path, password="x")
    with pytest.raises(TypeError, match="read from the mounted Secret"):
        rapg.connect_kwargs(tmp_path, password="x")


def test_psycopg_kwargs_are_fresh_per_call(tmp_path: Path) -> None:
    from rdsiam.integrations import psycopg as rp

    writer = AtomicWriter(tmp_path)
    writer.write(secret_payload(username="a", password="t1", host="h", port=5432, dbname="d"))
    kwargs = rp.connect_kwargs(tmp_path, hostaddr="127.0.0.1", dbname="override")
    first = kwargs()
    expected = {"user": "a", "host": "h", "port": 5432, "dbname": "override", "hostaddr": "127.0.0.1"}
    assert first == {**expected, "password": "t1"}
    first["password"] = "mutated by a caller"
    writer.write(secret_payload(username="a", password="t2", host="h", port=5432, dbname="d"))
    assert kwargs()["password"] == "t2"


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_host_given_in_the_conninfo_wins_over_the_mounts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: str,
) -> None:
    """Settings in the conninfo/DSN string win like keyword arguments do (an RDS Proxy named there is
    dialled, not silently the mount's host); keywords win over the string; a password in it is refused."""
    import psycopg
    import psycopg2

    from rdsiam.integrations import psycopg as rp
    from rdsiam.integrations import psycopg2 as rp2

    AtomicWriter(tmp_path).write(secret_payload(username="a", password="t1", host="h", port=5432, dbname="d"))
    seen: list[dict[str, object]] = []

    def capture(*args: object, **kwargs: object) -> str:
        assert not any(args), args  # everything as keywords: nothing left for libpq to merge silently
        seen.append(kwargs)
        return "connection"

    if driver == "psycopg":
        monkeypatch.setattr(psycopg.Connection, "connect", capture)
        connect = rp.connect
    else:
        monkeypatch.setattr(psycopg2, "connect", capture)
        connect = rp2.connect
    assert connect(tmp_path, "host=proxy.example port=6432 sslmode=require", dbname="kw") == "connection"
    assert seen[-1] == {"user": "a", "host": "proxy.example", "port": "6432", "dbname": "kw", "sslmode": "require",
                        "password": "t1"}
    with pytest.raises(TypeError, match="read from the mounted Secret"):
        connect(tmp_path, "host=proxy.example password=frozen")
