"""Explain a failed RDS IAM login (standard library only; shared by the operator and ``rdsiam check``).

RDS answers every failed IAM login with one opaque line, ``PAM authentication failed for user "U"``
(MySQL: ``ERROR 1045 (28000): Access denied for user 'U'@'HOST' (using password: YES)``).
What the client knows narrows it down: where the probe stopped (DNS, TCP, TLS, authentication, query),
which authentication method the server asked for (a cleartext password means the server took the
IAM path, i.e. the user is in ``rds_iam`` or, on MySQL, ``IDENTIFIED WITH AWSAuthenticationPlugin``;
MD5/SCRAM or another MySQL plugin means it did not), and what the token was signed
for (endpoint, port, region, identity). :func:`diagnose` returns a reason, a summary of what
happened and the likely causes, most likely first, each saying what to check; :func:`explain`
joins them into one message for a status condition or an Event.

Inputs are a :class:`rdsiam._pgwire.ProbeResult`'s ``kind``, ``code``, ``message`` and ``stage``, from
:mod:`rdsiam._pgwire` or :mod:`rdsiam._mysqlwire` (``Context.engine``; ``code`` is then the MySQL error number).
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
    engine: str = "postgres"  # postgres | mysql; for MySQL, sslmode holds the ssl-mode (REQUIRED, VERIFY_CA, ...)
    tls: bool | None = None  # whether the probe's connection was encrypted (ProbeResult.tls), when known


@dataclasses.dataclass(frozen=True)
class _Words:
    """How each engine names what the messages mention."""

    name: str
    port: int
    mode: str  # the DSN option choosing TLS
    ca: str  # the DSN option naming the CA bundle
    require: str
    verify_ca: str
    verify_full: str
    plain: tuple[str, ...]  # modes that allow a connection without TLS


_PG = _Words("PostgreSQL", 5432, "sslmode", "sslrootcert", "require", "verify-ca", "verify-full",
             ("disable", "allow", "prefer"))
_MY = _Words("MySQL", 3306, "ssl-mode", "ssl-ca", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY",
             ("DISABLED", "PREFERRED"))


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


def server_name(engine: str, version: str) -> str:
    """``PostgreSQL 16.4``, ``MySQL 8.0.39``; a version string naming its product (MariaDB) as it is."""
    if "mariadb" in version.lower():
        return version
    return f"{'MySQL' if engine == 'mysql' else 'PostgreSQL'} {version}"


def unchecked(user: str, auth: str) -> str:
    """A note for a login that succeeded without the server asking for the token (``auth``: what it asked)."""
    if auth == "cleartext":
        return ""
    return (f" The server never asked for the token ({auth or 'trust'}): {user!r} logs in without a password, so "
            "the token was not checked; an IAM user would be asked for it.")


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
    w = _MY if ctx.engine == "mysql" else _PG
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
            f"port {ctx.port} is not a {w.name} server (a different service or a proxy that holds "
            "connections): check spec.port or the DSN's port",
            "the database is overloaded, starting or failing over: check its status and metrics"))
    if kind == "refused":
        return Diagnosis(CONNECTION_REFUSED, f"The connection was refused: {text}.", (
            f"nothing listens on port {ctx.port}: check spec.port or the DSN's port (RDS {w.name} "
            f"defaults to {w.port}; RDS Proxy and custom ports differ)",
            "the instance is stopped, rebooting or failing over: check its status in the RDS console",
            *((f"hostaddr={ctx.hostaddr} in the DSN points at another machine than {ctx.host}",)
              if ctx.hostaddr else ())))
    if kind == "network":
        return Diagnosis(NETWORK_ERROR, f"Network error talking to {where}: {text}.", (
            "something between the pod and the database (proxy, load balancer, service mesh sidecar) "
            f"dropped the connection: check it passes {w.name}'s TLS negotiation through",
            "the database restarted or failed over at that moment: check its events"))
    if kind == "tls":
        causes = [f"{w.ca} must be the RDS CA bundle (global-bundle.pem from "
                  "truststore.pki.rds.amazonaws.com) and readable where the client runs"]
        if ctx.sslmode == w.verify_full:
            causes.insert(0, f"{w.mode}={w.verify_full} checks that the certificate names {ctx.host!r}; an RDS "
                             "certificate names only the RDS endpoint: when connecting through a CNAME, "
                             f"alias or tunnel use {w.mode}={w.verify_ca}, or connect to the endpoint itself")
        return Diagnosis(TLS_ERROR, f"TLS to {where} failed: {text}.", tuple(causes))
    if ctx.engine == "mysql":
        return _diagnose_mysql(kind, code, text, ctx, where, stage)
    if kind == "no-tls" or "ssl off" in low or ("pg_hba.conf" in low and "no encryption" in low):
        return _tls_required(ctx, where, text, w)
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
    return _other(kind, stage, where, f"{text} (SQLSTATE {code})" if code else (text or kind), _PG)


def _other(kind: str, stage: str, where: str, detail: str, w: _Words) -> Diagnosis:
    """What no rule above explains: a failed query, another protocol, or the server's words alone."""
    if stage == "query":
        return Diagnosis(VERIFY_FAILED, f"Logged in to {where}, but SELECT 1 failed: {detail}.")
    if kind == "protocol":
        other = "PostgreSQL is spec.engine: postgres" if w is _MY else "MySQL is spec.engine: mysql"
        return Diagnosis(VERIFY_FAILED, f"{where} did not speak the {w.name} protocol: {detail}.", (
            f"spec.port or the DSN's port points at another service ({other})",))
    return Diagnosis(VERIFY_FAILED, f"{where} refused the connection: {detail}.")


