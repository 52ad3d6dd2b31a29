"""Pure helpers of the operator's Kubernetes client."""

from __future__ import annotations

import json

import pytest

from rdsiam.operator.kubeapi import metadata_of

META = {"name": "orders-db", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
        "annotations": {"metadata": "a key named like the field", "x": '{"metadata":{"name":"not me"}}'}}
DATA = {"password": "dG9rZW4=", "dsn": "cG9zdGdyZXNxbDovLw=="}


@pytest.mark.parametrize("obj", [
    {"kind": "Secret", "apiVersion": "v1", "metadata": META, "data": DATA, "type": "Opaque"},  # kube-apiserver
    {"apiVersion": "v1", "kind": "Secret", "metadata": META, "data": DATA},  # the emulator
    {"metadata": META, "data": DATA},
], ids=["kube-apiserver", "emulator", "metadata-first"])
@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "indented"])
def test_metadata_of_decodes_the_objects_own_metadata(obj: dict[str, object], indent: int | None) -> None:
    raw = json.dumps(obj, indent=indent).encode()
    assert metadata_of(raw) == {"metadata": META}


def test_metadata_of_stops_after_the_metadata() -> None:
    raw = json.dumps({"kind": "Secret", "apiVersion": "v1", "metadata": META}).encode()[:-1] + b',"data":{"pass'
    assert metadata_of(raw) == {"metadata": META}  # the rest (cut short here) was never decoded


@pytest.mark.parametrize("obj", [
    {"data": {"note": '"metadata":{"name":"not me"}'}, "metadata": META},  # another field first
    {"kind": 'Se"cret', "metadata": META},
    {"status": {"metadata": {"name": "not me"}}, "apiVersion": "v1", "metadata": META},
])
def test_metadata_of_decodes_any_other_shape_whole(obj: dict[str, object]) -> None:
    assert metadata_of(json.dumps(obj).encode()) == {"metadata": META}


def test_metadata_of_without_metadata_or_not_an_object() -> None:
    assert metadata_of(b'{"kind":"Status"}') == {"metadata": {}}
    assert metadata_of(b'["metadata"]') == {"metadata": {}}
    assert metadata_of(b'{"kind":"Secret","metadata":"odd"}') == {"metadata": {}}
    with pytest.raises(ValueError):
        metadata_of(b'{"kind":"Secret","metadata":{"name":')



# A token-shaped string (not a live token), as an admission webhook might quote a Secret's data.
_TOKEN_SHAPED = ("orders.cluster-abc.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app&"
                 "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE%2F20260101%2Fus-east-1%2Frds-db"
                 "%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&"
                 "X-Amz-Signature=" + "ab12" * 16)


@pytest.mark.parametrize("shape", ["as sent", "glued to a letter", "cut mid-group", "glued and cut"])
def test_scrub_redacts_base64_of_a_token_however_it_is_cut(shape: str) -> None:
    import base64

    from rdsiam.operator.kubeapi import scrub

    encoded = base64.b64encode(_TOKEN_SHAPED.encode()).decode()
    quoted = {"as sent": encoded, "glued to a letter": "x" + encoded, "cut mid-group": encoded[:-5],
              "glued and cut": "ab" + encoded[:-3]}[shape]
    text = scrub(f'admission webhook "policy.example.com" denied the request: data.password: {quoted} is not allowed')
    leaked = "ab12ab12" in text or quoted in text
    assert not leaked and "<redacted>" in text and "policy.example.com" in text
