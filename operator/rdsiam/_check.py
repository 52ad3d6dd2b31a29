"""``rdsiam check DIR [--connect]``: validate a mounted rdsiam Secret, optionally log in.

Prints what it finds (layout, keys, target, token facts, expiry, DSN consistency, file
modes) and, with ``--connect``, whether the database accepts the token, with the likely
causes when it does not. Never prints the token, the password or a signature.
Exit status: 0 all good, 1 a problem was found, 2 bad usage.

    $ rdsiam check /var/run/secrets/rdsiam/orders-db --connect --sslrootcert /etc/rds-ca.pem

Logins use the operator's own probes (:mod:`rdsiam._pgwire`, :mod:`rdsiam._mysqlwire`: standard
library only, so no driver is needed in the image) and a refusal is explained by :mod:`rdsiam._diagnose`
exactly as ``spec.verify`` explains it in the ``Connected`` condition, preceded by what the token itself
shows. sslmode (MySQL: ssl-mode), sslrootcert (ssl-ca) and hostaddr default to the mounted DSN's. A login
that fails in an unexpected way is explained by :func:`diagnose`, which runs every function in
:data:`DIAGNOSERS`; append to that list to teach it new cases.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from rdsiam import _diagnose, _mysqlwire, _pgwire
from rdsiam._mounted import DATA_LINK, CredentialError, MountedCredential, MountWarning, Snapshot, _human

__all__ = ["DIAGNOSERS", "TokenInfo", "diagnose", "main", "parse_token", "redact"]

_SIGNATURE = re.compile(r"(X-Amz-(?:Signature|Security-Token|Credential)(?:=|%3D))[^&\s'\"]+", re.IGNORECASE)
_RDS_HOST = re.compile(r"\.rds\.amazonaws\.com(\.cn)?$|\.rds\.[a-z0-9-]+\.amazonaws\.com$")


@dataclass(frozen=True)
class TokenInfo:
    """What an RDS IAM token says about itself (nothing secret)."""

    host: str
    port: int | None
    db_user: str
    region: str
    service: str
    signed_at: dt.datetime | None
    lifetime: int | None
    session: bool  # signed with temporary (STS) credentials

    @property
    def expires_at(self) -> dt.datetime | None:
        if self.signed_at is None or self.lifetime is None:
            return None
        return self.signed_at + dt.timedelta(seconds=self.lifetime)


def parse_token(token: str) -> TokenInfo | None:
    """Parse ``HOST:PORT/?Action=connect&DBUser=...``; ``None`` if it is no RDS IAM token."""
    if "/?" not in token or "X-Amz-Signature" not in token:
        return None
    hostport, _, query = token.partition("/?")
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if params.get("Action") != "connect":
        return None
    host, _, port_text = hostport.rpartition(":")
    if not host:
        host, port_text = hostport, ""
    scope = params.get("X-Amz-Credential", "").split("/")
    signed_at = None
    try:
        signed_at = dt.datetime.strptime(params.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ").replace(
            tzinfo=dt.UTC
        )
    except ValueError:
        pass
    lifetime = int(params["X-Amz-Expires"]) if params.get("X-Amz-Expires", "").isdigit() else None
    return TokenInfo(
        host=host,
        port=int(port_text) if port_text.isdigit() else None,
        db_user=params.get("DBUser", ""),
        region=scope[2] if len(scope) > 2 else "",
        service=scope[3] if len(scope) > 3 else "",
        signed_at=signed_at,
        lifetime=lifetime,
        session="X-Amz-Security-Token" in params,
    )


def redact(text: str, *secrets: str) -> str:
    """``text`` without the given secrets (raw or percent-encoded) or any SigV4 signature."""
    from urllib.parse import quote

    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe=""), quote(secret, safe="/:")}:
                text = text.replace(form, "<token>")
    return _SIGNATURE.sub(r"\1<redacted>", text)


def _is_mysql(snap: Snapshot) -> bool:
    return snap.dsn.lower().startswith(("mysql", "mariadb")) or snap.port == 3306


# -- diagnosis -------------------------------------------------------------------------------


def _diagnose_postgres_login(error: str, snap: Snapshot) -> list[str]:
    low = error.lower()
    if "pam authentication failed" not in low:
        return []
    token = parse_token(snap.password)
    causes: list[str] = []  # what the token itself shows first, then the usual suspects
    if token is not None:
        if token.db_user and token.db_user != snap.username:
            causes.append(f"the token is signed for user {token.db_user!r}, not {snap.username!r}")
        if token.host != snap.host and not _RDS_HOST.search(token.host):
            causes.append(f"the token is signed for {token.host}, which is not an RDS endpoint (a CNAME?)")
        elif token.host != snap.host:
            causes.append(f"the token is signed for {token.host} but the mount connects to {snap.host}")
        if token.expires_at is not None and token.expires_at < dt.datetime.now(dt.UTC):
            causes.append("the token expired (15 minutes after signing): the Secret is not being refreshed")
    causes += [
        f"the database user {snap.username!r} lacks the rds_iam role or does not exist: "
        f'CREATE USER "{snap.username}"; GRANT rds_iam TO "{snap.username}";',
        "the signing identity is not allowed rds-db:connect on "
        f"arn:aws:rds-db:REGION:ACCOUNT:dbuser:RESOURCE_ID/{snap.username} (the resource id, db-... or "
        "cluster-..., not the instance name)",
        "IAM database authentication is not enabled on the instance or cluster",
        "the token must be signed for the database's region",
    ]
    return causes


def _diagnose_postgres_other(error: str, snap: Snapshot) -> list[str]:
    low = error.lower()
    causes: list[str] = []
    if "password authentication failed" in low:
        causes.append(
            f"{snap.username!r} is not an IAM user, so the server checked a password instead: "
            f'GRANT rds_iam TO "{snap.username}";'
        )
    if "no encryption" in low or "ssl off" in low:
        causes.append("IAM logins require TLS: use sslmode=require or verify-full")
    if "database" in low and "does not exist" in low:
        causes.append(f"the database {snap.dbname!r} does not exist: fix spec.database or the DSN's path")
    return causes


def _diagnose_network(error: str, snap: Snapshot) -> list[str]:
    low = error.lower()
    if "could not translate host name" in low or "name or service not known" in low or "getaddrinfo" in low:
        return [f"{snap.host!r} does not resolve from here: check the hostname and the pod's DNS"]
    if "connection refused" in low:
        return [
            f"nothing listens on {snap.host}:{snap.port}: check the port and that the instance is available"
        ]
    if "timeout" in low or "timed out" in low:
        return [
            f"no answer from {snap.host}:{snap.port}: check the security group allows this pod, "
            "and routes/NACLs between the pod and the database"
        ]
    if "certificate" in low or "ssl" in low and "verify" in low:
        return [
            "TLS verification failed: pass the RDS CA bundle as sslrootcert (ssl_ca for MySQL); "
            "verify-full needs the certificate to name the host you connect to"
        ]
    return []


def _diagnose_mysql(error: str, snap: Snapshot) -> list[str]:
    if "1045" not in error and "access denied" not in error.lower():
        return []
    return [
        f"the MySQL user {snap.username!r} must be created with "
        f"CREATE USER '{snap.username}' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'",
        "the client must send the token with mysql_clear_password over TLS "
        "(PyMySQL does; mysqlclient needs LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN=1)",
        "the signing identity is not allowed rds-db:connect on this user's dbuser ARN",
    ]


#: Functions ``(error_text, snapshot) -> causes``; :func:`diagnose` runs them in order.
DIAGNOSERS: list[Callable[[str, Snapshot], list[str]]] = [
    _diagnose_postgres_login,
    _diagnose_postgres_other,
    _diagnose_network,
    _diagnose_mysql,
]


def diagnose(error_text: str, snapshot: Snapshot) -> list[str]:
    """Likely causes of a failed connection, most likely first (never containing the token)."""
    causes: list[str] = []
    for diagnoser in DIAGNOSERS:
        for cause in diagnoser(error_text, snapshot):
            if cause not in causes:
                causes.append(cause)
    return [redact(c, snapshot.password) for c in causes]


# -- the command ----------------------------------------------------------------------------


@dataclass
class _Report:
    out: TextIO
    problems: list[str] = field(default_factory=list)
    # The mounted password: redacted from every line, whichever key it turns up in (and from the repr).
    secret: str = field(default="", repr=False)

    def line(self, label: str, text: str) -> None:
        print(f"{label + ':':<11} {redact(text, self.secret)}", file=self.out)

    def problem(self, text: str) -> None:
        text = redact(text, self.secret)
        self.problems.append(text)
        print(f"PROBLEM:    {text}", file=self.out)

    def note(self, text: str) -> None:
        print(f"note:       {redact(text, self.secret)}", file=self.out)


def _check_layout(path: str, report: _Report) -> None:
    link = os.path.join(path, DATA_LINK)
    if os.path.islink(link):
        report.line(
            "layout",
            f"Secret volume written by kubelet ({DATA_LINK} -> {os.readlink(link)}): follows rotations",
        )
    else:
        report.problem(
            f"no {DATA_LINK} symlink: this is a subPath mount or copied files, which never update; "
            "mount the Secret as a volume directory without subPath"
        )


def _check_modes(path: str, snap: Snapshot, report: _Report) -> None:
    modes: dict[str, int] = {}
    for name in ("password", *sorted(snap.extra)):
        try:
            modes[name] = stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode)
        except OSError:
            continue
    if modes:
        report.line("modes", ", ".join(f"{k} {v:04o}" for k, v in modes.items()))
    if "pgpass" in modes and modes["pgpass"] & 0o077:
        report.problem(
            "pgpass is readable by group/others: libpq ignores it; set the volume's defaultMode to 0400"
        )


def _check_token(snap: Snapshot, report: _Report, now: float) -> None:
    token = parse_token(snap.password)
    if token is None:
        report.problem(f"the password ({len(snap.password)} bytes) is not an RDS IAM token")
        return
    kind = "temporary (STS session) credentials" if token.session else "long-term access key"
    signed = token.signed_at.strftime("%Y-%m-%dT%H:%M:%SZ") if token.signed_at else "?"
    report.line(
        "token",
        f"RDS IAM token, {len(snap.password)} bytes, for user {token.db_user!r} at "
        f"{token.host}:{token.port}, region {token.region}, signed {signed} with {kind}",
    )
    if token.db_user != snap.username:
        report.problem(f"the token is for user {token.db_user!r} but the username key says {snap.username!r}")
    if token.host != snap.host or token.port != snap.port:
        report.note(
            f"the token is signed for {token.host}:{token.port} while connections go to "
            f"{snap.host}:{snap.port} (fine for spec.signingHost; otherwise logins fail)"
        )
    if token.service != "rds-db":
        report.problem(f"the token's signing scope is {token.service!r}, not 'rds-db'")
    if token.expires_at is not None and token.expires_at.timestamp() < now:
        report.problem(f"the token's own lifetime ended {_human(now - token.expires_at.timestamp())} ago")


def _check_expiry(snap: Snapshot, report: _Report, now: float) -> None:
    if snap.expires_at is None:
        report.note("no expires-at key")
        return
    left = snap.expires_at.timestamp() - now
    when = snap.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if left <= 0:
        report.problem(
            f"expired {_human(left)} ago ({when}): the Secret is not being refreshed; check the "
            "RdsIamCredential's Ready condition (kubectl describe rdsiamcredential NAME)"
        )
    elif left < 120:
        report.line("expires", f"{when} (in {_human(left)})")
        report.note(
            "less than 2 minutes left: the next rotation should already be visible; is the operator running?"
        )
    else:
        report.line("expires", f"{when} (in {_human(left)})")


def _check_dsn(snap: Snapshot, report: _Report) -> None:
    try:
        parts = urlsplit(snap.dsn)
        dsn_password = unquote(parts.password or "")
        shown = parts._replace(netloc=f"{parts.username or ''}:***@{parts.hostname or ''}:{parts.port or ''}")
    except ValueError as exc:
        report.problem(f"the dsn key does not parse as a URL: {redact(str(exc), snap.password)}")
        return
    report.line("dsn", shown.geturl())
    if dsn_password != snap.password:
        report.problem("the dsn's password is not the password key (the Secret's keys disagree)")
    if parts.username and unquote(parts.username) != snap.username:
        report.problem(
            f"the dsn's user {unquote(parts.username)!r} is not the username key {snap.username!r}"
        )


def _dsn_options(snap: Snapshot) -> dict[str, str]:
    """Query options of the mounted DSN (sslmode, sslrootcert, hostaddr, ...), never the password."""
    try:
        query = urlsplit(snap.dsn).query
    except ValueError:
        return {}
    return {k: v[0] for k, v in parse_qs(query).items() if k not in ("password", "passwd")}


def _token_evidence(snap: Snapshot) -> list[str]:
    """What the token itself shows, for a login the server refused on the IAM path."""
    token = parse_token(snap.password)
    if token is None:
        return [f"the password ({len(snap.password)} bytes) is not an RDS IAM token"]
    causes = []
    if token.db_user and token.db_user != snap.username:
        causes.append(f"the token is signed for user {token.db_user!r}, not {snap.username!r}")
    if token.port is not None and token.port != snap.port:
        causes.append(f"the token is signed for port {token.port}, but the mount connects to port {snap.port}")
    if token.expires_at is not None and token.expires_at < dt.datetime.now(dt.UTC):
        causes.append("the token expired (15 minutes after signing): the Secret is not being refreshed")
    return causes


def _probe(snap: Snapshot, *, mysql: bool, sslmode: str, sslrootcert: str | None, hostaddr: str | None,
           timeout: float) -> _pgwire.ProbeResult:
    if mysql:
        coro = _mysqlwire.probe(snap.host, snap.port, snap.username, snap.password, snap.dbname, ssl_mode=sslmode,
                                ssl_ca=sslrootcert, hostaddr=hostaddr, timeout=timeout)
    else:
        coro = _pgwire.probe(snap.host, snap.port, snap.username, snap.password, snap.dbname, sslmode=sslmode,
                             sslrootcert=sslrootcert, hostaddr=hostaddr, timeout=timeout,
                             application_name="rdsiam-check")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code: own loop, own thread
        return pool.submit(asyncio.run, coro).result()


def _connect(snap: Snapshot, args: argparse.Namespace, *, mysql: bool) -> tuple[bool, str, list[str]]:
    """Log in like the operator's spec.verify (stdlib wire probe) and diagnose a refusal the same way."""
    options = _dsn_options(snap)
    if mysql:  # --sslmode takes MySQL's names or libpq's
        if args.sslmode:
            options["ssl-mode"] = args.sslmode
        if args.sslrootcert:
            options["ssl-ca"] = args.sslrootcert
        sslmode, sslrootcert = _mysqlwire.tls_settings(options)
    else:
        sslmode = args.sslmode or options.get("sslmode") or "prefer"  # libpq's default without one
        sslrootcert = args.sslrootcert or options.get("sslrootcert")
    hostaddr = args.hostaddr or options.get("hostaddr")
    result = _probe(snap, mysql=mysql, sslmode=sslmode, sslrootcert=sslrootcert, hostaddr=hostaddr,
                    timeout=args.timeout)
    engine = "mysql" if mysql else "postgres"
    if result.ok:
        version = f" on {_diagnose.server_name(engine, result.server_version)}" if result.server_version else ""
        note = _diagnose.unchecked(snap.username, result.auth)  # "" when the server asked for the token
        return True, (f"logged in as {snap.username}{version} ({'TLS' if result.tls else 'no TLS'}, "
                      f"login and SELECT 1 in {result.elapsed_ms:.0f} ms){'.' if note else ''}{note}"), []
    token = parse_token(snap.password)
    ctx = _diagnose.Context(
        user=snap.username, host=snap.host, port=snap.port, database=snap.dbname,
        region=token.region if token else "", signing_host=token.host if token else "", sslmode=sslmode,
        hostaddr=hostaddr or "", auth=result.auth, engine=engine, tls=result.tls)
    diagnosis = _diagnose.diagnose(result.kind, result.code, result.message, ctx, stage=result.stage)
    causes = _token_evidence(snap) if result.auth == "cleartext" else []
    causes += [c for c in diagnosis.causes if c not in causes]
    return False, f"{diagnosis.reason}: {diagnosis.summary}", causes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rdsiam check",
        description="Validate a mounted rdsiam Secret directory (layout, keys, token, expiry, DSN,\n"
        "file modes) from inside the app's pod, and with --connect log in with it.\n"
        "Never prints the token.",
        epilog="exit status: 0 all good, 1 a problem was found, 2 bad usage\n\n"
        "example:\n  rdsiam check /var/run/secrets/rdsiam/orders-db --connect --sslrootcert /etc/rds-ca.pem",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "directory", help="where the Secret is mounted, e.g. /var/run/secrets/rdsiam/orders-db"
    )
    parser.add_argument("--connect", action="store_true", help="also log in to the database with the token")
    parser.add_argument("--sslmode", default=None,
                        help="libpq sslmode, or MySQL ssl-mode, for --connect (default: the DSN's, else prefer, "
                        "like libpq and the mysql client)")
    parser.add_argument("--sslrootcert", help="CA bundle to verify the server (default: the DSN's sslrootcert, "
                        "MySQL ssl-ca)")
    parser.add_argument("--hostaddr", help="dial this address instead of resolving the host (default: the DSN's)")
    parser.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds (default: 10)")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run ``rdsiam check``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    report = _Report(out or sys.stdout)
    path = os.path.abspath(args.directory)
    now = time.time()
    report.line("mount", path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MountWarning)  # reported below as a problem instead
        try:
            snap = MountedCredential(path, allow_expired=True).snapshot()
        except CredentialError as exc:
            report.problem(str(exc))
            return 1
    report.secret = snap.password
    _check_layout(path, report)
    keys = ["username", "password", "host", "port", "dbname", "dsn"]
    if snap.expires_at is not None:
        keys.append("expires-at")
    report.line("keys", ", ".join([*keys, *sorted(snap.extra)]))
    engine = "MySQL" if _is_mysql(snap) else "PostgreSQL"
    report.line("target", f"{engine} {snap.username}@{snap.host}:{snap.port}/{snap.dbname}")
    _check_token(snap, report, now)
    _check_expiry(snap, report, now)
    _check_dsn(snap, report)
    _check_modes(path, snap, report)
    if args.connect:
        causes: list[str] | None = None  # the operator's diagnosis (rdsiam._diagnose)
        try:
            ok, message, causes = _connect(snap, args, mysql=engine == "MySQL")
        except Exception as exc:  # a probe failing in an unexpected way is still a finding
            ok, message = False, f"{type(exc).__name__}: {exc}"
        message = redact(message, snap.password)
        if ok:
            report.line("connect", f"OK: {message}")
        else:
            report.problem(f"login failed: {message}")
            causes = diagnose(message, snap) if causes is None else [redact(c, snap.password) for c in causes]
            for i, cause in enumerate(causes, 1):
                print(f"  likely cause {i}: {cause}", file=report.out)
    if report.problems:
        print(f"{len(report.problems)} problem(s) found", file=report.out)
        return 1
    print("OK", file=report.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
