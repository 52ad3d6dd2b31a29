"""A local AWS STS (and IAM) endpoint reached the way IRSA reaches STS on EKS.

:class:`StsServer` runs moto's ``ThreadedMotoServer`` on ``127.0.0.1`` (free port) behind a small
WSGI layer that counts API calls by ``Action``, can force the lifetime of issued credentials, and
records every credential STS hands out so :meth:`StsServer.lookup` can give the secret key to a
verifier (``rdsiam.testing.sigv4``) exactly as AWS would check it::

    with StsServer(region="us-east-1") as sts:
        role = sts.create_role("orders-db-connect")
        env = sts.irsa_env(role, tmp_path)        # AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, ...
        # a process (or boto3 in-process, after os.environ.update(env)) now resolves credentials
        # through botocore's default chain: AssumeRoleWithWebIdentity against this server.
        sts.calls("AssumeRoleWithWebIdentity")   # -> 1

Known gaps (moto 5.x behaviour, checked in its source):

- moto does not verify the web identity token (any JWT-shaped string works), does not evaluate
  trust policies (anyone may assume any role, even one that was never created), does not check
  request signatures, and does not enforce STS limits (``DurationSeconds`` below 900 or above the
  role's maximum, 1 h for chained role sessions, throttling). Use ``rdsiam.testing.faults`` for
  throttling and denials.
- ``GetSessionToken``/``GetFederationToken`` return moto's fixed example keys; they are recorded
  here like any other issued credential, but every such call returns the same key.
- moto keeps its state in process-global backends: two ``StsServer`` objects in one process share
  roles and users, and ``moto.mock_aws`` (which resets backends) wipes roles created here.
  Credentials issued through this server are also recorded by the server itself, so ``lookup``
  keeps working for them after such a reset.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = ["Issued", "StsServer"]

# Marks requests made by the server object itself (create_role, warm-up): they are not counted.
_ADMIN_MARKER = "rdsiam-testing-sts-admin"
_CREDENTIAL_ACTIONS = frozenset(
    {"AssumeRole", "AssumeRoleWithWebIdentity", "AssumeRoleWithSAML", "GetSessionToken", "GetFederationToken"}
)
_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CREDENTIAL_EXPIRATION",
)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Issued:
    """A credential AWS issued: what a service needs to check a signature made with it."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    arn: str  # the assumed-role (or IAM user) ARN
    expiration: datetime | None  # aware UTC; None for long-term IAM user keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _parse_time(text: str) -> datetime:
    return _aware(datetime.fromisoformat(text.strip()))


class _Layer:
    """WSGI middleware between the HTTP server and moto: counting, duration override, capture."""

    def __init__(self, app: WsgiApp, owner: StsServer) -> None:
        self.app = app
        self.owner = owner

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        content_type = environ.get("CONTENT_TYPE", "")
        if body and "x-www-form-urlencoded" in content_type:
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action")
        if action and _ADMIN_MARKER not in environ.get("HTTP_USER_AGENT", ""):
            self.owner._count(action)
        duration = self.owner._duration_override
        if duration is not None and action in self.owner._duration_actions and body:
            form = [
                (k, v) for k, v in parse_qsl(body.decode(), keep_blank_values=True) if k != "DurationSeconds"
            ]
            form.append(("DurationSeconds", str(duration)))
            body = urlencode(form).encode()
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        if action not in _CREDENTIAL_ACTIONS:
            return self.app(environ, start_response)

        status_box: list[str] = []

        def capture_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status_box.append(status)
            return start_response(status, headers, exc_info)

        result = self.app(environ, capture_start)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if status_box and status_box[0].startswith("200"):
            self.owner._record_response(data)
        return [data]


