"""TokenRequest: ServiceAccount tokens signed by the emulator, verifiable with ``KubeEmulator.verify_token``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest

from rdsiam.testing.kube import KubeApiError, KubeClient, KubeEmulator


@pytest.fixture(scope="module")
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        emulator.apply_manifest(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "orders-app", "namespace": "default"},
            }
        )
        yield emulator


@pytest.fixture
def client(emu: KubeEmulator) -> Iterator[KubeClient]:
    client = emu.client()
    yield client
    client.close()


TOKEN = "/api/v1/namespaces/default/serviceaccounts/{}/token"


def test_token_request_returns_a_jwt_with_service_account_claims(emu: KubeEmulator, client: KubeClient) -> None:
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": ["sts.amazonaws.com"], "expirationSeconds": 3600},
    }
    before = int(time.time())
    answer = client.create(TOKEN.format("orders-app"), request)
    assert (answer["kind"], answer["apiVersion"]) == ("TokenRequest", "authentication.k8s.io/v1")
    assert answer["spec"]["audiences"] == ["sts.amazonaws.com"] and answer["spec"]["expirationSeconds"] == 3600
    token = answer["status"]["token"]

    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = emu.verify_token(token, "sts.amazonaws.com")
    assert claims["iss"] == emu.issuer == emu.url

    sa = client.get("/api/v1/namespaces/default/serviceaccounts/orders-app")
    assert claims["sub"] == "system:serviceaccount:default:orders-app"
    assert claims["aud"] == ["sts.amazonaws.com"]
    assert claims["kubernetes.io"] == {
        "namespace": "default",
        "serviceaccount": {"name": "orders-app", "uid": sa["metadata"]["uid"]},
    }
    assert before <= claims["iat"] <= claims["exp"] - 3600 <= int(time.time())
    assert answer["status"]["expirationTimestamp"].endswith("Z")
    with pytest.raises(jwt.InvalidAudienceError):
        emu.verify_token(token, "someone-else")


def test_token_request_for_a_missing_service_account_is_404(client: KubeClient) -> None:
    with pytest.raises(KubeApiError) as exc:
        client.create(TOKEN.format("nobody"), {"spec": {"audiences": ["x"]}})
    assert (exc.value.code, exc.value.message) == (404, 'serviceaccounts "nobody" not found')


def test_token_request_rejects_short_expirations(client: KubeClient) -> None:
    with pytest.raises(KubeApiError) as exc:
        client.create(TOKEN.format("orders-app"), {"spec": {"audiences": ["x"], "expirationSeconds": 60}})
    assert exc.value.code == 422
    assert exc.value.message == (
        'TokenRequest.authentication.k8s.io "" is invalid: '  # sic: the real server names no object
        "spec.expirationSeconds: Invalid value: 60: may not specify a duration less than "
        "10 minutes"
    )
