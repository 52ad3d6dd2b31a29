"""The pure parts of ``rdsiam proxy``: listen addresses, TLS settings from the mount, the wire messages it
writes and reads, the metrics page; and that it imports only the standard library."""

from __future__ import annotations

import datetime as dt
import struct
import subprocess
import sys

import pytest

from rdsiam import _mysqlwire
from rdsiam._mounted import Snapshot
from rdsiam._proxy import Metrics, is_loopback, parse_listen, upstream_settings
from rdsiam._proxy_mysql import greeting, parse_response, raw_greeting_fields, upstream_flags
from rdsiam._proxy_pg import error_response, parse_startup, startup_message

TOKEN = "db.example:5432/?Action=connect&DBUser=app&X-Amz-Signature=" + "ab" * 32


def snap(dsn: str, port: int = 5432) -> Snapshot:
    return Snapshot(path="/m", generation="..g", username="app", password=TOKEN, host="db.example", port=port,
                    dbname="orders", dsn=dsn, expires_at=dt.datetime.now(dt.UTC))


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:6432", ("127.0.0.1", 6432)), ("localhost", ("localhost", 5432)), (":7000", ("127.0.0.1", 7000)),
    ("7000", ("127.0.0.1", 7000)), ("[::1]:6000", ("::1", 6000)), ("0.0.0.0:5432", ("0.0.0.0", 5432)),
])
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text, 5432) == expected


def test_only_loopback_counts_as_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("db.example")


def test_tls_follows_the_dsn_and_never_allows_plain_tcp() -> None:
    up = upstream_settings(snap("postgresql://app:x@db.example:5432/orders?sslmode=verify-ca&sslrootcert=/ca.pem"
                                "&hostaddr=10.0.0.5"), engine="postgres")
    assert (up.sslmode, up.sslrootcert, up.hostaddr) == ("verify-ca", "/ca.pem", "10.0.0.5")
    assert upstream_settings(snap("postgresql://app:x@db.example/orders"), engine="postgres").sslmode == "verify-full"
    assert upstream_settings(snap("postgresql://app:x@db/o?sslmode=prefer"), engine="postgres").sslmode == "require"
    over = upstream_settings(snap("postgresql://app:x@db/o?sslmode=disable"), engine="postgres", sslmode="verify-full",
                             sslrootcert="/rds.pem")
    assert (over.sslmode, over.sslrootcert) == ("verify-full", "/rds.pem")
    my = upstream_settings(snap("mysql://app:x@db.example:3306/orders?ssl-ca=/ca.pem", 3306), engine="mysql")
    assert (my.sslmode, my.shown_mode, my.sslrootcert) == ("verify-full", "VERIFY_IDENTITY", "/ca.pem")
    plain = upstream_settings(snap("mysql://app:x@db/o?ssl-mode=PREFERRED", 3306), engine="mysql")
    assert plain.sslmode == "require"


def test_the_startup_message_names_the_mounts_user_and_database_and_keeps_the_rest() -> None:
    client = {"user": "me", "database": "mine", "application_name": "orders", "options": "-c work_mem=64MB"}
    message = startup_message(196608, "app", "orders", client)
    (length, version) = struct.unpack("!ii", message[:8])
    assert length == len(message) and version == 196608
    assert parse_startup(message[8:]) == {"user": "app", "database": "orders", "application_name": "orders",
                                          "options": "-c work_mem=64MB"}


def test_error_response_fields() -> None:
    message = error_response("28000", "rdsiam proxy: refused", "Check: x.", "hint")
    assert message[:1] == b"E" and struct.unpack("!i", message[1:5])[0] == len(message) - 1
    assert b"SFATAL\0" in message and b"C28000\0" in message and b"Mrdsiam proxy: refused\0" in message
    assert message.endswith(b"Hhint\0\0")


def test_the_mysql_greeting_parses_back_and_the_client_answer_is_passed_on() -> None:
    caps = _mysqlwire.NEEDED | _mysqlwire.CLIENT_CONNECT_ATTRS | _mysqlwire.CLIENT_CONNECT_WITH_DB | 0x01000000
    hello = greeting(b"5.5.5-10.11.6-MariaDB", 42, caps, 45, b"A" * 20)
    parsed = _mysqlwire.parse_handshake(hello)
    assert (parsed.connection_id, parsed.capabilities, parsed.auth_plugin) == (42, caps, "mysql_native_password")
    assert raw_greeting_fields(hello) == (b"5.5.5-10.11.6-MariaDB", 45)
    attrs = b"\x0b\x04_pid\x0512345"
    client_caps = caps | _mysqlwire.CLIENT_SSL
    answer = _mysqlwire.handshake_response(client_caps, "whoever", "whatever", "mysql_native_password", b"x" * 20,
                                           max_packet=1 << 30, charset=33, attrs=attrs)
    response = parse_response(answer)
    assert (response.capabilities, response.max_packet, response.charset, response.attrs) == (
        client_caps, 1 << 30, 33, attrs)
    flags = upstream_flags(response.capabilities, caps, database="orders")
    assert flags & _mysqlwire.CLIENT_SSL and flags & _mysqlwire.CLIENT_CONNECT_WITH_DB
    assert flags & 0x01000000 and not flags & 0x20  # what both offered; never compression


def test_metrics_name_results_not_clients() -> None:
    m = Metrics()
    m.login("ok", 0.01)
    m.login("LoginRejected", 0.02)
    m.bytes["server_to_client"] += 10
    text = m.render()
    assert 'rdsiam_proxy_logins_total{result="LoginRejected"} 1' in text
    assert 'rdsiam_proxy_bytes_total{direction="server_to_client"} 10' in text
    assert "rdsiam_proxy_login_seconds_count 2" in text
    assert all(line.startswith(("# ", "rdsiam_proxy_")) for line in text.splitlines())


def test_the_proxy_imports_only_the_standard_library() -> None:
    code = ("import sys, rdsiam._proxy, rdsiam._proxy_pg, rdsiam._proxy_mysql, rdsiam.cli; "
            "rdsiam.cli.build_parser(); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('kopf', 'boto3', 'botocore', 'pydantic', 'kubernetes', 'prometheus_client', 'aiohttp') "
            "or m.startswith('rdsiam.operator')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
