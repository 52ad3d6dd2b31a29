"""``spec.verify`` (log in once with the fresh token, PostgreSQL or MySQL) and ``spec.resolveCNAME`` (sign
for the real endpoint)."""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rdsiam import _diagnose, _mysqlwire, _pgwire
from rdsiam.operator import reasons
from rdsiam.operator.reconcile import IDENTITY_ANN
from rdsiam.operator.target import Target, is_rds_hostname

logger = logging.getLogger("rdsiam.verify")
Verifier = Callable[[Target, dict[str, Any]], Awaitable[tuple[str, str, str]]]
Resolver = Callable[[str], Awaitable[str | None]]
MAX_CNAME_CHAIN = 8  # longer chains are a loop or a mistake
DNS_LIFETIME = 3.0  # seconds per lookup


def make_verifier(timeout: float = 5.0, ca_file: str | None = None) -> Verifier:
    """Log in with the Secret's token the way the app would (TLS per the DSN's sslmode, or ssl-mode/ssl-ca for
    MySQL), run SELECT 1.

    Returns ``(status, reason, message)`` for the ``Connected`` condition. The token goes only where the app
    would send it: when the DSN has the server's certificate verified (``_pgwire.verifies_server``) against
    a CA file (``sslrootcert``, MySQL ``ssl-ca``) the operator's pod cannot read (it is the app's path), the
    server is checked against ``ca_file`` (``--verify-ca-file``: the operator's own copy of the RDS CA
    bundle); without one, nothing is sent and the condition says why (``Unknown``).
    """

    async def verify(target: Target, secret: dict[str, Any]) -> tuple[str, str, str]:
        options = dict(target.options)
        mysql = target.engine == "mysql"
        if mysql:  # mode: as the DSN names it (ssl-mode), sslmode: libpq's equivalent, whose TLS rules apply
            mode, rootcert = _mysqlwire.tls_settings(options)
            sslmode, mode_option, ca_option = _mysqlwire.libpq_mode(mode), "ssl-mode", "ssl-ca"
        else:
            sslmode = mode = options.get("sslmode") or "prefer"  # libpq's default, what the app gets without one
            rootcert, mode_option, ca_option = options.get("sslrootcert"), "sslmode", "sslrootcert"
        note = ""
        if rootcert and rootcert != "system" and not os.access(rootcert, os.R_OK):
            if not _pgwire.verifies_server(sslmode, rootcert):
                rootcert = None  # prefer, allow, disable: libpq verifies nothing either
            elif ca_file and os.access(ca_file, os.R_OK):
                note = (f" The server certificate was checked against the operator's CA bundle {ca_file} "
                        f"(--verify-ca-file): {ca_option} {rootcert} is the app's path.")
                rootcert = ca_file
            else:  # the app verifies the server
                return "Unknown", reasons.CERTIFICATE_NOT_VERIFIABLE, (
                    f"Not probed: the app checks the server's certificate ({mode_option}={mode}, {ca_option} "
                    f"{rootcert}), that file is not readable in the operator's pod (it is the app's path), and "
                    "the operator sends a token only to a server it can check as the app would. Give the "
                    "operator the RDS CA bundle: mount it (chart: extraVolumes/extraVolumeMounts) and pass "
                    "--verify-ca-file=PATH (chart: extraArgs)" + (f"; {ca_file} is not readable" if ca_file else "")
                    + ".")
        identity = (secret.get("metadata", {}).get("annotations") or {}).get(IDENTITY_ANN, "")
        token = base64.b64decode(secret["data"]["password"]).decode()
        try:
            if mysql:
                result = await _mysqlwire.probe(
                    target.host, target.port, target.username, token, target.database, ssl_mode=mode,
                    ssl_ca=rootcert, hostaddr=options.get("hostaddr"), timeout=timeout)
            else:
                result = await _pgwire.probe(
                    target.host, target.port, target.username, token, target.database, sslmode=sslmode,
                    sslrootcert=rootcert, hostaddr=options.get("hostaddr"), timeout=timeout)
        finally:
            del token
        logger.debug("Verify %s@%s:%d: %s in %.1f ms (stage %s)", target.username, target.host, target.port,
                     "ok" if result.ok else result.kind, result.elapsed_ms, result.stage)
        if result.ok:
            version = result.server_version and f" ({_diagnose.server_name(target.engine, result.server_version)})"
            return "True", _diagnose.CONNECTED, (
                f"Logged in as {target.username} to {target.host}:{target.port}/{target.database}{version} "
                f"{'over TLS' if result.tls else 'WITHOUT TLS'} with the token signed for "
                f"{target.signing_endpoint}; login and SELECT 1 took {result.elapsed_ms:.0f} ms."
                f"{_diagnose.unchecked(target.username, result.auth)}{note}")
        ctx = _diagnose.Context(
            user=target.username, host=target.host, port=target.port, database=target.database,
            region=target.region, signing_host=target.signing_host, identity=identity, sslmode=mode,
            hostaddr=options.get("hostaddr", ""), auth=result.auth, engine=target.engine, tls=result.tls)
        diagnosis = _diagnose.diagnose(result.kind, result.code, result.message, ctx, stage=result.stage)
        return "False", diagnosis.reason, diagnosis.message + note

    return verify


