"""Explain a failed RDS IAM login (standard library only; shared by the operator and ``rdsiam check``).

RDS answers every failed IAM login with one opaque line, ``PAM authentication failed for user "U"``.
What the client knows narrows it down: where the probe stopped (DNS, TCP, TLS, authentication, query),
which authentication method the server asked for (a cleartext password means the server took the
IAM path, i.e. the user is in ``rds_iam``; MD5/SCRAM means it did not), and what the token was signed
for (endpoint, port, region, identity). :func:`diagnose` returns a reason, a summary of what
happened and the likely causes, most likely first, each saying what to check; :func:`explain`
joins them into one message for a status condition or an Event.

Inputs are a :class:`rdsiam._pgwire.ProbeResult`'s ``kind``, ``code``, ``message`` and ``stage``.
"""

from __future__ import annotations

import dataclasses
import re

_RDS_HOST = re.compile(
    r"^(?:[a-z0-9-]+\.)+(?P<region>[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+)\.rds\.amazonaws\.com(?:\.cn)?\.?$", re.I)

# Reasons of the `Connected` condition (kept equal to rdsiam.operator.reasons by a unit test).
CONNECTED = "Connected"
LOGIN_REJECTED = "LoginRejected"
TLS_REQUIRED = "TLSRequired"
TLS_ERROR = "TLSError"
DNS_ERROR = "DNSError"
CONNECT_TIMEOUT = "ConnectTimeout"
CONNECTION_REFUSED = "ConnectionRefused"
NETWORK_ERROR = "NetworkError"
VERIFY_FAILED = "VerifyFailed"
REASONS = frozenset({CONNECTED, LOGIN_REJECTED, TLS_REQUIRED, TLS_ERROR, DNS_ERROR, CONNECT_TIMEOUT,
                     CONNECTION_REFUSED, NETWORK_ERROR, VERIFY_FAILED})


@dataclasses.dataclass(frozen=True)
class Context:
    user: str
    host: str  # the host the client dials (and, with verify-full, the name the certificate must carry)
    port: int
    database: str
    region: str = ""  # the region the token is signed for
    signing_host: str = ""  # the endpoint the token is signed for ("" = host)
    identity: str = ""  # principal ARN that signed, when known
    sslmode: str = "require"
    hostaddr: str = ""  # the address dialled instead of resolving host, if any
    auth: str = ""  # the authentication method the server asked for (ProbeResult.auth)


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    reason: str
    summary: str  # what happened, with the server's own words
    causes: tuple[str, ...] = ()  # likely causes, most likely first, each saying what to check

    @property
    def message(self) -> str:
        if not self.causes:
            return self.summary
        if len(self.causes) == 1:
            return f"{self.summary} Check: {self.causes[0]}."
        numbered = " ".join(f"({i}) {c}." for i, c in enumerate(self.causes, 1))
        return f"{self.summary} Likely causes, most likely first: {numbered}"


def region_of(host: str) -> str:
    m = _RDS_HOST.match(host)
    return m.group("region").lower() if m else ""


def explain(kind: str, code: str, message: str, ctx: Context, *, stage: str = "") -> tuple[str, str]:
    """(reason, message) for a failed probe; see :func:`diagnose`."""
    d = diagnose(kind, code, message, ctx, stage=stage)
    return d.reason, d.message


