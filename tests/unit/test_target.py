"""Connection target: DSN parsing, inference, rebuild, and round trips through real parsers."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from rdsiam.operator.target import (
    TargetError,
    build_dsn,
    check_hostname,
    parse_dsn,
    pgpass_line,
    quote_all,
    region_of,
    resolve,
    split_pgpass,
)

HOST = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"
TOKEN = (
    f"{HOST}:5432/?Action=connect&DBUser=app%40x&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIA%2F20260101%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20260101T000000Z"
    "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQo%2B%2Fabc%3D%3D"
    "&X-Amz-Signature=" + "ab" * 32
)


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("mydb.abcdefghijkl.us-east-1.rds.amazonaws.com", "us-east-1"),
        ("c.cluster-abc.eu-west-2.rds.amazonaws.com", "eu-west-2"),
        ("c.cluster-ro-abc.ap-southeast-1.rds.amazonaws.com", "ap-southeast-1"),
        ("c.cluster-custom-abc.ca-central-1.rds.amazonaws.com", "ca-central-1"),
        ("p.proxy-abc.us-west-2.rds.amazonaws.com", "us-west-2"),
        ("e.endpoint.proxy-abc.us-west-2.rds.amazonaws.com", "us-west-2"),
        ("db.abc.cn-north-1.rds.amazonaws.com.cn", "cn-north-1"),
        ("db.abc.us-gov-west-1.rds.amazonaws.com", "us-gov-west-1"),
        ("DB.ABC.US-EAST-1.RDS.AMAZONAWS.COM", "us-east-1"),
        ("db.example.com", None),
        ("10.0.0.1", None),
        ("rds.amazonaws.com", None),
    ],
)
def test_region_inference(host: str, region: str | None) -> None:
    assert region_of(host) == region


def test_dsn_password_is_dropped_and_explicit_fields_win() -> None:
    t = resolve(
        dsn=f"postgresql://dsn_user:$TOKEN@{HOST}:5432/orders?sslmode=require", username="app_user", database="other"
    )
    assert (t.username, t.database, t.host, t.port, t.region) == ("app_user", "other", HOST, 5432, "us-east-1")
    assert t.options == (("sslmode", "require"),)
    assert "$TOKEN" not in repr(t)
    assert parse_dsn(f"postgresql://u:PLACEHOLDER@{HOST}/db").had_password


def test_keyword_dsn_and_engine_inference() -> None:
    t = resolve(dsn=f"host={HOST} port=3306 user='my user' password=secret dbname=shop sslmode=verify-full")
    assert (t.engine, t.username, t.database, t.port) == ("mysql", "my user", "shop", 3306)
    assert "secret" not in repr(t)
    assert resolve(dsn=f"mysql://u@{HOST}/db").port == 3306
    assert resolve(host=HOST, username="u").engine == "postgres"


def test_cname_without_region_explains_signing_host() -> None:
    with pytest.raises(TargetError) as err:
        resolve(host="db.internal.example.com", username="u")
    assert err.value.field == "spec.region"
    assert "signingHost" in err.value.message and "CNAME" in err.value.message
    t = resolve(host="db.internal.example.com", username="u", signing_host=HOST)
    assert (t.host, t.signing_host, t.region) == ("db.internal.example.com", HOST, "us-east-1")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dsn": "http://x/y"}, "spec.dsn"),
        ({"dsn": f"postgresql://u:p@{HOST}:99999/db"}, "spec.dsn"),
        ({"host": "bad_host!", "username": "u"}, "spec.host"),
        ({"host": "a" * 300, "username": "u"}, "spec.host"),
        ({"host": HOST}, "spec.username"),
        ({"dsn": f"postgresql://{HOST},{HOST}/db"}, "spec.dsn"),
    ],
)
def test_bad_targets_name_the_field_and_never_echo_passwords(kwargs: dict[str, str], field: str) -> None:
    with pytest.raises(TargetError) as err:
        resolve(**kwargs)
    assert err.value.field == field
    assert ":p@" not in str(err.value)


def test_a_keyword_dsn_whose_password_holds_a_url_is_read_as_keywords() -> None:
    """Only a scheme followed by "://" makes a URL: the password below is dropped like any other, and a
    keyword string that is wrong in other ways never has its text named back in the error."""
    t = resolve(dsn=f"host={HOST} user=app password=Hunter2-Real://pw dbname=shop")
    assert (t.host, t.username, t.database) == (HOST, "app", "shop")
    assert "Hunter2" not in repr(t)
    with pytest.raises(TargetError) as err:
        resolve(dsn="user=app password=Hunter2-Real://pw")  # no host
    assert "hunter2" not in str(err.value).lower()


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        (f"postgresql://u@{HOST}/db?port=²", "non-numeric port"),  # isdigit() but not int()
        (f"postgresql://u@{HOST}/db?hostaddr=10.0.0.1%0Aevil", "control characters"),  # a second pgpass line
        (f"postgresql://u@{HOST}/d%ffb", "not UTF-8"),  # not silently U+FFFD
        (f"host={HOST} user=u hostaddr='10.0.0.1\nevil'", "control characters"),  # a real newline, quoted
    ],
)
def test_odd_dsn_values_are_spec_errors_not_crashes(dsn: str, says: str) -> None:
    with pytest.raises(TargetError, match=says):
        resolve(dsn=dsn)


USERS = ["app_user", "a@b", "c:d", "e%f", "g/h", "ü ser"]


@pytest.mark.parametrize("user", USERS)
def test_dsn_round_trips_through_libpq(user: str) -> None:
    conninfo = pytest.importorskip("psycopg.conninfo")
    t = resolve(
        host=HOST,
        username=user,
        database="my/db",
        dsn=f"postgresql://x@{HOST}/d?sslmode=verify-full&sslrootcert=/etc/ca%20bundle.pem",
    )
    parsed = conninfo.conninfo_to_dict(build_dsn(t, TOKEN))
    assert parsed["password"] == TOKEN
    assert parsed["user"] == user
    assert parsed["dbname"] == "my/db"
    assert parsed["sslmode"] == "verify-full" and parsed["sslrootcert"] == "/etc/ca bundle.pem"


@pytest.mark.parametrize("user", USERS)
def test_dsn_round_trips_through_sqlalchemy_and_pymysql(user: str) -> None:
    sa = pytest.importorskip("sqlalchemy")
    pytest.importorskip("pymysql")
    for engine in ("postgres", "mysql"):
        t = resolve(host=HOST, username=user, database="db", engine=engine)
        url = sa.make_url(build_dsn(t, TOKEN))
        assert url.password == TOKEN and url.username == user and url.database == "db"
    # PyMySQL gets its connect() arguments from SQLAlchemy's pymysql dialect.
    mysql = resolve(host=HOST, username=user, database="db", engine="mysql")
    url = sa.make_url(build_dsn(mysql, TOKEN).replace("mysql://", "mysql+pymysql://", 1))
    _, kwargs = url.get_dialect()().create_connect_args(url)
    assert kwargs["password"] == TOKEN and kwargs["user"] == user and kwargs["database"] == "db"


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql"])
def test_mysql_tls_options_and_the_token_round_trip_through_sqlalchemy_and_pymysql(user: str, scheme: str) -> None:
    """A MySQL DSN's TLS options as users write them for PyMySQL (through SQLAlchemy) come back unchanged,
    with the token, whichever of the two schemes the spec used."""
    sa = pytest.importorskip("sqlalchemy")
    pytest.importorskip("pymysql")
    t = resolve(dsn=f"{scheme}://x@{HOST}/shop?ssl_ca=/etc/rds/global%20bundle.pem&ssl_verify_identity=true",
                username=user)
    assert t.scheme == scheme and t.engine == "mysql"
    dsn = build_dsn(t, TOKEN)
    url = sa.make_url(dsn if scheme != "mysql" else dsn.replace("mysql://", "mysql+pymysql://", 1))
    assert url.password == TOKEN and url.username == user
    _, kwargs = url.get_dialect()().create_connect_args(url)
    assert kwargs["password"] == TOKEN and kwargs["user"] == user and kwargs["database"] == "shop"
    assert kwargs["ssl"] == {"ca": "/etc/rds/global bundle.pem"} and kwargs["ssl_verify_identity"] == "true"
    # The mysql client's spelling (ssl-mode, ssl-ca) stays as written for the apps that read it.
    t = resolve(dsn=f"{scheme}://x@{HOST}/shop?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/rds/ca.pem", username=user)
    query = sa.make_url(build_dsn(t, TOKEN).replace("mysql://", "mysql+pymysql://", 1)).query
    assert dict(query) == {"ssl-mode": "VERIFY_IDENTITY", "ssl-ca": "/etc/rds/ca.pem"}


def test_pgpass_escapes_and_lists_dial_hosts() -> None:
    t = resolve(host="db.internal", username="a:b", database="d", signing_host=HOST)
    lines = pgpass_line(t, "to:k\\en", hosts=["127.0.0.1"]).splitlines()
    assert lines == ["db.internal:5432:d:a\\:b:to\\:k\\\\en", "127.0.0.1:5432:d:a\\:b:to\\:k\\\\en"]
    assert split_pgpass(lines[0]) == ["db.internal", "5432", "d", "a:b", "to:k\\en"]  # as libpq reads it


def test_quote_all_matches_urllib_quote() -> None:
    samples = ["", "plain", "%", "%%25", "a b+c/d?e=f&g:h@i#j", "ü/ß", "tok%2Fen:=&?", "".join(map(chr, range(128)))]
    token = "h.rds.amazonaws.com:5432/?Action=connect&DBUser=u&X-Amz-Security-Token=IQo%2F%2B%3D" * 20
    for text in [*samples, token]:
        assert quote_all(text) == quote(text, safe="")


@pytest.mark.parametrize(("given", "expected"), [
    ("10.0.0.7", "10.0.0.7"), ("::1", "::1"), ("[fe80::1]", "fe80::1"), ("2001:db8::5", "2001:db8::5"),
    ("DB.Example.com.", "db.example.com"), ("999.1.1.1", "999.1.1.1"), ("10.0.0.7.nip.io", "10.0.0.7.nip.io"),
])
def test_check_hostname_accepts_ip_literals_and_hostnames(given: str, expected: str) -> None:
    assert check_hostname("spec.host", given) == expected


@pytest.mark.parametrize("given", [
    "", "a..b", "under_score.example.com", "[::1", "1:2:3", "-x.example.com", "x-.example.com",
    "a" * 64 + ".example.com", "db\n.example.com",  # a newline inside would split a pgpass line
    "\u212aube.example.com",  # the Kelvin sign, which lower-cases to an ASCII "k"
])
def test_check_hostname_refuses_what_is_neither(given: str) -> None:
    with pytest.raises(TargetError, match="spec.host"):
        check_hostname("spec.host", given)