class EndpointNotResolved(LookupError):
    """``spec.resolveCNAME`` found no RDS endpoint behind the host; the message says why and what to do."""


def make_resolver(server: str | None = None) -> Resolver:
    """Follow a host's CNAME chain to the first RDS endpoint name (dnspython).

    Uses the system resolver configuration, or ``server`` / ``RDSIAM_DNS_SERVER=ip:port`` (tests).
    Returns the endpoint, or raises :class:`EndpointNotResolved`: the operator never signs for a name
    that is not an RDS endpoint.
    """
    server = server or os.environ.get("RDSIAM_DNS_SERVER") or None

    def make() -> Any:
        import dns.asyncresolver

        resolver = dns.asyncresolver.Resolver(configure=server is None)
        if server is not None:
            addr, _, port = server.rpartition(":")
            resolver.nameservers = [addr.strip("[]")]
            resolver.port = int(port)
        return resolver

    cache: list[Any] = []

    async def resolve(host: str) -> str | None:
        name = host.rstrip(".")
        if is_rds_hostname(name):
            return name
        import dns.exception
        import dns.rdatatype
        import dns.resolver

        if not cache:
            cache.append(make())
        resolver = cache[0]
        start = time.perf_counter()
        chain = [name]
        for _ in range(MAX_CNAME_CHAIN):
            try:
                answer = await resolver.resolve(name, dns.rdatatype.CNAME, search=False, lifetime=DNS_LIFETIME)
            except dns.resolver.NXDOMAIN:
                where = f"{host} does not exist in DNS" if len(chain) == 1 else \
                    f"the CNAME chain {' -> '.join(chain)} ends at a name that does not exist"
                raise EndpointNotResolved(
                    f"spec.resolveCNAME: {where} (NXDOMAIN), so there is no RDS endpoint to sign for. Check the "
                    "host name, or set spec.signingHost to the RDS endpoint.") from None
            except dns.resolver.NoAnswer:
                break  # no CNAME here: the end of the chain
            except dns.exception.DNSException as exc:
                if isinstance(exc, dns.exception.Timeout):
                    why = f"no answer within {DNS_LIFETIME:g} s"
                elif isinstance(exc, dns.resolver.NoNameservers):
                    why = "every name server failed (SERVFAIL or REFUSED)"
                else:
                    why = f"{type(exc).__name__}: {str(exc)[:160]}"
                raise EndpointNotResolved(
                    f"spec.resolveCNAME: looking up the CNAME of {name} failed ({why}); retrying with backoff. "
                    "Check the operator pod's DNS, or set spec.signingHost to the RDS endpoint.") from None
            name = str(answer.rrset[0].target.to_text(omit_final_dot=True))
            chain.append(name)
            if is_rds_hostname(name):
                logger.debug("Resolved %s to the RDS endpoint %s in %.1f ms", host, " -> ".join(chain[1:]),
                             (time.perf_counter() - start) * 1000)
                return name
        else:
            raise EndpointNotResolved(
                f"spec.resolveCNAME: the CNAME chain of {host} is longer than {MAX_CNAME_CHAIN} "
                f"({' -> '.join(chain)}...): a loop? Set spec.signingHost to the RDS endpoint.")
        if len(chain) == 1:
            raise EndpointNotResolved(
                f"spec.resolveCNAME: {host} is not a CNAME (it has no CNAME record), so it names no RDS endpoint "
                "and the operator does not sign a token for it. A Route 53 alias record hides its target: set "
                "spec.signingHost to the RDS endpoint (NAME.ID.REGION.rds.amazonaws.com) instead.")
        raise EndpointNotResolved(
            f"spec.resolveCNAME: the CNAME chain {' -> '.join(chain)} reaches no RDS endpoint name "
            "(NAME.ID.REGION.rds.amazonaws.com), so the operator does not sign a token for it. Point the CNAME "
            "at the RDS endpoint, or set spec.signingHost to it.")

    return resolve
