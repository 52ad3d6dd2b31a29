"""The `rdsiam` command: `run` (the operator), `proxy`, `token`, `check`, `crd`.

Each subcommand imports what it needs when it runs, so `rdsiam check` works in an app image
that has only the standard library and `rdsiam`. Help text is printed as written: no reST.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "aiohttp.access", "leaderelection")

DESCRIPTION = """\
Amazon RDS IAM authentication for Kubernetes: an operator that keeps a fresh
IAM auth token in a Secret for each RdsIamCredential resource, and tools to
mint a token by hand and to check a mounted Secret from inside a pod."""

EPILOG = "Run 'rdsiam COMMAND --help' for what a command does and its options."

RUN_DESCRIPTION = """\
Run the operator: watch RdsIamCredential resources and keep each one's Secret
holding a fresh RDS IAM auth token (re-minted before its 15 minutes run out),
with the outcome in the resource's status conditions and Events. This is the
process the Helm chart (charts/rdsiam) runs; its values set these options."""

TOKEN_DESCRIPTION = """\
Print one RDS IAM auth token (valid 15 minutes) for --user at --host:--port,
signed with the local AWS credentials, like 'aws rds generate-db-auth-token'.
Credentials come from the AWS SDK's chain: environment variables, the shared
credentials/config files (AWS_PROFILE), web identity (IRSA), container
credentials (EKS Pod Identity, ECS), EC2 instance metadata."""

TOKEN_EPILOG = """\
example:
  HOST=orders.cluster-abc.us-east-1.rds.amazonaws.com
  PGPASSWORD="$(rdsiam token --host "$HOST" --user app_user)" \\
      psql "host=$HOST user=app_user dbname=orders sslmode=require\""""

PROXY_DESCRIPTION = """\
Run a local database proxy next to the app (a sidecar): apps connect to it
over plain TCP on loopback or a Unix socket with any or no password, and it
logs each connection in to the database named by the mounted Secret, as its
user, with the current token and TLS, then relays. PostgreSQL and MySQL.
Standard library only: the image needs nothing but Python and rdsiam."""

PROXY_EPILOG = """\
The client's user and database are ignored: the mount decides both.
Health (--health-port): /startup, /liveness, /readiness (ready while the mount
holds an unexpired token), /metrics (rdsiam_proxy_*). SIGTERM stops accepting
and lets open connections finish for up to --drain-timeout seconds.

example:
  rdsiam proxy --credential /var/run/secrets/rdsiam/orders-db --health-port 9090
  psql "host=127.0.0.1 port=5432 user=any dbname=any"
"""

CRD_DESCRIPTION = """\
Print the RdsIamCredential CustomResourceDefinition as YAML (the file in crds/,
which the Helm chart also installs), e.g. 'rdsiam crd | kubectl apply -f -'."""


def _run(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    from rdsiam.operator import handlers
    from rdsiam.operator.tenancy import TenancyPolicy

    kopf.configure(
        debug=args.log_level == "debug", verbose=args.log_level in ("debug", "info"),
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL)
    logging.getLogger().setLevel(args.log_level.upper())
    if args.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # botocore at DEBUG logs STS responses, credentials included: never let it.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    tenancy = TenancyPolicy(
        allow_operator_identity=not args.no_operator_identity,
        require_service_account=args.require_service_account,
        allowed_role_arns=tuple(p.strip() for p in args.allowed_role_arns.split(",") if p.strip()) or ("*",),
        namespace_policy=args.namespace_policy)
    for warning in tenancy.warnings():
        logging.getLogger("rdsiam.tenancy").warning(warning)
    config = handlers.Config(
        concurrency=args.concurrency, tenancy=tenancy, metrics_port=args.metrics_port,
        leader_election=args.leader_election, lease_namespace=args.lease_namespace, lease_name=args.lease_name,
        verify_timeout=args.verify_timeout, verify_ca_file=args.verify_ca_file,
        rotation_events=args.rotation_events)
    namespaces = list(args.namespace or ())
    # kopf watches (one stream per namespace given, else cluster-wide) and runs the handlers; leader
    # election is the operator's Lease (rdsiam.operator.election), not kopf's peering.
    asyncio.run(kopf.operator(
        standalone=True, clusterwide=not namespaces, namespaces=namespaces,
        liveness_endpoint=args.liveness or None, memo=kopf.Memo(config=config)))
    return 0