class StsServer:
    """moto's STS/IAM server on loopback, reached through ``AWS_ENDPOINT_URL_STS``.

    ``start()``/``stop()`` or use as a context manager. Thread-safe for the accessors below.
    """

    def __init__(self, region: str = "us-east-1", host: str = "127.0.0.1") -> None:
        self.region = region
        self.host = host  # the address it listens on (a real node's pods reach it on the node's IP)
        self._server: Any = None
        self._url: str | None = None
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._issued: dict[str, Issued] = {}
        self._duration_override: int | None = None
        self._duration_actions: frozenset[str] = frozenset({"AssumeRole", "AssumeRoleWithWebIdentity"})
        self._clients: dict[str, Any] = {}
        self.start_seconds: float | None = None  # wall time start() took (server + warm-up)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> StsServer:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class _QuietHandler(MotoRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:  # no access log on stderr
                pass

        began = time.perf_counter()
        owner = self

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:  # moto's own entry point, with our WSGI layer in front
                app = _Layer(DomainDispatcherApplication(create_backend_app), owner)
                self._server = make_server(
                    self._ip_address, self._port, app, True, request_handler=_QuietHandler
                )
                self._server_ready_event.set()
                self._server.serve_forever()

        server = _Server(ip_address=self.host, port=0, verbose=False)
        server.start()
        self._server = server
        host, port = server.get_host_and_port()
        self._url = f"http://{host}:{port}"
        # Warm up the lazily built STS and IAM apps so the first measured call is not the slow one.
        self._client("sts").get_caller_identity()
        self._client("iam").list_roles(MaxItems=1)
        self.start_seconds = time.perf_counter() - began
        return self

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            if server._server is not None:
                server._server.server_close()

    def __enter__(self) -> StsServer:
        return self.start() if self._server is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("StsServer is not started")
        return self._url

    @property
    def account_id(self) -> str:
        from moto.core.models import DEFAULT_ACCOUNT_ID

        return str(DEFAULT_ACCOUNT_ID)

    def _client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session(
                aws_access_key_id="AKIARDSIAMTESTADMIN0",
                aws_secret_access_key="admin-secret-not-checked-by-moto",
                region_name=self.region,
            )
            client = session.client(
                service,
                endpoint_url=self.url,
                config=Config(user_agent_extra=_ADMIN_MARKER, retries={"max_attempts": 1}),
            )
            self._clients[service] = client
        return client

    # -- IAM / IRSA ------------------------------------------------------------------------------

    def oidc_issuer(self) -> str:
        """The (fake) EKS OIDC issuer URL used in web identity tokens and default trust policies."""
        return f"https://oidc.eks.{self.region}.amazonaws.com/id/RDSIAMLOCALTESTCLUSTER00000000"

    def token_minter(self, role_name: str, host: str, port: int, region: str | None = None) -> Callable[[str], str]:
        """``mint(user)``: RDS IAM tokens for ``host:port``, signed (by boto3) with credentials of role
        ``role_name`` (created if missing) assumed on this server. For tests of database code."""
        import boto3

        creds = boto3.client(
            "sts", endpoint_url=self.url, region_name=region or self.region,
            aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ).assume_role(RoleArn=self.create_role(role_name), RoleSessionName=role_name[:64])["Credentials"]
        signer = boto3.client(
            "rds", region_name=region or self.region, aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"],
        )

        def mint(user: str) -> str:
            return str(signer.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user,
                                                     Region=region or self.region))

        return mint

    def create_role(self, name: str, trust_policy: dict[str, Any] | str | None = None) -> str:
        """Create an IAM role on this server (idempotent) and return its ARN.

        The default trust policy is the IRSA one (``sts:AssumeRoleWithWebIdentity`` from the
        cluster's OIDC provider). moto stores it but never evaluates it.
        """
        if trust_policy is None:
            provider = self.oidc_issuer().removeprefix("https://")
            trust_policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {
                            "Federated": f"arn:aws:iam::{self.account_id}:oidc-provider/{provider}"
                        },
                        "Action": "sts:AssumeRoleWithWebIdentity",
                        "Condition": {"StringEquals": {f"{provider}:aud": "sts.amazonaws.com"}},
                    },
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{self.account_id}:root"},
                        "Action": "sts:AssumeRole",
                    },
                ],
            }
        document = trust_policy if isinstance(trust_policy, str) else json.dumps(trust_policy)
        iam = self._client("iam")
        try:
            return str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=document)["Role"]["Arn"])
        except iam.exceptions.EntityAlreadyExistsException:
            return str(iam.get_role(RoleName=name)["Role"]["Arn"])

    def create_user_key(self, user_name: str) -> Issued:
        """Create an IAM user (if needed) with a long-term access key; returns it (test use only)."""
        iam = self._client("iam")
        try:
            iam.create_user(UserName=user_name)
        except iam.exceptions.EntityAlreadyExistsException:
            pass
        key = iam.create_access_key(UserName=user_name)["AccessKey"]
        arn = iam.get_user(UserName=user_name)["User"]["Arn"]
        return Issued(key["AccessKeyId"], key["SecretAccessKey"], None, str(arn), None)

    def web_identity_token(
        self, *, namespace: str = "default", service_account: str = "default", lifetime: int = 86400
    ) -> str:
        """A projected-ServiceAccount-token-shaped JWT (HS256 with a throwaway key; moto ignores it)."""
        now = int(time.time())
        claims = {
            "aud": ["sts.amazonaws.com"],
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "iss": self.oidc_issuer(),
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": "00000000-0000-0000-0000-000000000000"},
            },
        }
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        import hashlib
        import hmac

        signature = hmac.new(secrets.token_bytes(32), f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def irsa_env(
        self,
        role_arn: str,
        directory: str | Path,
        *,
        namespace: str = "default",
        service_account: str = "default",
        session_name: str | None = None,
    ) -> dict[str, str]:
        """Write a web identity token file into ``directory``; return the IRSA environment.

        The variables are those the EKS pod identity webhook injects, plus endpoint overrides to
        this server. Other credential sources that botocore's default chain would try first are
        neutralised: the static key variables are set empty (botocore ignores empty values), and
        the profile is ``default`` in a config file written to ``directory`` that holds only the
        region (an empty ``AWS_PROFILE`` would make botocore fail with ProfileNotFound). Apply
        with ``{**os.environ, **env}`` for a subprocess, or ``monkeypatch.setenv`` in-process.
        """
        directory = Path(directory)
        token_file = directory / "eks.amazonaws.com" / "serviceaccount" / "token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(self.web_identity_token(namespace=namespace, service_account=service_account))
        config_file = directory / "aws-config"
        config_file.write_text(f"[default]\nregion = {self.region}\n")
        credentials_file = directory / "aws-credentials"
        credentials_file.write_text("")
        env = {name: "" for name in _CREDENTIAL_VARS}
        env.update(
            {
                "AWS_ROLE_ARN": role_arn,
                "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
                "AWS_ENDPOINT_URL_STS": self.url,
                "AWS_ENDPOINT_URL_IAM": self.url,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_STS_REGIONAL_ENDPOINTS": "regional",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(config_file),
                "AWS_SHARED_CREDENTIALS_FILE": str(credentials_file),
                "AWS_PROFILE": "default",
                "AWS_DEFAULT_PROFILE": "default",
            }
        )
        if session_name is not None:
            env["AWS_ROLE_SESSION_NAME"] = session_name
        return env

    # -- observation -----------------------------------------------------------------------------

    def _count(self, action: str) -> None:
        with self._lock:
            self._counts[action] += 1

    def calls(self, action: str | None = None) -> int:
        """How many API calls (STS and IAM) with this ``Action`` the server saw; all when ``None``.

        Calls made by this object itself (``create_role``, warm-up) are not counted.
        """
        with self._lock:
            return self._counts[action] if action is not None else sum(self._counts.values())

    def reset_calls(self) -> None:
        with self._lock:
            self._counts.clear()

    def set_credential_duration(
        self,
        seconds: int | None,
        actions: Iterable[str] = ("AssumeRole", "AssumeRoleWithWebIdentity"),
    ) -> None:
        """Force ``DurationSeconds`` of credentials issued by these actions (``None`` restores).

        moto honours ``DurationSeconds`` (default 3600) without AWS's 900 s minimum, so short
        values let a test see tokens die with the credentials that signed them. botocore's IRSA
        provider never sends ``DurationSeconds``; this override rewrites the request server-side.
        """
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be positive")
        self._duration_actions = frozenset(actions)
        self._duration_override = seconds

    def _record_response(self, data: bytes) -> None:
        try:
            root = ET.fromstring(data)
        except ET.ParseError:
            return
        creds = root.find(".//{*}Credentials")
        if creds is None:
            return

        def text(node: ET.Element | None, tag: str) -> str | None:
            found = node.find(f"{{*}}{tag}") if node is not None else None
            return found.text if found is not None and found.text else None

        akid, secret = text(creds, "AccessKeyId"), text(creds, "SecretAccessKey")
        if not akid or not secret:
            return
        expiration = text(creds, "Expiration")
        arn = text(root.find(".//{*}AssumedRoleUser"), "Arn") or text(root.find(".//{*}FederatedUser"), "Arn")
        issued = Issued(
            access_key_id=akid,
            secret_access_key=secret,
            session_token=text(creds, "SessionToken"),
            arn=arn or f"arn:aws:sts::{self.account_id}:unknown",
            expiration=_parse_time(expiration) if expiration else None,
        )
        with self._lock:
            self._issued[akid] = issued

    def issued(self) -> Iterator[Issued]:
        """Every credential this server handed out, oldest first."""
        with self._lock:
            return iter(list(self._issued.values()))

    def lookup(self, access_key_id: str) -> Issued | None:
        """The credential issued with this access key id, as AWS would resolve it; else ``None``.

        Looks first at what this server returned (AssumeRole*, GetSessionToken, ...), then in
        moto's in-process backends (assumed roles, active long-term IAM user keys).
        """
        with self._lock:
            found = self._issued.get(access_key_id)
        if found is not None:
            return found
        return _lookup_moto(access_key_id)

    def arn_of(self, access_key_id: str) -> str | None:
        """The ARN of the caller with this access key id (for AccessDenied messages), else ``None``."""
        issued = self.lookup(access_key_id)
        return issued.arn if issued is not None else None


def _lookup_moto(access_key_id: str) -> Issued | None:
    from moto.iam.models import iam_backends
    from moto.sts.models import sts_backends

    for account_id in list(sts_backends.keys()):
        for partition in list(sts_backends[account_id].keys()):
            backend = sts_backends[account_id][partition]
            role = backend.get_assumed_role_from_access_key(access_key_id)
            if role is not None:
                return Issued(
                    role.access_key_id,
                    role.secret_access_key,
                    role.session_token,
                    role.arn,
                    _aware(role.expiration),
                )
    for account_id in list(iam_backends.keys()):
        for partition in list(iam_backends[account_id].keys()):
            iam = iam_backends[account_id][partition]
            user = iam.get_user_from_access_key_id(access_key_id)
            if user is None:
                continue
            for key in user.access_keys:
                if key.access_key_id == access_key_id and key.status == "Active":
                    return Issued(key.access_key_id, key.secret_access_key, None, user.arn, None)
    return None
