"""``spec.verify`` (log in once with the fresh token) and ``spec.resolveCNAME`` (sign for the real endpoint)."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from rdsiam import _diagnose, _pgwire
from rdsiam.operator.reconcile import IDENTITY_ANN
from rdsiam.operator.target import Target, is_rds_hostname

logger = logging.getLogger("rdsiam.verify")
Verifier = Callable[[Target, dict[str, Any]], Awaitable[tuple[str, str, str]]]


def make_verifier(timeout: float = 5.0) -> Verifier:
    async def verify(target: Target, secret: dict[str, Any]) -> tuple[str, str, str]:
        if target.engine != "postgres":
            return "Unknown", "NotSupported", "spec.verify supports PostgreSQL only; MySQL is not probed."
        data = secret["data"]
        token = base64.b64decode(data["password"]).decode()
        options = dict(target.options)
        identity = (secret.get("metadata", {}).get("annotations") or {}).get(IDENTITY_ANN, "")
        result = await _pgwire.probe(
            target.host, target.port, target.username, token, target.database,
            sslmode=options.get("sslmode", "require"), sslrootcert=options.get("sslrootcert"),
            hostaddr=options.get("hostaddr"), timeout=timeout)
        del token
        if result.ok:
            return "True", "Connected", (
                f"Logged in as {target.username} to {target.host}:{target.port}/{target.database} "
                f"{'over TLS' if result.tls else 'without TLS'}; SELECT 1 succeeded in {result.elapsed_ms:.0f} ms.")
        ctx = _diagnose.Context(
            user=target.username, host=target.host, port=target.port, database=target.database,
            region=target.region, signing_host=target.signing_host, identity=identity,
            sslmode=options.get("sslmode", "require"))
        reason, message = _diagnose.explain(result.kind, result.code, result.message, ctx, stage=result.stage)
        return "False", reason, message

    return verify


def make_resolver() -> Callable[[str], Awaitable[str | None]]:
    """Follow a host's CNAME chain to an RDS endpoint (dnspython; ``RDSIAM_DNS_SERVER=ip:port`` for tests)."""

    async def resolve(host: str) -> str | None:
        if is_rds_hostname(host):
            return host
        import dns.asyncresolver
        import dns.exception
        import dns.rdatatype

        resolver = dns.asyncresolver.Resolver(configure=not os.environ.get("RDSIAM_DNS_SERVER"))
        if os.environ.get("RDSIAM_DNS_SERVER"):
            addr, _, port = os.environ["RDSIAM_DNS_SERVER"].rpartition(":")
            resolver.nameservers = [addr]
            resolver.port = int(port)
        name = host
        for _ in range(8):  # CNAME chains longer than this are a loop or a mistake
            try:
                answer = await resolver.resolve(name, dns.rdatatype.CNAME, lifetime=3.0)
            except dns.exception.DNSException:
                break
            name = str(answer[0].target).rstrip(".")
            if is_rds_hostname(name):
                return name
        logger.debug("No RDS endpoint behind %s (stopped at %s)", host, name)
        return None

    return resolve