_PROFILE_FILES = "shared credentials/config files (profile {profile})"
# botocore's default chain (botocore.credentials.create_credential_resolver) by provider METHOD, named
# as users know each source. None: boto2-era files (AWS_CREDENTIAL_FILE, BOTO_CONFIG), not worth naming.
CREDENTIAL_SOURCES: dict[str, str | None] = {
    "env": "environment variables",
    "assume-role": _PROFILE_FILES,
    "assume-role-with-web-identity": "web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE)",
    "sso": _PROFILE_FILES,
    "shared-credentials-file": _PROFILE_FILES,
    "login": _PROFILE_FILES,
    "custom-process": _PROFILE_FILES,
    "config-file": _PROFILE_FILES,
    "ec2-credentials-file": None,
    "boto-config": None,
    "container-role": "container credentials (EKS Pod Identity / ECS)",
    "iam-role": "EC2 instance metadata",
}
NO_CREDENTIALS_HINT = ("set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                       "or run where IRSA/EKS Pod Identity is configured")


# Token files botocore reads when the environment names them: what each is, and what to check.
_TOKEN_FILES = {
    "AWS_WEB_IDENTITY_TOKEN_FILE": (
        "the IRSA token", "check the pod's projected token volume, or unset AWS_ROLE_ARN and "
        "AWS_WEB_IDENTITY_TOKEN_FILE outside such a pod"),
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": (
        "the EKS Pod Identity token", "check the pod's Pod Identity association, or unset "
        "AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE outside such a pod"),
}


