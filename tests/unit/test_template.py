"""Secret templates (spec.target.template): each filter's round trip through its consumer's own parser,
what the sandbox refuses, InvalidSpec messages naming the key, and what the reconciler writes under
Merge and Replace. (my.cnf through MariaDB's parser and jdbcUrl through pgjdbc's and Connector/J's:
tests/integration/test_template_consumers.py.)"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from rdsiam.operator import reasons, template
from rdsiam.operator.spec import SpecError, parse_spec
from rdsiam.operator.target import resolve
from tests.unit.test_reconcile import HOST, T0, FakeIdentities, FakeKube, reconciler, resource

# Every character a SigV4 token holds, and the ones an encoder gets wrong most often.
SIGV4 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~%&=/+:?"
TOKEN = (f"{HOST}:5432/?Action=connect&DBUser=app%40x&X-Amz-Algorithm=AWS4-HMAC-SHA256"
         "&X-Amz-Credential=ASIA%2F20260101%2Fus-east-1%2Frds-db%2Faws4_request&X-Amz-Date=20260101T000000Z"
         "&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Security-Token=IQo%2B%2Fabc%3D%3D+/="
         "&X-Amz-Signature=" + "ab" * 32)
tokens = st.one_of(st.just(TOKEN), st.text(SIGV4, min_size=1, max_size=300),
                   st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                           max_size=60))
names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs", "Cc")), min_size=1,
                max_size=15)  # at most 60 bytes: PostgreSQL's identifiers hold 63
UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~%")


def render(source: str, token: str = TOKEN, **target: Any) -> str:
    t = resolve(**{"host": HOST, "username": "app_user", "database": "orders", **target})
    return template.compile_templates((("K", source),), False).render(
        template.variables(t, token, "2026-01-01T12:15:00Z"))["K"]


def problem(data: dict[str, str], policy: str = "Merge") -> str:
    with pytest.raises(SpecError) as err:
        parse_spec({"host": HOST, "target": {"template": {"mergePolicy": policy, "data": data}}})
    return str(err.value)


# ---- filters: round trips through the consumers' own parsers --------------------------------------

@given(tokens)
def test_urlquote_leaves_only_unreserved_characters_and_urllib_decodes_it(value: str) -> None:
    quoted = template.urlquote(value)
    assert set(quoted) <= UNRESERVED
    assert unquote(quoted, errors="strict") == value


URL = ("postgresql://{{ username | urlquote }}:{{ password | urlquote }}@{{ host }}:{{ port }}/"
       "{{ dbname | urlquote }}?sslmode=verify-full")


@settings(max_examples=60)
@given(tokens, names, names)
def test_a_database_url_round_trips_through_psycopg_and_sqlalchemy(token: str, user: str, db: str) -> None:
    url = render(URL, token, username=user, database=db)
    libpq = psycopg.conninfo.conninfo_to_dict(url)
    same = (libpq["user"], libpq["password"], libpq["dbname"], libpq["host"], libpq["port"]) == (
        user, token, db, HOST, "5432")
    assert same, "libpq parsed another user, token, database or host back"  # no token in the failure
    parsed = make_url(url)
    same = (parsed.username, parsed.password, parsed.database, parsed.host, parsed.port) == (
        user, token, db, HOST, 5432)
    assert same, "SQLAlchemy parsed another user, token, database or host back"


@given(tokens)
def test_json_round_trips_through_json_loads(token: str) -> None:
    text = render('{"user": {{ username | json }}, "password": {{ password | json }}, "port": {{ port | json }}}',
                  token)
    assert text.isascii()
    same = json.loads(text) == {"user": "app_user", "password": token, "port": 5432}
    assert same, "json.loads read another document back"


def test_cnfquote_escapes_what_the_option_file_reader_unescapes() -> None:
    assert template.cnfquote('a"b\\c\nd#e f\'') == '"a\\"b\\\\c\\nd#e f\'"'
    assert template.cnfquote(TOKEN) == f'"{TOKEN}"'  # nothing in a SigV4 token needs escaping


@given(tokens, names)
def test_jdbc_url_parameters_decode_as_urldecoder_does(token: str, user: str) -> None:
    """Java's URLDecoder (pgjdbc, Connector/J) reads '+' as a space: ``unquote_plus`` is its twin here;
    the drivers themselves: tests/integration/test_template_consumers.py."""
    for dsn in (f"postgresql://x@{HOST}/orders?sslmode=verify-full&hostaddr=10.0.0.1",
                f"mysql://x@{HOST.replace('5432', '3306')}/orders?ssl-mode=VERIFY_IDENTITY"):
        url = render("{{ jdbcUrl }}", token, dsn=dsn, username=user, host=None, database=None)
        parts = urlsplit(url[len("jdbc:"):])
        params = dict(parse_qsl(parts.query.replace("+", "%2B"), keep_blank_values=True))
        assert "+" not in parts.query and " " not in url
        same = (unquote_plus(parts.query.split("password=")[1].split("&")[0]), params["user"]) == (token, user)
        assert same, "the JDBC URL's parameters decode to another token or user"
    assert "hostaddr" not in url and "sslMode=VERIFY_IDENTITY" in url


def test_jdbc_url_forms() -> None:
    pg = render("{{ jdbcUrl }}", "t+k", dsn=f"postgresql://x@{HOST}/orders?sslmode=verify-full&sslrootcert=/c.pem")
    assert pg == (f"jdbc:postgresql://{HOST}:5432/orders?user=app_user&password=t%2Bk&sslmode=verify-full"
                  "&sslrootcert=%2Fc.pem")
    my = render("{{ jdbcUrl }}", "t k", engine="mysql", port=3306)
    assert my == f"jdbc:mysql://{HOST}:3306/orders?user=app_user&password=t%20k&sslMode=PREFERRED"


def test_every_variable_is_there() -> None:
    text = render(" ".join(f"{{{{ {name} }}}}" for name in template.VARIABLES), "tok")
    assert text.startswith("app_user tok " + HOST + " 5432 orders postgres us-east-1 postgresql://")
    assert text.endswith("2026-01-01T12:15:00Z") and " jdbc:postgresql://" in text


def test_conditions_slices_and_trailing_newlines() -> None:
    source = '{% if engine == "mysql" %}my{% else %}pg{% endif %}:{{ password[:3] | upper }}\n'
    assert render(source, "token") == "pg:TOK\n"


# ---- InvalidSpec, naming the key, found when the spec is parsed ----------------------------------

@pytest.mark.parametrize(("source", "says"), [
    ("{{ pasword }}", "uses unknown name 'pasword'"),
    ("{{ password | base64 }}", "uses unknown filter 'base64'"),
    ("{{ password ", "is not a valid template"),
    ("{% for c in password %}{{ c }}{% endfor %}", "uses a for loop"),
    ("{{ password.upper }}", "uses attribute access"),
    ("{{ password.upper() }}", "uses a call"),
    ("{{ password * 1000 }}", "uses arithmetic"),
    ("{{ range(10) }}", "uses a call"),
    ("{{ cycler }}", "uses unknown name 'cycler'"),
    ("{% set x = password %}{{ x }}", "uses an assignment"),
    ("{% include 'x' %}", "uses an include"),
    ("{{ none }}", "renders nothing (None)"),
    ('{{ password["upper"] }}', "the sandbox refuses"),
    ("{{ password[5000] }}", "has no value"),
    ("{{ " + " ~ ".join(["jdbcUrl"] * 40) + " }}", "a key may hold at most 65536"),
    ("x" * 8193, "a template may have at most 8192"),
])
def test_a_template_that_cannot_render_is_invalid_spec_naming_the_key(source: str, says: str) -> None:
    message = problem({"DATABASE_URL": "{{ dsn }}", "BAD_KEY": source})
    assert message.startswith("spec.target.template.data.BAD_KEY: ") and says in message, message


@pytest.mark.parametrize("key", ["a b", "a/b", ".", "..", "x" * 254, "ключ"])
def test_a_key_that_is_not_a_secret_key_is_invalid_spec(key: str) -> None:
    message = problem({key: "{{ password }}"})
    assert message.startswith("spec.target.template.data") and "is not a valid Secret key" in message


def test_a_standard_key_under_merge_is_invalid_spec_and_fine_under_replace() -> None:
    message = problem({"password": "{{ password | urlquote }}"})
    assert message.startswith("spec.target.template.data.password: is one of the Secret's standard keys")
    assert "mergePolicy: Replace" in message
    spec = parse_spec({"host": HOST, "target": {"template": {"mergePolicy": "Replace",
                                                             "data": {"password": "{{ password }}"}}}})
    assert spec.target.template is not None and spec.target.template.compiled.replace


def test_schema_level_problems_name_the_field() -> None:
    assert problem({f"K{i}": "x" for i in range(65)}).startswith("spec.target.template.data:")
    assert problem({"K": "x"}, policy="Overwrite").startswith("spec.target.template.mergePolicy:")


def test_a_syntax_error_names_the_line_and_nothing_rendered() -> None:
    message = problem({"my.cnf": "[client]\npassword={{ password | cnfquote }\n"})
    assert message.startswith("spec.target.template.data.my.cnf: is not a valid template") and "(line 2)" in message


def test_compiled_templates_are_cached_across_specs() -> None:
    raw = {"host": HOST, "target": {"template": {"data": {"DATABASE_URL": URL}}}}
    first, second = parse_spec(raw), parse_spec(json.loads(json.dumps(raw)))
    assert first is not second
    assert first.target.template is not None and second.target.template is not None
    assert first.target.template.compiled is second.target.template.compiled


# ---- what the reconciler writes ----------------------------------------------------------------------

def _data(kube: FakeKube) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in kube.secrets[("shop", "orders")]["data"].items()}


def _spec(policy: str, data: dict[str, str]) -> dict[str, Any]:
    return {"host": HOST, "username": "app_user", "database": "orders", "refreshInterval": "1m",
            "target": {"template": {"mergePolicy": policy, "data": data}}}


async def test_merge_adds_the_rendered_keys_to_the_standard_ones() -> None:
    kube = FakeKube()
    await reconciler(kube, FakeIdentities()).reconcile(resource(_spec("Merge", {"DATABASE_URL": URL})))
    data = _data(kube)
    assert set(data) == {"username", "password", "host", "port", "dbname", "dsn", "expires-at", "pgpass",
                         "DATABASE_URL"}
    same = psycopg.conninfo.conninfo_to_dict(data["DATABASE_URL"])["password"] == data["password"]
    assert same, "DATABASE_URL carries another token than password"


async def test_replace_writes_only_the_templates_and_still_refreshes_on_time() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    body = resource(_spec("Replace", {"DATABASE_URL": URL, "DB_PASSWORD": "{{ password }}"}))
    out = await reconciler(kube, ids).reconcile(body)
    assert out.ok and out.refreshed and out.next_due is not None
    assert T0 + dt.timedelta(seconds=54) <= out.next_due <= T0 + dt.timedelta(seconds=60)  # 1m - jitter
    first = _data(kube)
    assert set(first) == {"DATABASE_URL", "DB_PASSWORD"}
    annotations = kube.secrets[("shop", "orders")]["metadata"]["annotations"]
    assert annotations["rdsiam.io/expires-at"] == "2026-01-01T12:15:00Z"
    # A restart with the Secret fresh: read, and nothing written (the template keys make it complete).
    kube.calls.clear()
    out = await reconciler(kube, ids, now=T0 + dt.timedelta(seconds=30)).reconcile(body)
    assert kube.calls == ["get_secret"] and out.ok and not out.refreshed
    # The interval elapsed: a new token, still only the template keys.
    out = await reconciler(kube, ids, now=T0 + dt.timedelta(seconds=61)).reconcile(body)
    assert out.refreshed and set(_data(kube)) == {"DATABASE_URL", "DB_PASSWORD"}
    assert kube.secrets[("shop", "orders")]["metadata"]["annotations"]["rdsiam.io/issued-at"] == "2026-01-01T12:01:01Z"


async def test_replace_secret_missing_a_template_key_gets_a_new_token() -> None:
    kube, ids = FakeKube(), FakeIdentities()
    body = resource(_spec("Replace", {"DB_PASSWORD": "{{ password }}", "DB_USER": "{{ username }}"}))
    await reconciler(kube, ids).reconcile(body)
    del kube.secrets[("shop", "orders")]["data"]["DB_USER"]
    out = await reconciler(kube, ids, now=T0 + dt.timedelta(seconds=10)).reconcile(body)
    assert out.refreshed and set(_data(kube)) == {"DB_PASSWORD", "DB_USER"}


async def test_verify_gets_the_token_under_replace() -> None:
    seen: list[bool] = []

    async def verifier(target: Any, secret: dict[str, Any]) -> tuple[str, str, str]:
        token = base64.b64decode(secret["data"]["password"]).decode()
        seen.append(token.startswith(f"{HOST}:5432/?Action=connect"))
        return "True", "Connected", "ok"

    kube = FakeKube()
    spec = {**_spec("Replace", {"DB_PASSWORD": "{{ password }}"}), "verify": True}
    out = await reconciler(kube, FakeIdentities(), verifier=verifier).reconcile(resource(spec))
    assert out.ok and seen == [True] and set(_data(kube)) == {"DB_PASSWORD"}


async def test_a_template_failing_on_the_real_token_is_invalid_spec_without_the_token() -> None:
    """The sample token is longer than this one: ``password[1200]`` renders at parse time, not at write."""
    kube, ids = FakeKube(), FakeIdentities()
    rec = reconciler(kube, ids)
    out = await rec.reconcile(resource(_spec("Merge", {"TAIL": "{{ password[1200] }}"})))
    assert not out.ok and out.reason == reasons.INVALID_SPEC and out.next_due is None and out.retry_after is None
    assert ("shop", "orders") not in kube.secrets
    message = kube.statuses[-1]["conditions"][0]["message"]
    assert message.startswith("Invalid spec: spec.target.template.data.TAIL: cannot be rendered")
    texts = json.dumps([kube.statuses, [e["message"] for e in kube.events]])
    assert "X-Amz-Signature" not in texts and "Action=connect" not in texts
    assert kube.events[-1]["type"] == "Warning" and kube.events[-1]["reason"] == reasons.INVALID_SPEC


def test_invalid_spec_messages_never_hold_a_token_shaped_value() -> None:
    """A spec cannot hold a token, but its templates are checked with a token-shaped one: none of its text
    reaches a message, whatever the template does with it."""
    sample = template.sample_values()["password"]
    for source in ("{{ password[5000] }}", '{{ password["x"] }}', "{{ password[1:2] ~ password[5000] }}",
                   "{{ " + " ~ ".join(["password"] * 50) + " }}", "{{ password | json | json | json }}" * 45):
        message = problem({"K": source})
        assert "X-Amz" not in message and sample[:40] not in message and "Action=connect" not in message
