"""Secret templates parsed back by their consumers' own parsers: MariaDB's option-file reader
(``my_print_defaults``) for ``cnfquote``, pgjdbc's ``Driver.parseURL`` and MySQL Connector/J's
``ConnectionUrl`` for ``jdbcUrl`` (one JVM for every case), and the README's three worked examples.

Without MariaDB's client tools, or without java, javac and mvn, a test is skipped with the reason; with
``CI=true`` it fails instead. The driver jars are fetched once with ``mvn dependency:copy`` into
``~/.cache/rdsiam/jars`` (``RDSIAM_JAR_CACHE``), so a warm run needs no network.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from rdsiam.operator import template
from rdsiam.operator.spec import CredentialSpec, parse_spec
from rdsiam.operator.target import Target, resolve

ROOT = Path(__file__).resolve().parents[2]
HOST = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"
TOKEN = (f"{HOST}:5432/?Action=connect&DBUser=app_user&X-Amz-Algorithm=AWS4-HMAC-SHA256"
         "&X-Amz-Credential=ASIA%2F20260101%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20260101T000000Z"
         "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQo%2B%2Fabc%3D%3D+/="
         "&X-Amz-Signature=" + "ab" * 32)
PGJDBC = "org.postgresql:postgresql:42.7.14"
CONNECTOR_J = "com.mysql:mysql-connector-j:9.7.0"
# Values an encoder gets wrong: every character of a SigV4 token, quotes, escapes, spaces at the ends,
# comment markers, non-ASCII.
HOSTILE = [TOKEN, "a+b c", "%41%", "&=/:?#@", "'\"\\", " lead", "trail ", "x\\", 'y"', "#c", ";c", "ü€𐀀",
           "\\n\\s\\t", "tab\there", "new\nline", "cr\rx", "\b", "[client]", "--x=y", "="]


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true"):
        pytest.fail(f"{reason}; CI is set, so this is a failure", pytrace=False)
    pytest.skip(reason)


def _render(spec: CredentialSpec, token: str = TOKEN) -> dict[str, str]:
    assert spec.target.template is not None
    t = resolve(dsn=spec.dsn, host=spec.host, port=spec.port, database=spec.database, username=spec.username,
                engine=spec.engine, region=spec.region, signing_host=spec.signing_host)
    return spec.target.template.compiled.render(template.variables(t, token, "2026-01-01T12:15:00Z"))


def _target(engine: str = "postgres", user: str = "app_user", db: str = "orders", **kw: Any) -> Target:
    port = 5432 if engine == "postgres" else 3306
    return Target(engine, kw.pop("host", HOST), port, db, user, "us-east-1", HOST, "postgresql" if port == 5432
                  else "mysql", tuple(kw.items()))


# ---- my.cnf: MariaDB's own option-file reader --------------------------------------------------------

def print_defaults(path: Path, group: str = "client") -> str:
    binary = shutil.which("my_print_defaults")
    if binary is None:
        _missing("my_print_defaults not found (MariaDB's client tools: scripts/setup.sh installs them)")
    proc = subprocess.run([str(binary), f"--defaults-file={path}", group], capture_output=True, timeout=30,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[:500]
    return proc.stdout.decode()


def _cnf_round_trip(values: list[str], tmp: Path) -> None:
    path = tmp / "my.cnf"
    path.write_text("[client]\n" + "".join(f"o{i}={template.cnfquote(v)}\n" for i, v in enumerate(values)))
    expected = "".join(f"--o{i}={v}\n" for i, v in enumerate(values))
    same = print_defaults(path) == expected  # compared out of the assertion: a value may be token-shaped
    assert same, "my_print_defaults read other values back"


def test_cnfquote_round_trips_through_my_print_defaults(tmp_path: Path) -> None:
    _cnf_round_trip(HOSTILE, tmp_path)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n"), min_size=1,
                        max_size=40), min_size=30, max_size=30))
def test_cnfquote_round_trips_hostile_strings(values: list[str]) -> None:
    import tempfile  # hypothesis runs the body many times: a fresh directory each

    with tempfile.TemporaryDirectory() as tmp:
        _cnf_round_trip(values, Path(tmp))


# ---- jdbcUrl: pgjdbc's and Connector/J's own parsers, in one JVM -------------------------------------

PARSE_JAVA = r"""
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.Properties;

