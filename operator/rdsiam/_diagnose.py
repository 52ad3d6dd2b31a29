"""Explain a refused RDS IAM login (standard library only; shared by the operator and ``rdsiam check``).

RDS answers every IAM failure with one opaque line, ``PAM authentication failed for user "U"``.
What the client knows (user, signing host, connecting host, region, TLS, signing identity) narrows
it down; :func:`explain` returns a condition reason and a message listing the likely causes in order
and what to check for each.
"""

from __future__ import annotations

import dataclasses
import re

_RDS_HOST = re.compile(r"\.[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+\.rds\.amazonaws\.com(?:\.cn)?\.?$", re.I)


@dataclasses.dataclass(frozen=True)
class Context:
    user: str
    host: str  # the host the client dials
    port: int
    database: str
    region: str = ""
    signing_host: str = ""  # the endpoint the token was signed for
    identity: str = ""  # principal ARN that signed, when known
    sslmode: str = "require"


def explain(kind: str, code: str, message: str, ctx: Context, *, stage: str = "") -> tuple[str, str]:
    """(reason, message) for a failed probe. ``kind``/``code``/``message`` as in ``_pgwire.ProbeResult``."""
    where = f"{ctx.host}:{ctx.port}"
    signing = ctx.signing_host or ctx.host
    if kind == "dns":
        return "DNSError", (f"Cannot resolve {ctx.host!r}: {message}. Check the hostname (spec.host / the DSN), "
                            "the pod's DNS, and that the endpoint is reachable from this VPC (private DNS).")
    if kind == "timeout":
        return "ConnectTimeout", (f"No answer from {where} ({message}). Check the database's security group "
                                  "allows this pod's traffic on the port, NACLs and routes, and that the instance "
                                  "is available.")
    if kind == "refused":
        return "ConnectionRefused", (f"{where} refused the connection. Check the port (spec.port / the DSN) and "
                                     "that the instance or proxy is running and listening there.")
    if kind == "network":
        return "NetworkError", f"Network error talking to {where}: {message}."
    if kind == "tls":
        return "TLSError", (f"TLS to {where} failed: {message}. With sslmode=verify-full the certificate must "
                            "name the host you dial and chain to sslrootcert (the RDS CA bundle); a CNAME needs "
                            "sslmode=verify-ca or require.")
    low = message.lower()
    if kind == "no-tls" or "ssl off" in low or ("pg_hba.conf" in low and "no encryption" in low):
        return "TLSRequired", (f"{where} requires TLS for IAM logins and the connection did not use it "
                               f"(sslmode={ctx.sslmode}). Set sslmode=require (or verify-full with the RDS CA "
                               "bundle) in the DSN's options.")
    if "pam authentication failed" in low or "password authentication failed" in low:
        causes = []
        if "password authentication failed" in low:
            causes.append(f'the user {ctx.user!r} is not an IAM user, so its password was checked instead: run '
                          f'GRANT rds_iam TO "{ctx.user}";')
        else:
            causes.append(f'the database user lacks the rds_iam role or does not exist: run CREATE USER '
                          f'"{ctx.user}"; GRANT rds_iam TO "{ctx.user}";')
        causes.append(
            f"the signing identity {ctx.identity or '(unknown)'} is not allowed rds-db:connect on "
            f"arn:aws:rds-db:{ctx.region or 'REGION'}:ACCOUNT:dbuser:RESOURCE_ID/{ctx.user} (the instance's or "
            "cluster's resource id, db-... / cluster-..., not its name)")
        if signing != ctx.host or not _RDS_HOST.search(ctx.host):
            causes.append(
                f"the token is signed for {signing}:{ctx.port}, which must be the real RDS endpoint of the "
                f"database behind {ctx.host}; for a CNAME set spec.signingHost (or spec.resolveCNAME)")
        else:
            causes.append(f"the token is signed for {signing}:{ctx.port}; it must be this exact endpoint and port")
        causes.append(f"the region {ctx.region or '(unknown)'} must be the database's region")
        causes.append("IAM database authentication must be enabled on the instance or cluster")
        causes.append("the token may have expired (15 minutes) or its signing credentials expired first")
        numbered = " ".join(f"({i}) {c}." for i, c in enumerate(causes, 1))
        return "LoginRejected", (f"{where} rejected the IAM login for {ctx.user!r} ({message}). "
                                 f"Likely causes: {numbered}")
    if code == "3D000" or ("database" in low and "does not exist" in low):
        return "LoginRejected", (f"The login worked but database {ctx.database!r} does not exist on {where}: "
                                 "fix spec.database / the DSN's path.")
    if stage == "query":
        return "VerifyFailed", f"Logged in to {where} but SELECT 1 failed: {message}."
    return "VerifyFailed", f"{where} refused the connection: {message or kind} (SQLSTATE {code or '-'})."