def credential_sources(methods: Sequence[str], *, profile: str, imds_disabled: bool = False) -> str:
    """The providers botocore tried, in its order, as a user knows them (a new one by its METHOD)."""
    names: list[str] = []
    for method in methods:
        name = CREDENTIAL_SOURCES.get(method, method)
        if name is None:
            continue
        name = name.format(profile=profile)
        if method == "iam-role" and imds_disabled:
            name += " (off: AWS_EC2_METADATA_DISABLED)"
        if name not in names:
            names.append(name)
    return ", ".join(names)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def credentials_problem(exc: BaseException, session: Any, environ: Mapping[str, str]) -> str | None:
    """One line saying why no credentials could be had and what to check; None: not a credentials failure.

    botocore's and STS's messages name providers, files and roles, never keys, so they are quoted.
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ProfileNotFound

    if isinstance(exc, NoCredentialsError):
        try:
            methods = [str(getattr(p, "METHOD", type(p).__name__))
                       for p in session.get_component("credential_provider").providers]
        except Exception:  # the message matters more than the exact list
            methods = list(CREDENTIAL_SOURCES)
        profile = session.get_config_variable("profile") or "default"
        imds_off = environ.get("AWS_EC2_METADATA_DISABLED", "false").lower() == "true"
        tried = credential_sources(methods, profile=profile, imds_disabled=imds_off)
        return f"no AWS credentials found (tried: {tried}); {NO_CREDENTIALS_HINT}"
    if isinstance(exc, ProfileNotFound):
        profile = str(exc.kwargs.get("profile", ""))
        var = next((v for v in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE") if environ.get(v) == profile), None)
        files = [str(session.get_config_variable(v)) for v in ("config_file", "credentials_file")]
        return (f"AWS profile {profile!r}{f' (from {var})' if var else ''} is not in {files[0]} or {files[1]}; "
                f"name a profile defined there ('aws configure list-profiles') or unset {var or 'AWS_PROFILE'}")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return (f"AWS refused to issue credentials ({exc.operation_name}: {error.get('Code', '?')}): "
                f"{_one_line(str(error.get('Message', '')))}; check the role's trust policy and the identity "
                "signing the request")
    if isinstance(exc, BotoCoreError):
        return f"cannot get AWS credentials: {_one_line(str(exc))}"
    if isinstance(exc, OSError) and exc.filename:
        problem = f"cannot get AWS credentials: cannot read {exc.filename}"
        for var, (what, advice) in _TOKEN_FILES.items():
            if environ.get(var) == exc.filename:
                return f"{problem} ({var}, {what}): {exc.strerror}; {advice}"
        return f"{problem}: {exc.strerror}"
    return None


def _token(args: argparse.Namespace) -> int:
    import boto3
    import botocore.session

    from rdsiam.operator.target import DEFAULT_PORTS, region_of

    region = args.region or region_of(args.host)
    if not region:
        print(f"rdsiam token: cannot infer the region from {args.host!r}; pass --region", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else DEFAULT_PORTS[args.engine]
    session = botocore.session.Session()
    try:  # credentials are resolved when the client is made and, for refreshable ones, when signing
        client = boto3.Session(botocore_session=session).client("rds", region_name=region)
        token = client.generate_db_auth_token(DBHostname=args.host, Port=port, DBUsername=args.user, Region=region)
    except Exception as exc:
        problem = credentials_problem(exc, session, os.environ)
        if problem is None:
            raise
        print(f"rdsiam token: {problem}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _proxy(args: argparse.Namespace) -> int:
    from rdsiam._proxy import main as proxy_main

    return proxy_main(args)


def _crd(args: argparse.Namespace) -> int:
    from rdsiam.operator.crd import render

    sys.stdout.write(render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand but `check`, whose own parser lives with it (rdsiam._check)."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="rdsiam", description=DESCRIPTION, epilog=EPILOG, formatter_class=raw)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    run = sub.add_parser("run", help="run the operator (what the Helm chart runs)",
                         description=RUN_DESCRIPTION, formatter_class=raw)
    run.add_argument("-n", "--namespace", action="append",
                     help="watch only this namespace; repeat for several (default: all namespaces)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", metavar="URL",
                     help="serve the liveness/readiness probe here; empty to disable (default: %(default)s)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                     help="how much to log (default: %(default)s)")
    run.add_argument("--log-format", default="text", choices=["text", "json"],
                     help="text lines or one JSON object per line (default: %(default)s)")
    run.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                     help="serve Prometheus metrics on this port (default: no metrics)")
    run.add_argument("--concurrency", type=int, default=16, metavar="N",
                     help="token refreshes in flight at once (default: %(default)s)")
    run.add_argument("--leader-election", action="store_true",
                     help="elect one active replica with a Lease, for more than one replica")
    run.add_argument("--lease-namespace", default=None, metavar="NAMESPACE",
                     help="namespace of the Lease (default: 'default'; the chart passes its release namespace)")
    run.add_argument("--lease-name", default="rdsiam-operator", metavar="NAME",
                     help="name of the Lease (default: %(default)s)")
    run.add_argument("--require-service-account", action="store_true",
                     help="refuse resources without spec.serviceAccountName")
    run.add_argument("--no-operator-identity", action="store_true",
                     help="refuse signing with the operator's own role (unless the namespace is labelled)")
    run.add_argument("--allowed-role-arns", default="*", metavar="PATTERNS",
                     help="comma-separated patterns spec.assumeRoleArn must match ({namespace} expands) "
                     "(default: %(default)s, any role)")
    run.add_argument("--namespace-policy", action="store_true",
                     help="honour the rdsiam.io/allowed-role-arns annotation on namespaces")
    run.add_argument("--verify-timeout", type=float, default=5.0, metavar="SECONDS",
                     help="time allowed for each spec.verify login (default: %(default)s)")
    run.add_argument("--verify-ca-file", default=None, metavar="PATH",
                     help="CA bundle (the RDS one) to check servers with when a DSN's sslrootcert or ssl-ca (the app's "
                     "path) is not readable here; without it, such a login is not attempted")
    run.add_argument("--rotation-events", action="store_true",
                     help="post a Normal Event for every routine rotation too (default: first issue, changes, "
                     "recoveries and failures only)")
    run.set_defaults(func=_run)

    proxy = sub.add_parser("proxy", help="run a sidecar proxy that logs clients in with the token",
                           description=PROXY_DESCRIPTION, epilog=PROXY_EPILOG, formatter_class=raw)
    from rdsiam._proxy import add_arguments

    add_arguments(proxy)
    proxy.set_defaults(func=_proxy)

    token = sub.add_parser("token", help="print an RDS IAM auth token from the local AWS credentials",
                           description=TOKEN_DESCRIPTION, epilog=TOKEN_EPILOG, formatter_class=raw)
    token.add_argument("--host", required=True, help="the RDS endpoint hostname clients connect to")
    token.add_argument("--user", required=True, help="the database user (granted rds_iam, or "
                       "AWSAuthenticationPlugin on MySQL)")
    token.add_argument("--engine", default="postgres", choices=["postgres", "mysql"],
                       help="the database engine; picks the default port (default: %(default)s)")
    token.add_argument("--port", type=int, default=None,
                       help="the port clients connect to, part of what is signed "
                       "(default: 5432 for postgres, 3306 for mysql)")
    token.add_argument("--region", default=None, help="AWS region of the database (default: inferred from an "
                       "RDS hostname)")
    token.set_defaults(func=_token)

    sub.add_parser("check", help="validate a mounted credential Secret from inside a pod, optionally log in")

    crd = sub.add_parser("crd", help="print the RdsIamCredential CRD as YAML",
                         description=CRD_DESCRIPTION, formatter_class=raw)
    crd.set_defaults(func=_crd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        from rdsiam._check import main as check_main

        return check_main(argv[1:])
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