public class ParseUrls {
    static String b64(Object value) {
        if (value == null) return "-";
        return Base64.getEncoder().encodeToString(value.toString().getBytes(StandardCharsets.UTF_8));
    }

    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String url = line;
            StringBuilder out = new StringBuilder();
            try {
                if (url.startsWith("jdbc:postgresql:")) {
                    Properties p = org.postgresql.Driver.parseURL(url, new Properties());
                    if (p == null) { System.out.println("ERR\tnull"); continue; }
                    for (String k : new String[]{"user", "password", "PGHOST", "PGPORT", "PGDBNAME", "sslmode"}) {
                        out.append(b64(p.getProperty(k))).append('\t');
                    }
                } else {
                    com.mysql.cj.conf.ConnectionUrl cu =
                        com.mysql.cj.conf.ConnectionUrl.getConnectionUrlInstance(url, new Properties());
                    com.mysql.cj.conf.HostInfo h = cu.getMainHost();
                    out.append(b64(h.getUser())).append('\t').append(b64(h.getPassword())).append('\t')
                       .append(b64(h.getHost())).append('\t').append(b64(h.getPort())).append('\t')
                       .append(b64(h.getDatabase())).append('\t').append(b64(h.getHostProperties().get("sslMode")))
                       .append('\t');
                }
                System.out.println(out);
            } catch (Exception e) {
                System.out.println("ERR\t" + e.getClass().getName());
            }
        }
    }
}
"""


def _jars() -> list[Path]:
    for tool in ("java", "javac", "mvn"):
        if shutil.which(tool) is None:
            _missing(f"{tool} not found: the JDBC drivers' own parsers need a JDK and Maven")
    cache = Path(os.environ.get("RDSIAM_JAR_CACHE", Path.home() / ".cache" / "rdsiam" / "jars"))
    jars = []
    for artifact in (PGJDBC, CONNECTOR_J):
        group, name, version = artifact.split(":")
        jar = cache / f"{name}-{version}.jar"
        if not jar.exists():
            cache.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(["mvn", "-q", "dependency:copy", f"-Dartifact={artifact}",
                                   f"-DoutputDirectory={cache}"], capture_output=True, text=True, timeout=300,
                                  check=False, cwd=cache)
            if proc.returncode != 0 or not jar.exists():
                _missing(f"mvn could not fetch {artifact}: {(proc.stdout + proc.stderr)[-300:]}")
        jars.append(jar)
    return jars


@pytest.fixture(scope="module")
def jdbc_parse(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``parse(urls)``: each URL as the drivers parse it, (user, password, host, port, db, sslmode), or
    ("ERR", exception class) -- all in one JVM."""
    classpath = os.pathsep.join(str(j) for j in _jars())
    work = tmp_path_factory.mktemp("jdbc")
    (work / "ParseUrls.java").write_text(PARSE_JAVA)
    proc = subprocess.run(["javac", "-cp", classpath, "-d", str(work), str(work / "ParseUrls.java")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def parse(urls: list[str]) -> list[tuple[str, ...]]:
        assert all("\n" not in u for u in urls)
        run = subprocess.run(["java", "-cp", os.pathsep.join([classpath, str(work)]), "ParseUrls"],
                             input="\n".join(urls) + "\n", capture_output=True, text=True, timeout=120,
                             check=False)
        assert run.returncode == 0, run.stderr[-2000:]
        rows = []
        for line in run.stdout.splitlines():
            fields = line.rstrip("\t").split("\t")
            if fields[0] == "ERR":
                rows.append(tuple(fields))
            else:
                rows.append(tuple("" if f == "-" else base64.b64decode(f).decode() for f in fields))
        assert len(rows) == len(urls)
        return rows

    return parse


def _strings(seed: int, n: int) -> list[str]:
    """Hostile strings, reproducibly: every SigV4 character, URL delimiters, escapes and non-ASCII."""
    rng = random.Random(seed)
    alphabet = ("ABCXYZabcxyz0189-_.~%&=/+:?#@!$'()*,;[] \"\\<>^`{|}" + "üé€中𐀀\t")
    return [TOKEN, *HOSTILE[1:], *("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
                                   for _ in range(n))]


def test_jdbc_url_round_trips_through_pgjdbc_and_connector_j(jdbc_parse: Any) -> None:
    cases: list[tuple[str, str, str, str, str]] = []  # (url, user, token, db, engine)
    tokens = [t for t in _strings(1, 40) if "\n" not in t and "\r" not in t]
    users = [u for u in _strings(2, 40) if u.isprintable()]
    dbs = [d for d in _strings(3, 40) if d.isprintable() and d.strip() == d]
    for i, token in enumerate(tokens):
        user, db = users[i % len(users)], dbs[i % len(dbs)]
        for engine in ("postgres", "mysql"):
            mode = ("sslmode", "verify-full") if engine == "postgres" else ("ssl-mode", "VERIFY_IDENTITY")
            url = template.variables(_target(engine, user, db, **dict([mode])), token, "x")["jdbcUrl"]
            cases.append((url, user, token, db, engine))
    rows = jdbc_parse([c[0] for c in cases])
    wrong = []
    for (_, user, token, db, engine), row in zip(cases, rows, strict=True):
        port, mode = ("5432", "verify-full") if engine == "postgres" else ("3306", "VERIFY_IDENTITY")
        if row != (user, token, HOST, port, db, mode):
            # Which field, never the values: a token must not reach the report.
            fields = ("user", "password", "host", "port", "database", "sslmode")
            wrong.append(f"{engine}: {row[0]}" if row[0] == "ERR" else
                         f"{engine}: " + ", ".join(f for f, a, b in zip(fields, row, (user, token, HOST, port, db,
                                                                                     mode), strict=True) if a != b))
    assert not wrong, wrong[:10]


# ---- the README's worked examples --------------------------------------------------------------------

def readme_examples() -> dict[str, dict[str, Any]]:
    """The RdsIamCredentials of the README's template section, by their first template key."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Templates", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    docs = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    return {next(iter(d["spec"]["target"]["template"]["data"])): d for d in docs}


def test_the_readme_has_the_three_examples_and_they_parse() -> None:
    examples = readme_examples()
    assert set(examples) == {"DATABASE_URL", "spring.datasource.url", "my.cnf"}
    for doc in examples.values():
        assert doc["kind"] == "RdsIamCredential"
        parse_spec(doc["spec"])


def test_readme_database_url_parses_back_with_psycopg_and_sqlalchemy() -> None:
    data = _render(parse_spec(readme_examples()["DATABASE_URL"]["spec"]))
    url = data["DATABASE_URL"]
    libpq = psycopg.conninfo.conninfo_to_dict(url)
    same = (libpq["user"], libpq["password"], libpq["host"], libpq["port"], libpq["dbname"], libpq["sslmode"]) == (
        "app_user", TOKEN, HOST, "5432", "orders", "verify-full")
    assert same, "libpq read another user, token or target back"
    parsed = make_url(url)
    same = (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "app_user", TOKEN, HOST, 5432, "orders")
    assert same, "SQLAlchemy read another user, token or target back"


def test_readme_spring_boot_keys_parse_back_with_pgjdbc(jdbc_parse: Any) -> None:
    data = _render(parse_spec(readme_examples()["spring.datasource.url"]["spec"]))
    assert set(data) == {"spring.datasource.url", "spring.datasource.username", "spring.datasource.password"}
    same = (data["spring.datasource.username"], data["spring.datasource.password"]) == ("app_user", TOKEN)
    assert same, "the Spring keys hold another user or token"
    [row] = jdbc_parse([data["spring.datasource.url"]])
    assert row == ("", "", HOST, "5432", "orders", "verify-full")  # no credentials in the URL


def test_readme_mysql_option_file_parses_back_with_my_print_defaults(tmp_path: Path) -> None:
    doc = readme_examples()["my.cnf"]
    assert doc["spec"]["target"]["template"]["mergePolicy"] == "Replace"
    data = _render(parse_spec(doc["spec"]), TOKEN.replace(":5432", ":3306"))
    assert set(data) == {"my.cnf"} and data["my.cnf"].endswith("\n")
    path = tmp_path / "my.cnf"
    path.write_text(data["my.cnf"])
    host = "orders-mysql.cluster-abc123.us-east-1.rds.amazonaws.com"
    expected = (f"--user=app_user\n--password={TOKEN.replace(':5432', ':3306')}\n--host={host}\n--port=3306\n"
                "--database=orders\n--ssl-mode=VERIFY_IDENTITY\n--ssl-ca=/etc/rds/global-bundle.pem\n"
                "--enable-cleartext-plugin\n")
    same = print_defaults(path) == expected
    assert same, "my_print_defaults read another option file back"
