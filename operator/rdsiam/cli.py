"""The ``rdsiam`` command: ``run`` (the operator), ``token``, ``check``, ``crd``.

Each subcommand imports what it needs when it runs, so ``rdsiam check`` works in an app image
that has only the standard library and ``rdsiam``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "aiohttp.access")


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
    handlers.CONFIG.concurrency = args.concurrency
    handlers.CONFIG.metrics_port = args.metrics_port
    handlers.CONFIG.leader_election = args.leader_election
    handlers.CONFIG.lease_namespace = args.lease_namespace
    handlers.CONFIG.lease_name = args.lease_name
    handlers.CONFIG.verify_timeout = args.verify_timeout
    handlers.CONFIG.verify_ca_file = args.verify_ca_file
    handlers.CONFIG.rotation_events = args.rotation_events
    handlers.CONFIG.tenancy = TenancyPolicy(
        allow_operator_identity=not args.no_operator_identity,
        require_service_account=args.require_service_account,
        allowed_role_arns=tuple(p.strip() for p in args.allowed_role_arns.split(",") if p.strip()) or ("*",),
        namespace_policy=args.namespace_policy)
    for warning in handlers.CONFIG.tenancy.warnings():
        logging.getLogger("rdsiam.tenancy").warning(warning)
    handlers.CONFIG.namespaces = tuple(args.namespace or ())
    # kopf runs the process; the operator's own informers watch (see rdsiam.operator.handlers).
    asyncio.run(kopf.operator(standalone=True, clusterwide=True, liveness_endpoint=args.liveness or None))
    return 0


def _token(args: argparse.Namespace) -> int:
    import boto3

    from rdsiam.operator.target import region_of

    region = args.region or region_of(args.host)
    if not region:
        print(f"rdsiam token: cannot infer the region from {args.host!r}; pass --region", file=sys.stderr)
        return 2
    client = boto3.Session().client("rds", region_name=region)
    print(client.generate_db_auth_token(
        DBHostname=args.host, Port=args.port, DBUsername=args.user, Region=region))
    return 0


def _crd(args: argparse.Namespace) -> int:
    from rdsiam.operator.crd import render

    sys.stdout.write(render())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":
        from rdsiam._check import main as check_main

        return check_main(argv[1:])

    parser = argparse.ArgumentParser(prog="rdsiam", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument("-n", "--namespace", action="append", help="watch this namespace (repeat); default: all")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                     help="liveness/readiness endpoint (empty to disable)")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    run.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    run.add_argument("--concurrency", type=int, default=16, help="refreshes in flight at once")
    run.add_argument("--leader-election", action="store_true", help="elect one active replica with a Lease")
    run.add_argument("--lease-namespace", default=None, help="namespace of the Lease (default: 'default')")
    run.add_argument("--lease-name", default="rdsiam-operator")
    run.add_argument("--require-service-account", action="store_true",
                     help="refuse resources without spec.serviceAccountName")
    run.add_argument("--no-operator-identity", action="store_true",
                     help="refuse signing with the operator's own role (unless the namespace is labelled)")
    run.add_argument("--allowed-role-arns", default="*",
                     help="comma-separated patterns spec.assumeRoleArn must match ({namespace} expands)")
    run.add_argument("--namespace-policy", action="store_true",
                     help="honour the rdsiam.io/allowed-role-arns annotation on namespaces")
    run.add_argument("--verify-timeout", type=float, default=5.0, help="seconds for spec.verify logins")
    run.add_argument("--verify-ca-file", default=None, metavar="PATH",
                     help="CA bundle (the RDS one) to check servers with when a DSN's sslrootcert (the app's "
                     "path) is not readable here; without it, such a login is not attempted")
    run.add_argument("--rotation-events", action="store_true",
                     help="post a Normal Event for every routine rotation too (default: first issue, changes, "
                     "recoveries and failures only)")
    run.set_defaults(func=_run)

    token = sub.add_parser("token", help="print an RDS IAM auth token from the local AWS credentials")
    token.add_argument("--host", required=True, help="the RDS endpoint hostname")
    token.add_argument("--port", type=int, default=5432)
    token.add_argument("--user", required=True)
    token.add_argument("--region", default=None, help="default: inferred from the hostname")
    token.set_defaults(func=_token)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(func=_crd)

    sub.add_parser("check", help="validate a mounted credential directory (rdsiam check --help)")

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
