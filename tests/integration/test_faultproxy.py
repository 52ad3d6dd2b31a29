"""The fault proxy makes STS fail the way AWS does, and botocore reacts as it would against AWS."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from rdsiam.testing.faults import FaultProxy
from rdsiam.testing.sts import StsServer


@pytest.fixture
def irsa_via_proxy(sts: StsServer, sts_faults: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    role = sts.create_role("test-faults-irsa")
    for name, value in sts.irsa_env(role, tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts_faults.url)
    return role


def resolve() -> str:
    """Resolve credentials through botocore's default chain (IRSA); returns the access key id."""
    credentials = boto3.session.Session().get_credentials()
    assert credentials is not None
    return str(credentials.get_frozen_credentials().access_key)


def test_passes_through_and_counts(sts: StsServer, sts_faults: FaultProxy, irsa_via_proxy: str) -> None:
    akid = resolve()
    assert sts.lookup(akid) is not None
    assert sts_faults.counts["AssumeRoleWithWebIdentity"] == 1
    assert sum(sts_faults.injected.values()) == 0


def test_throttling_is_retried_by_botocore(sts_faults: FaultProxy, irsa_via_proxy: str) -> None:
    sts_faults.throttle(2)
    resolve()
    assert sts_faults.counts["AssumeRoleWithWebIdentity"] == 3
    assert sts_faults.injected["throttle"] == 2


def test_persistent_throttling_surfaces_as_throttling(sts_faults: FaultProxy, irsa_via_proxy: str) -> None:
    sts_faults.throttle(100)
    with pytest.raises(ClientError) as info:
        resolve()
    error = info.value.response["Error"]
    assert (error["Code"], error["Message"], error["Type"]) == ("Throttling", "Rate exceeded", "Sender")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert sts_faults.counts["AssumeRoleWithWebIdentity"] >= 2  # retried before giving up


@pytest.mark.parametrize(("status", "code"), [(503, "ServiceUnavailable"), (500, "InternalFailure")])
def test_server_errors(sts: StsServer, sts_faults: FaultProxy, status: int, code: str) -> None:
    client = boto3.session.Session(aws_access_key_id="AKIAX", aws_secret_access_key="x").client(
        "sts",
        endpoint_url=sts_faults.url,
        region_name=sts.region,
        config=Config(retries={"total_max_attempts": 1}),
    )
    sts_faults.fail(1, status=status)
    with pytest.raises(ClientError) as info:
        client.get_caller_identity()
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert client.get_caller_identity()["Account"] == sts.account_id  # only one request failed
    client.close()


def test_deny_matches_role_arns(sts: StsServer, sts_faults: FaultProxy, irsa_via_proxy: str) -> None:
    allowed = sts.create_role("test-faults-allowed")
    blocked = sts.create_role("test-faults-blocked")
    sts_faults.deny("arn:aws:iam::*:role/test-faults-blocked")
    client = boto3.session.Session().client("sts")
    assert client.assume_role(RoleArn=allowed, RoleSessionName="ok")["Credentials"]["AccessKeyId"]
    with pytest.raises(ClientError) as info:
        client.assume_role(RoleArn=blocked, RoleSessionName="no")
    error = info.value.response["Error"]
    assert error["Code"] == "AccessDenied" and info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert re.fullmatch(
        r"User: arn:aws:sts::123456789012:assumed-role/test-faults-irsa/\S+ is not authorized to perform: "
        r"sts:AssumeRole on resource: arn:aws:iam::123456789012:role/test-faults-blocked",
        error["Message"],
    )


def test_deny_web_identity(sts_faults: FaultProxy, irsa_via_proxy: str) -> None:
    sts_faults.deny(re.compile(r"role/test-faults-irsa$"))
    with pytest.raises(ClientError) as info:
        resolve()
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert info.value.response["Error"]["Message"] == "Not authorized to perform sts:AssumeRoleWithWebIdentity"


def test_delay_makes_clients_time_out(sts: StsServer, sts_faults: FaultProxy) -> None:
    def client(read_timeout: float) -> Any:
        return boto3.session.Session(aws_access_key_id="AKIAX", aws_secret_access_key="x").client(
            "sts",
            endpoint_url=sts_faults.url,
            region_name=sts.region,
            config=Config(read_timeout=read_timeout, retries={"total_max_attempts": 1}),
        )

    impatient = client(0.3)
    sts_faults.delay(2.0, n=1)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        impatient.get_caller_identity()
    assert time.monotonic() - started < 1.5
    impatient.close()
    # Only one request was held: the next one is answered. It gets a patient client, because on a
    # busy CI machine an undelayed round trip through the proxy and moto can itself exceed 0.3 s.
    patient = client(10.0)
    assert patient.get_caller_identity()["Account"] == sts.account_id
    assert sts_faults.injected["delay"] == 1
    patient.close()


def test_clear_resets_faults_and_counts(sts_faults: FaultProxy, irsa_via_proxy: str) -> None:
    sts_faults.throttle(100)
    sts_faults.deny("*")
    sts_faults.clear()
    resolve()
    assert sts_faults.counts == {"AssumeRoleWithWebIdentity": 1}


def test_standalone_proxy_lifecycle(sts: StsServer) -> None:
    with FaultProxy(sts.url) as proxy:
        url = proxy.url
        client = boto3.session.Session(aws_access_key_id="AKIAX", aws_secret_access_key="x").client(
            "sts", endpoint_url=url, region_name=sts.region
        )
        assert client.get_caller_identity()["Account"] == sts.account_id
        client.close()
    assert proxy.counts["GetCallerIdentity"] == 1
