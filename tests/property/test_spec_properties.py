"""Property tests over the spec, pure and fast: the API server's admission (the CRD's structural schema
and CEL rules, evaluated by the emulator's own validator, no server), then ``parse_spec`` +
``target.resolve`` + ``build_dsn``, for thousands of generated specs (see ``strategies``).

For every spec, exactly one of:
- rejected at admission (what a 422 from the API server would say), or
- rejected by the operator with ``SpecError``/``TargetError`` whose field is a ``spec.`` path and whose
  message quotes no DSN password, or
- admitted: the DSN built with a token parses back (libpq for PostgreSQL, SQLAlchemy for both) to
  exactly the token, user, database, host and port; the ``pgpass`` line too; rebuilding from the
  built DSN gives the same target; the fingerprint is stable.
Never any other exception. And whatever the operator accepts, the API server admits.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from rdsiam.operator import policy
from rdsiam.operator.spec import SpecError, parse_spec
from rdsiam.operator.target import TargetError, build_dsn, pgpass_line, resolve, split_pgpass
from rdsiam.testing.kube.schema import Schema
from tests.fault._figures import record
from tests.property.strategies import RESERVED, specs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 1500
STATS: Counter[str] = Counter()
SECRETS = ("hunter2", "p@ss:w/rd", "PLACEHOLDER")
# A token with every character that needs care in a URL, a pgpass line or a libpq string.
TOKEN = ("db.x.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=a%40b%3A%2F&X-Amz-Credential=AKIA%2F2025"
         "&X-Amz-Security-Token=IQo+/=%25:\\'\" @#&X-Amz-Signature=0123abcd")
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.filter_too_much])


def crd_schema() -> Schema:
    doc = yaml.safe_load((ROOT / "crds" / "rdsiam.io_rdsiamcredentials.yaml").read_text())
    return Schema(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"], root=True)


SCHEMA = crd_schema()


def admission(spec: dict[str, Any]) -> list[str]:
    """What the API server would refuse (the emulator's structural schema + CEL validator)."""
    obj = {"apiVersion": "rdsiam.io/v1alpha1", "kind": "RdsIamCredential",
           "metadata": {"name": "p", "namespace": "default"}, "spec": copy.deepcopy(spec)}
    obj, _ = SCHEMA.default_and_prune(obj)
    return [f"{e.field}: {e.type}" for e in SCHEMA.validate(obj)]


def check_admitted(target: Any) -> None:
    dsn = build_dsn(target, TOKEN)
    url = make_url(dsn)
    assert url.password == TOKEN and url.username == target.username
    assert url.port == target.port and (url.database or "") == target.database
    if target.engine == "postgres":
        try:
            info = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:  # libpq refuses options it does not know (copied from the DSN)
            assert "invalid URI query parameter" in str(exc), exc
            STATS["libpq refuses a copied DSN option"] += 1
        else:
            assert info["password"] == TOKEN and info["user"] == target.username
            assert info.get("dbname", "") == target.database and info["port"] == str(target.port)
            assert info["host"] == target.host
        line = pgpass_line(target, TOKEN).split("\n")[0]  # libpq splits on newlines only
        assert split_pgpass(line) == [target.host, str(target.port), target.database or "*", target.username, TOKEN]
    again = resolve(dsn=dsn, region=target.region, signing_host=target.signing_host)
    assert (again.host, again.port, again.database, again.username, again.engine, again.region, again.options) == \
        (target.host, target.port, target.database, target.username, target.engine, target.region, target.options)


def judge(raw: dict[str, Any]) -> str:
    """One generated spec through admission and the operator; returns the outcome (asserting all the rest)."""
    refused = admission(raw)
    try:
        spec = parse_spec(raw)
        target = resolve(dsn=spec.dsn, host=spec.host, port=spec.port, database=spec.database,
                         username=spec.username, engine=spec.engine, region=spec.region,
                         signing_host=spec.signing_host)
    except (SpecError, TargetError) as exc:
        assert exc.field.startswith("spec"), exc.field
        text = str(exc)
        assert not any(s in text for s in SECRETS if s in (raw.get("dsn") or "")), "a DSN password in an error"
        return "rejected at admission" if refused else "rejected by the operator (InvalidSpec)"
    # The operator's model coerces JSON types (pydantic lax mode: 1 -> true) the API server never lets
    # through; any other refusal the operator would not make is an inconsistency between the two.
    untyped = [r for r in refused if not r.endswith("FieldValueTypeInvalid") and not r.startswith("<nil>")]
    assert not untyped, f"the operator takes a spec the API server refuses: {refused}"
    if refused:
        return "rejected at admission (wrong JSON type)"
    check_admitted(target)
    assert policy.fingerprint(raw, "n") == policy.fingerprint(copy.deepcopy(raw), "n")
    return f"admitted ({target.engine})"


@pytest.mark.slow
@PROFILE
@given(specs())
def test_every_spec_is_admitted_and_round_trips_or_is_refused_naming_the_field(raw: dict[str, Any]) -> None:
    STATS[judge(raw)] += 1


@settings(PROFILE, max_examples=500)
@given(user=st.text(alphabet=st.sampled_from(list(RESERVED) + list("abzé中🙂\x7f")), min_size=1, max_size=63),
       database=st.text(alphabet=st.sampled_from(list(RESERVED) + list("abzé")), max_size=40),
       host=st.sampled_from(["orders.cluster-abc.us-east-1.rds.amazonaws.com", "10.0.0.7", "::1", "fd00::5"]),
       port=st.integers(1, 65535), engine=st.sampled_from(["postgres", "mysql"]))
def test_reserved_characters_in_explicit_fields_survive_the_dsn(
    user: str, database: str, host: str, port: int, engine: str,
) -> None:
    try:
        target = resolve(host=host, port=port, username=user, database=database, engine=engine, region="us-east-1")
    except TargetError as exc:
        assert exc.field == "spec.username" and len(user.encode()) > 63
        STATS["explicit fields: refused (username over 63 bytes)"] += 1
        return
    check_admitted(target)
    STATS[f"explicit fields: round trip ({engine})"] += 1


@pytest.mark.parametrize(("dsn", "why"), [
    ("postgresql://app:$TOKEN@h.c.us-east-1.rds.amazonaws.com/orders?user=other", "a second user"),
    ("postgresql://app:$TOKEN@h.c.us-east-1.rds.amazonaws.com/orders?dbname=", "an empty second dbname"),
    ("postgresql://app:$TOKEN@h.c.us-east-1.rds.amazonaws.com/orders?host=evil.example.com&port=6432",
     "a second host and port"),
])
def test_query_parameters_never_make_the_dsn_disagree_with_the_keys(dsn: str, why: str) -> None:
    """Found by the property above: libpq lets query parameters override the URL, so a copied ``?user=``
    made the Secret's DSN log in as another user than its ``username`` key and the token named."""
    target = resolve(dsn=dsn)
    info = conninfo_to_dict(build_dsn(target, TOKEN))
    assert (target.username, target.database, target.host) == ("app", "orders", "h.c.us-east-1.rds.amazonaws.com")
    assert (info["user"], info["dbname"], info["host"], info["port"]) == (
        target.username, target.database, target.host, str(target.port)), why


@pytest.mark.parametrize("raw", [
    {"host": "h.c.us-east-1.rds.amazonaws.com", "username": "u", "database": "orders\nx"},
    {"dsn": "postgresql://u:$TOKEN@h.c.us-east-1.rds.amazonaws.com/orders%0Ax"},
    {"host": "h.c.us-east-1.rds.amazonaws.com", "username": "u", "target": {"labels": {"team": "a b"}}},
    {"host": "h.c.us-east-1.rds.amazonaws.com", "username": "u", "target": {"annotations": {"a/b/c": "x"}}},
])
def test_what_can_never_work_is_invalid_spec_not_a_retry_loop(raw: dict[str, Any]) -> None:
    """Found by the properties: a newline in the database name broke the pgpass line; labels and
    annotations the API server refuses made the Secret write fail for ever (KubernetesError, retried)."""
    assert not admission(raw)
    with pytest.raises((SpecError, TargetError)) as err:
        spec = parse_spec(raw)
        resolve(dsn=spec.dsn, host=spec.host, username=spec.username, database=spec.database)
    assert err.value.field in ("spec.database", "spec.dsn", "spec.target.labels", "spec.target.annotations")


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Any:
    yield
    if STATS:
        record("property tests (pure)", f"{sum(STATS.values())} generated specs: " + ", ".join(
            f"{n} {what}" for what, n in sorted(STATS.items())))
