"""Pure parts of the MySQL login probe: packets, the DSN's TLS settings, and the diagnosis of MySQL refusals."""

from __future__ import annotations

import struct

import pytest

from rdsiam import _mysqlwire as m
from rdsiam._diagnose import Context, diagnose

# MariaDB 10.11's greeting as captured on loopback (header included).
MARIADB_GREETING = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100040000005846367a2854517500feff"
    "080200ff81150000000000001d0000007b2c633064293b307d472832006d7973716c5f6e61746976655f70617373776f726400"
)
ENDPOINT = "orders.cluster-abc123def456.us-east-1.rds.amazonaws.com"


def test_a_real_greeting_parses() -> None:
    length, seq = m.split_packet(MARIADB_GREETING[:4])
    assert (length, seq) == (len(MARIADB_GREETING) - 4, 0)
    hello = m.parse_handshake(MARIADB_GREETING[4:])
    assert hello.server_version == "10.11.19-MariaDB-0+deb12u1"  # the "5.5.5-" compatibility prefix dropped
    assert hello.connection_id == 4
    assert hello.auth_plugin == "mysql_native_password"
    assert len(hello.scramble) == 20
    assert hello.capabilities & m.NEEDED == m.NEEDED and hello.capabilities & m.CLIENT_SSL


def test_greetings_that_are_not_mysql_are_refused() -> None:
    with pytest.raises(m.ProtocolError, match="protocol version"):
        m.parse_handshake(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(m.ProtocolError):
        m.parse_handshake(b"\x0a8.0.36")  # no NUL after the version


def test_packets_carry_length_and_sequence_id() -> None:
    assert m.packet(3, b"abc") == b"\x03\x00\x00\x03abc"
    assert m.packet(256, b"") == b"\x00\x00\x00\x00"  # the id wraps at one byte
    assert m.split_packet(b"\x10\x02\x00\x07") == (0x0210, 7)


def test_err_packets_parse_as_the_mysql_client_prints_them() -> None:
    payload = b"\xff" + struct.pack("<H", 1045) + b"#28000Access denied for user 'app'@'10.0.0.1' (using password: YES)"
    err = m.parse_error(payload)
    assert (err.code, err.sqlstate) == (1045, "28000")
    assert str(err) == "ERROR 1045 (28000): Access denied for user 'app'@'10.0.0.1' (using password: YES)"
    early = m.parse_error(b"\xff" + struct.pack("<H", 1040) + b"Too many connections")  # before protocol 4.1
    assert (early.code, early.sqlstate, str(early)) == (1040, "", "ERROR 1040: Too many connections")
    with pytest.raises(m.ProtocolError):
        m.parse_error(b"\x00\x00\x00")


def test_auth_switch_requests_parse() -> None:
    assert m.parse_auth_switch(b"\xfemysql_clear_password\0") == ("mysql_clear_password", b"")
    assert m.parse_auth_switch(b"\xfecaching_sha2_password\0" + b"s" * 20 + b"\0") == (
        "caching_sha2_password", b"s" * 20)
    assert m.parse_auth_switch(b"\xfe") == ("mysql_old_password", b"")


def test_ssl_request_and_handshake_response_layout() -> None:
    hello = m.parse_handshake(MARIADB_GREETING[4:])
    flags = m.client_flags(hello.capabilities, database="orders", tls=True)
    assert flags & m.CLIENT_SSL and flags & m.CLIENT_CONNECT_WITH_DB and flags & m.NEEDED == m.NEEDED
    request = m.ssl_request(flags)
    assert len(request) == 32 and struct.unpack_from("<IIB", request) == (flags, m.MAX_PACKET, m.UTF8MB4)
    assert request[9:] == b"\0" * 23
    response = m.handshake_response(flags, "app_user", "orders", "mysql_native_password")
    assert response[:32] == request  # the SSLRequest is the response's fixed part
    assert response[32:] == b"app_user\0" + b"\x00" + b"orders\0" + b"mysql_native_password\0"  # no answer sent
    no_db = m.client_flags(hello.capabilities, database="", tls=False)
    assert not no_db & (m.CLIENT_CONNECT_WITH_DB | m.CLIENT_SSL)
    assert m.handshake_response(no_db, "u", "", "p")[32:] == b"u\0\x00p\0"


def test_eof_packets_are_told_from_rows() -> None:
    assert m.is_eof(b"\xfe\x00\x00\x02\x00")
    assert not m.is_eof(b"\x011")  # the row "1"
    assert not m.is_eof(b"\xfe" + b"\x00" * 8)  # a length-encoded integer in a row, not an EOF


@pytest.mark.parametrize("options,expected", [
    ({}, ("PREFERRED", None)),
    ({"ssl-mode": "required"}, ("REQUIRED", None)),
    ({"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": "/ca.pem"}, ("VERIFY_IDENTITY", "/ca.pem")),
    ({"ssl-mode": "verify-ca", "ssl-ca": "/ca.pem"}, ("VERIFY_CA", "/ca.pem")),
    ({"sslmode": "verify-full", "sslrootcert": "/ca.pem"}, ("VERIFY_IDENTITY", "/ca.pem")),  # libpq's names
    ({"sslmode": "disable"}, ("DISABLED", None)),
    ({"ssl_ca": "/ca.pem"}, ("REQUIRED", "/ca.pem")),  # PyMySQL verifies the CA given: require + CA = verify-ca
    ({"ssl_ca": "/ca.pem", "ssl_verify_identity": "true"}, ("VERIFY_IDENTITY", "/ca.pem")),
])
def test_tls_settings_from_the_dsn(options: dict[str, str], expected: tuple[str, str | None]) -> None:
    assert m.tls_settings(options) == expected


def test_mysql_modes_follow_libpqs_tls_rules() -> None:
    assert [m.libpq_mode(x) for x in ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")] == [
        "disable", "prefer", "require", "verify-ca", "verify-full"]
    assert m.libpq_mode("BOGUS") == "require"  # never weaker than asked


# -- the diagnosis of MySQL refusals ---------------------------------------------------------------------


def ctx(**kw: object) -> Context:
    base: dict[str, object] = {"user": "app_user", "host": ENDPOINT, "port": 3306, "database": "orders",
                               "region": "us-east-1", "signing_host": ENDPOINT, "sslmode": "REQUIRED",
                               "auth": "cleartext", "engine": "mysql", "tls": True}
    return Context(**{**base, **kw})  # type: ignore[arg-type]


DENIED = "ERROR 1045 (28000): Access denied for user 'app_user'@'10.0.0.1' (using password: YES)"


def test_1045_after_the_token_gives_the_iam_causes() -> None:
    d = diagnose("server", "1045", DENIED, ctx(), stage="auth")
    assert d.reason == "LoginRejected" and DENIED in d.summary and f"{ENDPOINT}:3306" in d.summary
    assert "rds-db:connect" in d.causes[0] and "dbuser:RESOURCE_ID/app_user" in d.causes[0]
    assert "IAM database authentication is disabled" in d.causes[1]
    assert d.causes[-1].startswith("less likely") and "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'" in d.causes[-1]
    assert not any("rds_iam" in c for c in d.causes)
    other = "orders.cluster-zzz999.us-east-1.rds.amazonaws.com"
    d = diagnose("server", "1045", DENIED, ctx(signing_host=other, region="eu-west-1"), stage="auth")
    assert d.causes[0].startswith("the token is signed for region eu-west-1")
    assert "spec.signingHost" in d.causes[1] and other in d.causes[1]


@pytest.mark.parametrize("kind,code,message,auth", [
    ("server", "1045", "ERROR 1045 (28000): Access denied for user 'app_user'@'h' (using password: NO)",
     "mysql_native_password"),  # the server checked its own method: the token was never asked for
    ("password", "", "it asked for caching_sha2_password authentication, not for the token in cleartext",
     "caching_sha2_password"),
])
def test_a_user_the_server_does_not_treat_as_iam(kind: str, code: str, message: str, auth: str) -> None:
    d = diagnose(kind, code, message, ctx(auth=auth), stage="auth")
    assert d.reason == "LoginRejected" and "did not treat 'app_user' as an IAM user" in d.summary
    assert "CREATE USER 'app_user'@'%' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'" in d.causes[0]


def test_no_tls_and_a_1045_without_tls_read_as_tls_required() -> None:
    d = diagnose("no-tls", "", "the server asked for the password in cleartext (mysql_clear_password) over an "
                 "unencrypted connection; the token was not sent", ctx(sslmode="DISABLED", tls=False), stage="auth")
    assert d.reason == "TLSRequired" and "the DSN sets ssl-mode=DISABLED" in d.causes[0]
    assert "set ssl-mode=REQUIRED, or VERIFY_IDENTITY with ssl-ca" in d.causes[0]
    plain = DENIED.replace("YES", "NO")
    d = diagnose("server", "1045", plain, ctx(sslmode="PREFERRED", tls=False, auth="mysql_native_password"))
    assert d.reason == "TLSRequired" and "REQUIRE SSL" in d.causes[-1]
    d = diagnose("server", "3159", "ERROR 3159 (HY000): Connections using insecure transport are prohibited "
                 "while --require_secure_transport=ON.", ctx(tls=False))
    assert d.reason == "TLSRequired"


def test_database_errors_and_the_rest() -> None:
    d = diagnose("server", "1049", "ERROR 1049 (42000): Unknown database 'orders'", ctx(), stage="auth")
    assert d.reason == "LoginRejected" and d.summary.startswith("The IAM login as 'app_user' worked")
    assert "the database 'orders' does not exist" in d.causes[0]
    d = diagnose("server", "1044", "ERROR 1044 (42000): Access denied for user 'app_user'@'%' to database 'orders'",
                 ctx(auth="mysql_native_password"))
    assert d.reason == "LoginRejected" and d.summary.startswith("The login as") and "GRANT" in d.causes[0]
    assert diagnose("server", "1040", "ERROR 1040: Too many connections", ctx()).reason == "VerifyFailed"
    d = diagnose("protocol", "", "unexpected greeting", ctx(), stage="startup")
    assert "did not speak the MySQL protocol" in d.summary and "spec.engine: postgres" in d.causes[0]


@pytest.mark.parametrize("kind,stage,reason,fragment", [
    ("tls", "tls", "TLSError", "ssl-mode=VERIFY_IDENTITY checks that the certificate names"),
    ("refused", "connect", "ConnectionRefused", "RDS MySQL defaults to 3306"),
    ("timeout", "startup", "ConnectTimeout", "port 3306 is not a MySQL server"),
    ("network", "auth", "NetworkError", "passes MySQL's TLS negotiation through"),
])
def test_shared_kinds_use_mysql_words(kind: str, stage: str, reason: str, fragment: str) -> None:
    d = diagnose(kind, "", "something", ctx(sslmode="VERIFY_IDENTITY"), stage=stage)
    assert d.reason == reason and fragment in d.message
    assert "sslmode" not in d.message and "PostgreSQL" not in d.message
