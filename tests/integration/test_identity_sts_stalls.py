"""An STS endpoint that accepts connections and never answers (a black-holed VPC endpoint, a proxy that
hangs): the operator's own IRSA credentials fail within its short STS timeouts, not botocore's 60 s per
attempt, and many identities do not queue behind asyncio's few default threads. Real sockets: a listening
socket that never answers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rdsiam.operator.aws import Identities, IdentityError, IdentityKey


@pytest.fixture
def silent_sts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(256)  # the kernel accepts; nobody answers
        port = int(srv.getsockname()[1])
        (tmp_path / "jwt").write_text("header.payload.signature")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/rdsiam-operator")
        monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "jwt"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        yield port


async def test_the_operators_own_irsa_refresh_uses_the_short_sts_timeout(silent_sts: int) -> None:
    ids = Identities(sts_timeout=1.0)
    await asyncio.to_thread(ids.prepare)
    started = time.perf_counter()
    with pytest.raises(IdentityError) as failed:
        await ids.get(IdentityKey())
    waited = time.perf_counter() - started
    assert failed.value.reason == "CredentialsUnavailable"
    # 1 s read timeout, one attempt: well under botocore's own 60 s (a generous bound: this is about
    # which timeout applies, not about speed)
    assert waited < 20, f"{waited:.1f} s: botocore's default timeouts applied"


async def test_many_identities_do_not_queue_behind_the_default_thread_pool(
    silent_sts: int, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The operator signs its AssumeRole calls with static keys here, so each call waits for STS only.
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE")
    monkeypatch.delenv("AWS_ROLE_ARN")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASTATICFORTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    ids = Identities(sts_timeout=1.0)
    await asyncio.to_thread(ids.prepare)
    keys = [IdentityKey(namespace=f"ns{i}", role_arn=f"arn:aws:iam::123456789012:role/r{i}") for i in range(24)]
    started = time.perf_counter()
    results = await asyncio.gather(*(ids.get(k) for k in keys), return_exceptions=True)
    waited = time.perf_counter() - started
    assert all(isinstance(r, IdentityError) for r in results)
    # 24 calls that each wait 1 s for STS: at once with enough threads; in four waves (4+ s) with asyncio's
    # default pool on 2 cores (6 threads)
    assert waited < 3.5, f"{waited:.1f} s: STS calls queued for threads"