def diagnose(kind: str, code: str, message: str, ctx: Context, *, stage: str = "") -> Diagnosis:
    """The reason, a summary and the likely causes of a failed probe (``kind`` as in ``ProbeResult``)."""
    where = f"{ctx.host}:{ctx.port}" + (f" (dialled at {ctx.hostaddr})" if ctx.hostaddr else "")
    text = message.rstrip(".")
    low = message.lower()
    if kind == "dns":
        return Diagnosis(DNS_ERROR, f"Cannot resolve the database host: {text}.", (
            f"the host name {ctx.host!r} is misspelled: check spec.host or the DSN's host",
            "the name resolves only inside the database's VPC or a private hosted zone: check that the "
            "cluster's DNS can resolve it (kubectl run -it --rm dns --image=busybox -- nslookup HOST)",
            "a short name or a Service name is relative to the namespace that resolves it: use the fully "
            "qualified name (NAME.NAMESPACE.svc.cluster.local or the RDS endpoint)"))
    if kind == "timeout":
        if stage in ("dns", "connect"):
            return Diagnosis(CONNECT_TIMEOUT, f"No TCP connection to {where}: {text}.", (
                "the database's security group does not allow inbound traffic on this port from the "
                "pods (or nodes) that connect: add an inbound rule for their security group or CIDR",
                "network ACLs, route tables, VPC peering or Transit Gateway routes between the cluster "
                "and the database drop the traffic",
                "the instance is stopped, rebooting or failing over: check its status in the RDS console"))
        return Diagnosis(CONNECT_TIMEOUT, f"{text[:1].upper()}{text[1:]}.", (
            f"port {ctx.port} is not a PostgreSQL server (a different service or a proxy that holds "
            "connections): check spec.port or the DSN's port",
            "the database is overloaded, starting or failing over: check its status and metrics"))
    if kind == "refused":
        return Diagnosis(CONNECTION_REFUSED, f"The connection was refused: {text}.", (
            f"nothing listens on port {ctx.port}: check spec.port or the DSN's port (RDS PostgreSQL "
            "defaults to 5432; RDS Proxy and custom ports differ)",
            "the instance is stopped, rebooting or failing over: check its status in the RDS console",
            *((f"hostaddr={ctx.hostaddr} in the DSN points at another machine than {ctx.host}",)
              if ctx.hostaddr else ())))
    if kind == "network":
        return Diagnosis(NETWORK_ERROR, f"Network error talking to {where}: {text}.", (
            "something between the pod and the database (proxy, load balancer, service mesh sidecar) "
            "dropped the connection: check it passes PostgreSQL's TLS negotiation through",
            "the database restarted or failed over at that moment: check its events"))
    if kind == "tls":
        causes = ["sslrootcert must be the RDS CA bundle (global-bundle.pem from "
                  "truststore.pki.rds.amazonaws.com) and readable where the client runs"]
        if ctx.sslmode == "verify-full":
            causes.insert(0, f"sslmode=verify-full checks that the certificate names {ctx.host!r}; an RDS "
                             "certificate names only the RDS endpoint: when connecting through a CNAME, "
                             "alias or tunnel use sslmode=verify-ca, or connect to the endpoint itself")
        return Diagnosis(TLS_ERROR, f"TLS to {where} failed: {text}.", tuple(causes))
    if kind == "no-tls" or "ssl off" in low or ("pg_hba.conf" in low and "no encryption" in low):
        causes = [f"the DSN sets sslmode={ctx.sslmode}: IAM logins must use TLS; set sslmode=require, or "
                  "verify-full with sslrootcert set to the RDS CA bundle"
                  if ctx.sslmode in ("disable", "allow", "prefer") else
                  "IAM logins must use TLS; set sslmode=require, or verify-full with sslrootcert set to the "
                  "RDS CA bundle",
                  "a proxy in front of the database terminates or strips TLS: connect with TLS end to end"]
        return Diagnosis(TLS_REQUIRED, f"{where} requires TLS for IAM logins and the connection did not use "
                                       f"it: {text}.", tuple(causes))
    if kind == "password" or "password authentication failed" in low:
        what = text if kind == "password" else f"it answered: {text}"
        return Diagnosis(LOGIN_REJECTED, f"{where} did not treat {ctx.user!r} as an IAM user: {what}.", (
            f"the database user {ctx.user!r} is not in rds_iam, or does not exist (PostgreSQL answers both "
            f'alike): as the master user run CREATE USER "{ctx.user}" (if missing) and GRANT rds_iam TO '
            f'"{ctx.user}"',
            "the user name is misspelled or in the wrong case: check spec.username or the DSN's user"))
    if "pam authentication failed" in low:
        return Diagnosis(LOGIN_REJECTED, f"{where} rejected the IAM login for {ctx.user!r}: {text}.",
                         tuple(_iam_causes(ctx)))
    if code == "3D000" or ("database" in low and "does not exist" in low):
        return Diagnosis(LOGIN_REJECTED, f"The IAM login as {ctx.user!r} worked, but {where} refused the "
                                         f"database: {text}.", (
            f"the database {ctx.database!r} does not exist: fix spec.database or the DSN's path (without "
            "one, PostgreSQL uses the user name as the database name)",))
    if code == "53300" or "too many connections" in low:
        return Diagnosis(VERIFY_FAILED, f"{where} refused the connection: {text}.", (
            "the database ran out of connection slots (max_connections): check pooling in the apps",))
    if code.startswith("57P"):
        return Diagnosis(VERIFY_FAILED, f"{where} is not accepting connections: {text}.", (
            "the database is starting, shutting down or failing over: check its status and events",))
    if stage == "query":
        return Diagnosis(VERIFY_FAILED, f"Logged in to {where}, but SELECT 1 failed: {text}.")
    if kind == "protocol":
        return Diagnosis(VERIFY_FAILED, f"{where} did not speak the PostgreSQL protocol: {text}.", (
            "spec.port or the DSN's port points at another service (MySQL is spec.engine: mysql)",))
    detail = f"{text} (SQLSTATE {code})" if code else (text or kind)
    return Diagnosis(VERIFY_FAILED, f"{where} refused the connection: {detail}.")


def _iam_causes(ctx: Context) -> list[str]:
    """Likely causes of ``PAM authentication failed``: the server took the IAM path and refused the token."""
    signing = ctx.signing_host or ctx.host
    endpoint_region = region_of(signing)
    same = signing.lower().rstrip(".") == ctx.host.lower().rstrip(".")
    causes: list[str] = []
    if ctx.region and endpoint_region and ctx.region != endpoint_region:
        causes.append(f"the token is signed for region {ctx.region} but {signing} is in {endpoint_region}: "
                      "remove or correct spec.region")
    if not same:
        causes.append(f"the token is signed for {signing}:{ctx.port} (spec.signingHost/resolveCNAME) but the client "
                      f"dials {ctx.host}: RDS accepts a token only for its own endpoint, so that must be the "
                      "endpoint this host leads to")
    elif not endpoint_region:
        causes.append(f"the token is signed for {signing}, which is not an RDS endpoint name (a CNAME, alias or "
                      "tunnel?): set spec.signingHost to the RDS endpoint, or spec.resolveCNAME: true")
    causes.append(f"the signing identity {ctx.identity or '(unknown)'} lacks rds-db:connect on "
                  f"arn:aws:rds-db:{ctx.region or 'REGION'}:ACCOUNT:dbuser:RESOURCE_ID/{ctx.user} (the db-... or "
                  "cluster-... resource id, not the name): check its policy, boundary and SCPs")
    causes.append("IAM database authentication is disabled on the instance or cluster")
    if same and endpoint_region:
        causes.append(f"{signing}:{ctx.port} is not the database's own endpoint and port (a port forward?)")
    causes.append("the token or the credentials that signed it expired, or the operator's clock is off")
    causes.append(f"less likely: {ctx.user!r} is not in rds_iam (GRANT rds_iam TO \"{ctx.user}\"); such users are "
                  "normally asked for a password instead")
    return causes
