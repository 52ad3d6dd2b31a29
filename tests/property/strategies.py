"""hypothesis strategies for RdsIamCredential specs: hostile and ordinary.

Hostnames (RDS endpoints, CNAME-like names, unicode, too long, IPv4/IPv6), ports in and out of range,
usernames and databases with reserved and control characters, DSNs (well-formed, hand-encoded, libpq
keyword strings, garbage), huge labels and annotations, refresh intervals at and past the bounds,
and role/session fields valid or not. Every spec is a plain dict, as it would arrive from the API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

REGIONS = ["us-east-1", "eu-west-3", "ap-southeast-2", "us-gov-west-1", "cn-north-1"]
# Refresh intervals at and past 1m..14m, in every spelling a Go duration allows (and some it does not).
INTERVALS = ["59s", "59.999s", "1m", "60s", "60000ms", "1m0s", "0.5m", "1m30s", "10m", "13m59s", "14m", "840s",
             "840000ms", "14m0.001s", "14m1s", "841s", "15m", "1h", "0s", "", "10", "10x", "-1m", "1m1m", "1.m",
             "١m", "1 m", "PT1M", "1e1m"]
RESERVED = "@:/?#[]%&=+ $!'\"\\;,"

label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\Z", fullmatch=True)


@st.composite
def rds_host(draw: st.DrawFn) -> str:
    name = draw(label)
    kind = draw(st.sampled_from(["cluster-", "cluster-ro-", "", "proxy-"]))
    host = f"{name}.{kind}{draw(label)}.{draw(st.sampled_from(REGIONS))}.rds.amazonaws.com"
    if draw(st.booleans()) and "cn-" in host:
        host += ".cn"
    if draw(st.integers(0, 9)) == 0:
        host = host.upper()
    if draw(st.integers(0, 9)) == 0:
        host += "."
    return host


hosts = st.one_of(
    rds_host(),
    st.lists(label, min_size=1, max_size=5).map(".".join),  # a CNAME, a tunnel, a plain name
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.text(min_size=0, max_size=40),  # unicode, spaces, control characters
    st.integers(64, 300).map(lambda n: "a" * n + ".us-east-1.rds.amazonaws.com"),  # a label too long
    st.integers(10, 60).map(lambda n: ".".join(["abcdefgh"] * n) + ".us-east-1.rds.amazonaws.com"),  # too long
)
ports = st.one_of(st.none(), st.integers(-5, 70000), st.sampled_from([5432, 3306, 1, 65535, 0, 65536]))
names = st.one_of(
    st.none(),
    st.from_regex(r"\A[a-z_][a-z0-9_]{0,20}\Z", fullmatch=True),
    st.text(alphabet=st.sampled_from(list(RESERVED) + list("abcdeXYZ_-.é中🙂")), min_size=1, max_size=70),
    st.text(max_size=70),
)
schemes = st.sampled_from(["postgresql", "postgres", "mysql", "mariadb", "postgresql+psycopg", "mysql+pymysql",
                           "PostgreSQL", "http", "jdbc:postgresql", ""])
options = st.lists(st.tuples(st.sampled_from(["sslmode", "sslrootcert", "hostaddr", "connect_timeout",
                                              "application_name", "options", "password", "user", "dbname",
                                              "weird key", "ssl"]),
                             st.text(alphabet=st.sampled_from(list(RESERVED) + list("abcz09é")), max_size=12)),
                   max_size=4)


@st.composite
def url_dsns(draw: st.DrawFn) -> str:
    """A URL DSN, its parts encoded properly or not."""
    encode = draw(st.booleans())
    enc = (lambda s: quote(s, safe="")) if encode else (lambda s: s)
    user, password, db = draw(names), draw(st.sampled_from(["$TOKEN", "PLACEHOLDER", "hunter2", "p@ss:w/rd", ""])), \
        draw(names)
    host = draw(hosts)
    port = draw(ports)
    auth = ""
    if user is not None:
        auth = enc(user) + (f":{enc(password)}" if password else "") + "@"
    netloc = auth + host + (f":{port}" if port is not None else "")
    query = "&".join(f"{enc(k)}={enc(v)}" for k, v in draw(options))
    return f"{draw(schemes)}://{netloc}" + (f"/{enc(db)}" if db is not None else "") + (f"?{query}" if query else "")


@st.composite
def keyword_dsns(draw: st.DrawFn) -> str:
    """A libpq ``key=value`` string, values quoted or not."""
    pairs = {"host": draw(hosts), "user": draw(names), "dbname": draw(names), "password": "hunter2",
             "port": draw(ports), "sslmode": draw(st.sampled_from(["require", "verify-full", "disable"]))}
    parts = []
    for key, value in pairs.items():
        if value is None or not draw(st.booleans()):
            continue
        text = str(value)
        quoted = "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={quoted if draw(st.booleans()) else text}")
    return " ".join(parts)


dsns = st.one_of(st.none(), url_dsns(), keyword_dsns(), st.text(max_size=60),
                 st.integers(4097, 6000).map(lambda n: "postgresql://u@h.x.us-east-1.rds.amazonaws.com/" + "d" * n))
huge = st.one_of(st.text(max_size=20), st.integers(1000, 70_000).map(lambda n: "v" * n))
label_maps = st.dictionaries(
    st.one_of(st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?(/[a-z0-9]{1,20})?\Z", fullmatch=True),
              st.text(max_size=300)),
    huge, max_size=4)


good_names = st.from_regex(r"\A[a-z_][a-z0-9_]{0,20}\Z", fullmatch=True)
good_intervals = st.sampled_from(["1m", "60s", "90s", "5m", "10m", "14m", "840s", "13m59s"])


@st.composite
def good_dsns(draw: st.DrawFn) -> str:
    user, db = draw(st.one_of(good_names, names.filter(bool))), draw(st.one_of(good_names, names.filter(bool)))
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in draw(options))
    port = draw(st.sampled_from(["", ":5432", ":3306", ":15432"]))
    return (f"{draw(st.sampled_from(['postgresql', 'postgres', 'mysql']))}://{quote(str(user), safe='')}:$TOKEN@"
            f"{draw(rds_host())}{port}/{quote(str(db), safe='')}" + (f"?{query}" if query else ""))


@st.composite
def specs(draw: st.DrawFn, *, e2e: bool = False) -> dict[str, Any]:
    """A raw ``spec``: a sound one with some fields swapped for hostile values (or left out).
    ``e2e``: nothing that would make the operator reach the network (verify, DNS)."""
    fields: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {  # (sound, hostile)
        "dsn": (good_dsns(), dsns),
        "host": (rds_host(), hosts),
        "port": (st.sampled_from([5432, 3306, 15432]), ports),
        "database": (good_names, names),
        "username": (good_names, names),
        "engine": (st.sampled_from(["postgres", "mysql"]), st.sampled_from(["oracle", "", "Postgres"])),
        "region": (st.sampled_from(REGIONS), st.text(max_size=12)),
        "signingHost": (rds_host(), hosts),
        "refreshInterval": (good_intervals, st.sampled_from(INTERVALS)),
        "assumeRoleArn": (st.sampled_from(["arn:aws:iam::123456789012:role/db",
                                           "arn:aws-cn:iam::123456789012:role/path/db"]),
                          st.sampled_from(["arn:aws:iam::1:role/x", "role/db", "arn:aws:iam::123456789012:user/u"])),
        "externalId": (st.just("ext-id-123"), st.sampled_from(["x", "e" * 1300])),
        "sessionName": (st.just("rdsiam-session"), st.sampled_from(["s", "bad session!", "s" * 70])),
        "assumeRoleDurationSeconds": (st.sampled_from([900, 3600, 43200]), st.sampled_from([899, 43201, -1])),
    }
    if not e2e:
        fields.update({"verify": (st.booleans(), st.just("yes")), "resolveCNAME": (st.booleans(), st.just(1)),
                       "serviceAccountName": (st.just("app"), st.sampled_from(["Bad_SA", "a" * 254]))})
    common = {"dsn", "host", "username", "refreshInterval", "port", "database"}
    spec: dict[str, Any] = {}
    # hypothesis leans towards small numbers: small means "absent" and "sound" here, so that about half
    # the specs are admitted and exercise the operator, and the rest fail in one or two fields at a time.
    for key, (sound, hostile) in fields.items():
        present = draw(st.integers(0, 99)) >= (35 if key in common else 88)
        if present:
            value = draw(hostile if draw(st.integers(0, 99)) >= 85 else sound)
            if value is not None:
                spec[key] = value
    if draw(st.booleans()):
        target: dict[str, Any] = {}
        if draw(st.booleans()):
            target["name"] = draw(st.one_of(label, label, st.text(max_size=30), st.just("a" * 254)))
        if draw(st.booleans()):
            target["labels"] = draw(label_maps)
        if draw(st.booleans()):
            target["annotations"] = draw(label_maps)
        spec["target"] = target
    return spec