def _tls_required(ctx: Context, where: str, text: str, w: _Words, *more: str) -> Diagnosis:
    to_tls = f"set {w.mode}={w.require}, or {w.verify_full} with {w.ca} set to the RDS CA bundle"
    causes = [f"the DSN sets {w.mode}={ctx.sslmode}: IAM logins must use TLS; {to_tls}" if ctx.sslmode in w.plain
              else f"IAM logins must use TLS; {to_tls}",
              "a proxy in front of the database terminates or strips TLS: connect with TLS end to end", *more]
    return Diagnosis(TLS_REQUIRED, f"{where} requires TLS for IAM logins and the connection did not use it: {text}.",
                     tuple(causes))


def _create_user(user: str) -> str:
    return f"CREATE USER '{user}'@'%' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'"


def _diagnose_mysql(kind: str, code: str, text: str, ctx: Context, where: str, stage: str) -> Diagnosis:
    """The MySQL side of :func:`diagnose`, after the kinds both engines share (DNS, TCP, TLS)."""
    low = text.lower()
    not_iam = (f"the database user {ctx.user!r} is not IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS', or "
               "does not exist (MySQL answers both alike): as the master user run "
               f"{_create_user(ctx.user)} (ALTER USER for an existing user)")
    if code == "3159" or "insecure transport" in low or (code == "1045" and ctx.tls is False):
        return _tls_required(ctx, where, text, _MY, *(() if code == "3159" else (
            f"a user created REQUIRE SSL refuses any login without TLS, and so does RDS for IAM users; if "
            f"{ctx.user!r} is no IAM user at all: {_create_user(ctx.user)}",)))
    if kind == "no-tls":
        return _tls_required(ctx, where, text, _MY)
    if kind == "password" or (code == "1045" and ctx.auth != "cleartext"):
        asked = text if kind == "password" else f"it checked {ctx.auth or 'a password'} and answered: {text}"
        return Diagnosis(LOGIN_REJECTED, f"{where} did not treat {ctx.user!r} as an IAM user: {asked}.", (
            not_iam, "the user name is misspelled or in the wrong case: check spec.username or the DSN's user"))
    if code == "1045":
        return Diagnosis(LOGIN_REJECTED, f"{where} rejected the IAM login for {ctx.user!r}: {text}.",
                         tuple(_iam_causes(ctx)))
    login = f"The {'IAM ' if ctx.auth == 'cleartext' else ''}login as {ctx.user!r} worked, but {where} refused"
    if code == "1049":
        return Diagnosis(LOGIN_REJECTED, f"{login} the database: {text}.", (
            f"the database {ctx.database!r} does not exist: fix spec.database or the DSN's path",))
    if code == "1044":
        return Diagnosis(LOGIN_REJECTED, f"{login} the database: {text}.", (
            f"{ctx.user!r} has no privileges on {ctx.database!r}, or it does not exist (MySQL answers both "
            f"alike to such a user): GRANT them (GRANT ... ON `{ctx.database}`.* TO '{ctx.user}'@'%'), or fix "
            "spec.database or the DSN's path",))
    if code == "1130":
        return Diagnosis(LOGIN_REJECTED, f"{where} refused the connection: {text}.", (
            f"{ctx.user!r} exists only for other client hosts: create it as '{ctx.user}'@'%'",))
    if code in ("1040", "1203"):
        return Diagnosis(VERIFY_FAILED, f"{where} refused the connection: {text}.", (
            "the database (max_connections) or the user (max_user_connections) ran out of connections: check "
            "pooling in the apps",))
    if code == "1129":
        return Diagnosis(VERIFY_FAILED, f"{where} refused the connection: {text}.", (
            "too many broken connections from this host (max_connect_errors): find the client that breaks them "
            "off, then FLUSH HOSTS",))
    return _other(kind, stage, where, text or kind, _MY)


def _iam_causes(ctx: Context) -> list[str]:
    """Likely causes of ``PAM authentication failed`` (MySQL: 1045 after the token was asked for): the server
    took the IAM path and refused the token."""
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
    if ctx.engine == "mysql":
        causes.append(f"less likely: {ctx.user!r} is not IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS' "
                      f"({_create_user(ctx.user)}); such users are normally asked for another method instead")
    else:
        causes.append(f"less likely: {ctx.user!r} is not in rds_iam (GRANT rds_iam TO \"{ctx.user}\"); such users "
                      "are normally asked for a password instead")
    return causes
