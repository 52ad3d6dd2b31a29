"""Pure helpers of the operator's Kubernetes calls."""

from __future__ import annotations

import json

import pytest

from rdsiam.operator.kube import ApiError, _api_error, _cause


def test_an_api_servers_status_becomes_an_api_error_with_its_reason_and_message() -> None:
    raw = json.dumps({"kind": "Status", "code": 422, "reason": "Invalid", "message": "data: too long"}).encode()
    exc = _api_error(422, raw)
    assert (exc.status, exc.reason, exc.message, exc.temporary) == (422, "Invalid", "data: too long", False)
    assert _api_error(429, b"").temporary and _api_error(503, b"").temporary


def test_a_non_json_answer_keeps_its_first_200_bytes_as_the_message() -> None:
    exc = _api_error(502, b"<html>bad gateway</html>" + b"x" * 500)
    assert exc.reason == "" and exc.message.startswith("<html>bad gateway") and len(exc.message) == 200


def test_the_innermost_urllib3_failure_is_named() -> None:
    import urllib3

    wrapped = urllib3.exceptions.MaxRetryError(None, "/x", reason=urllib3.exceptions.ProxyError(
        "proxy said no", ConnectionRefusedError()))
    assert type(_cause(wrapped)) is urllib3.exceptions.ProxyError  # "could not reach ... (ProxyError)"
    assert isinstance(ApiError(503, "ServiceUnavailable", "x"), Exception)


# A token-shaped string (not a live token), as an admission webhook might quote a Secret's data.
_TOKEN_SHAPED = ("orders.cluster-abc.us-east-1.rds.amazonaws.com:5432/?Action=connect&DBUser=app&"
                 "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE%2F20260101%2Fus-east-1%2Frds-db"
                 "%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&"
                 "X-Amz-Signature=" + "ab12" * 16)


@pytest.mark.parametrize("shape", ["as sent", "glued to a letter", "cut mid-group", "glued and cut"])
def test_scrub_redacts_base64_of_a_token_however_it_is_cut(shape: str) -> None:
    import base64

    from rdsiam.operator.kube import scrub

    encoded = base64.b64encode(_TOKEN_SHAPED.encode()).decode()
    quoted = {"as sent": encoded, "glued to a letter": "x" + encoded, "cut mid-group": encoded[:-5],
              "glued and cut": "ab" + encoded[:-3]}[shape]
    text = scrub(f'admission webhook "policy.example.com" denied the request: data.password: {quoted} is not allowed')
    leaked = "ab12ab12" in text or quoted in text
    assert not leaked and "<redacted>" in text and "policy.example.com" in text
