"""A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager.

The binaries are built once per machine from Go modules by ``scripts/build-realapi.sh``
into ``${RDSIAM_REALAPI_CACHE:-~/.cache/rdsiam/realapi}/bin``; this module never builds
anything. :meth:`RealCluster.available` tells whether they are there.

:class:`RealCluster` has the public shape of the emulator
(``rdsiam.testing.kube.KubeEmulator``), so a test can take either::

    with RealCluster() as cluster:
        cluster.url          # https://127.0.0.1:PORT
        cluster.kubeconfig   # path of a kubeconfig (bearer token + CA file)
        cluster.token        # admin bearer token (user rdsiam-admin, group system:masters)
        cluster.ca_file      # PEM of the CA that signed the serving certificate

What is real here and not in the emulator: etcd storage, RBAC authorization, OpenAPI and
CEL validation of custom resources, server-side apply, admission, TokenRequest (JWTs signed
by the ServiceAccount key, ``iss`` = :attr:`RealCluster.url`), watch caches (a kind's cache
starts when its CRD is installed; older resourceVersions get 410), and, through the
controller manager, garbage collection of owned objects, namespace deletion, the
``default`` ServiceAccount of every namespace, the ``kube-root-ca.crt`` ConfigMap and the
aggregated ``admin``/``edit``/``view`` ClusterRoles. No kubelet or scheduler runs: Pods
are stored but never run.

Helpers with the emulator's names and meaning: :meth:`~RealCluster.client`,
:meth:`~RealCluster.apply_manifest`, :meth:`~RealCluster.get`,
:meth:`~RealCluster.delete_namespace`, :attr:`~RealCluster.issuer`,
:meth:`~RealCluster.verify_token`. Real-only: :meth:`~RealCluster.jwks`,
:attr:`~RealCluster.resource_version`, :meth:`~RealCluster.compact` (etcd compaction),
:meth:`~RealCluster.request` and :meth:`~RealCluster.watch` (raw HTTP as the admin or any
token), :meth:`~RealCluster.service_account_kubeconfig` (act as a ServiceAccount, under
RBAC), :meth:`~RealCluster.restart_apiserver`, :meth:`~RealCluster.env` (``KUBECONFIG``
for kubectl/helm/the operator), :meth:`~RealCluster.log`.

Everything binds 127.0.0.1 on free ports and lives in one temporary directory. Each child
runs in its own process group; :meth:`RealCluster.stop` ends the groups and removes the
directory. A small watchdog process does the same if the Python process dies without
stopping the cluster (killed test run), so nothing is left behind.

Tokens and keys are written only into the temporary directory (mode 0600) and never
logged or put into exception text.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rdsiam.testing import _pki

if TYPE_CHECKING:
    from rdsiam.testing.kube.client import KubeClient

__all__ = [
    "RealCluster",
    "RealClusterError",
    "bin_dir",
    "helm_path",
    "kubectl_path",
    "BUILD_HINT",
]

BUILD_HINT = "run scripts/build-realapi.sh (needs Go and the Go module proxy)"

#: Binaries :class:`RealCluster` needs; ``kubectl`` and ``helm`` are optional extras.
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")

#: Controllers of kube-controller-manager that tests of an operator observe. Everything
#: else (nodes, pods, replica sets, certificates...) stays off: no kubelet runs here.
DEFAULT_CONTROLLERS = (
    "garbage-collector-controller",  # owned Secrets go away with their owner
    "namespace-controller",  # deleting a namespace deletes its content
    "serviceaccount-controller",  # the "default" ServiceAccount of each namespace
    "serviceaccount-token-controller",  # legacy kubernetes.io/service-account-token Secrets
    "root-ca-certificate-publisher-controller",  # kube-root-ca.crt in each namespace
    "clusterrole-aggregation-controller",  # admin/edit/view gain rules labelled aggregate-to-*
)

#: Seconds between SIGTERM and SIGKILL. kube-apiserver drains ordinary requests within
#: milliseconds but then waits up to 60 s for open watch connections (a controller's, an
#: operator's) that nothing will close: after its grace it is killed; its data is throwaway.
_STOP_GRACE = {"kube-controller-manager": 5.0, "kube-apiserver": 3.0, "etcd": 5.0}

ADMIN_USER = "rdsiam-admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"


class RealClusterError(RuntimeError):
    """The control plane did not start or stop; the message says which part and why."""


def bin_dir() -> Path:
    """Directory where ``scripts/build-realapi.sh`` puts the binaries."""
    cache = os.environ.get("RDSIAM_REALAPI_CACHE") or str(Path.home() / ".cache" / "rdsiam" / "realapi")
    return Path(cache) / "bin"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def helm_path() -> Path | None:
    """The helm binary built by ``scripts/build-realapi.sh``, or None when it is not built."""
    path = bin_dir() / "helm"
    return path if _executable(path) else None


def kubectl_path() -> Path | None:
    """A kubectl matching the built kube-apiserver when built, else the one on PATH, else None."""
    path = bin_dir() / "kubectl"
    if _executable(path):
        return path
    found = shutil.which("kubectl")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_private(path: Path, data: bytes | str) -> None:
    """Write a file only the owner can read (keys, tokens)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class _Pki:
    """CA, serving certificate, admin client certificate and ServiceAccount key pair."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
        ca_key, ca_cert = _pki.make_ca("rdsiam-realapi-ca", not_before, not_after, path_length=None)

        def leaf(common_name: str, org: str | None, usage: Any, sans: list[Any] | None) -> tuple[bytes, bytes]:
            attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
            if org:
                attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
            key, cert = _pki.make_leaf(ca_key, ca_cert, x509.Name(attrs), usage, sans, not_before, not_after)
            return cert.public_bytes(serialization.Encoding.PEM), _pki.pem_key(key)

        serving_cert, serving_key = leaf(
            "kube-apiserver",
            None,
            ExtendedKeyUsageOID.SERVER_AUTH,
            [
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes"),
                x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            ],
        )
        client_cert, client_key = leaf(ADMIN_USER, "system:masters", ExtendedKeyUsageOID.CLIENT_AUTH, None)
        # RS256 like EKS's OIDC issuer, so IRSA-style consumers see the usual algorithm.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.serving_cert = directory / "apiserver.crt"
        self.serving_cert.write_bytes(serving_cert)
        self.serving_key = directory / "apiserver.key"
        _write_private(self.serving_key, serving_key)
        self.client_cert = directory / "admin.crt"
        self.client_cert.write_bytes(client_cert)
        self.client_key = directory / "admin.key"
        _write_private(self.client_key, client_key)
        self.sa_key = directory / "sa.key"
        _write_private(self.sa_key, _pki.pem_key(sa_key))
        self.sa_pub = directory / "sa.pub"
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


# Watchdog: reads process-group ids on stdin; when stdin closes without the "disarm" line
# (the Python process died), ends those groups and removes the temporary directory.
_WATCHDOG = r"""
groups=""
while IFS= read -r line; do
    case "$line" in
        disarm) exit 0 ;;
        *) groups="$groups $line" ;;
    esac
done
for g in $groups; do kill -TERM "-$g" 2>/dev/null; done
sleep 3
for g in $groups; do kill -KILL "-$g" 2>/dev/null; done
rm -rf -- "$1"
"""


class RealCluster:
    """etcd + kube-apiserver + kube-controller-manager on loopback; see the module docstring.

    ``crds``: CustomResourceDefinition manifests (files or directories of ``*.yaml``) to
    create before the controller manager starts, so its garbage collector watches those
    kinds from the beginning (otherwise it discovers new kinds within ~30 s).
    """

    def __init__(
        self,
        *,
        binaries: Path | None = None,
        crds: Sequence[Path | str] = (),
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        start_timeout: float = 90.0,
        keep_dir: bool | None = None,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.binaries = binaries or bin_dir()
        self.crds = [Path(p) for p in crds]
        self.controllers = tuple(controllers)
        self.start_timeout = start_timeout
        self.keep_dir = bool(os.environ.get("RDSIAM_REALAPI_KEEP")) if keep_dir is None else keep_dir
        self.extra_apiserver_args = tuple(extra_apiserver_args)

        self.url = ""
        self.kubeconfig = ""
        self.token = ""
        self.ca_file = ""
        #: (certificate path, key path) of an admin client certificate (group system:masters).
        self.client_cert: tuple[str, str] | None = None
        self.directory: Path | None = None
        self.etcd_url = ""
        #: Seconds each phase of the last start took ("pki", "etcd", "kube-apiserver", ...).
        self.timings: dict[str, float] = {}
        self.start_seconds = 0.0

        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._ssl: ssl.SSLContext | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._discovery: dict[str, list[dict[str, Any]]] = {}

    # ----------------------------------------------------------------- availability

    @classmethod
    def available(cls, binaries: Path | None = None) -> tuple[bool, str]:
        """(True, "") when the built binaries are present, else (False, the reason)."""
        directory = binaries or bin_dir()
        missing = [name for name in REQUIRED_BINARIES if not _executable(directory / name)]
        if missing:
            return False, f"{', '.join(missing)} not found in {directory}: {BUILD_HINT}"
        return True, ""

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> RealCluster:
        ok, reason = self.available(self.binaries)
        if not ok:
            raise RealClusterError(reason)
        if self._procs:
            raise RealClusterError("RealCluster is already started")
        began = time.monotonic()
        self.timings = {}
        try:
            self._prepare()
            self._start_etcd()
            self._start_apiserver()
            if self.crds:
                self._install_crds()
            if self.controllers:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """End every process (controller manager, apiserver, etcd) and remove the directory."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._end(name, _STOP_GRACE[name])
        for proc in self._procs.values():  # anything unexpected
            self._end_group(proc)
        self._procs.clear()
        self._discovery.clear()
        if self._watchdog is not None:
            with contextlib.suppress(OSError, ValueError):
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.write(b"disarm\n")
                self._watchdog.stdin.close()
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None
        if self.directory is not None and not self.keep_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _end(self, name: str, grace: float) -> None:
        """End the process started as ``name``, if any (SIGTERM, then SIGKILL after ``grace`` s)."""
        proc = self._procs.pop(name, None)
        if proc is not None:
            self._end_group(proc, grace)

    @staticmethod
    def _end_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Also end anything the process left in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    # ----------------------------------------------------------------- phases

    def _phase(self, name: str, began: float) -> None:
        self.timings[name] = round(time.monotonic() - began, 3)

    def _prepare(self) -> None:
        began = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="rdsiam-realapi-"))
        (self.directory / "logs").mkdir()
        self._start_watchdog()
        pki = _Pki(self.directory / "pki")
        self.ca_file = str(pki.ca_file)
        self.client_cert = (str(pki.client_cert), str(pki.client_key))
        self._pki = pki

        self.token = secrets.token_urlsafe(32)
        self._kcm_token = secrets.token_urlsafe(32)
        _write_private(
            self.directory / "tokens.csv",
            f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f'{self._kcm_token},{CONTROLLER_MANAGER_USER},{CONTROLLER_MANAGER_USER},"system:masters"\n',
        )
        self._apiserver_port = _free_port()
        self.url = f"https://127.0.0.1:{self._apiserver_port}"
        self.kubeconfig = str(self.directory / "kubeconfig")
        _write_private(Path(self.kubeconfig), self._kubeconfig_text(ADMIN_USER, self.token))
        _write_private(
            self.directory / "kcm.kubeconfig", self._kubeconfig_text(CONTROLLER_MANAGER_USER, self._kcm_token)
        )
        self._ssl = ssl.create_default_context(cafile=self.ca_file)
        self._phase("pki", began)

    def _kubeconfig_text(self, user: str, token: str) -> str:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "realapi", "cluster": {"server": self.url, "certificate-authority": self.ca_file}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "realapi", "context": {"cluster": "realapi", "user": user}}],
            "current-context": "realapi",
            "preferences": {},
        }
        return json.dumps(config, indent=2) + "\n"  # JSON is YAML

    def _start_watchdog(self) -> None:
        assert self.directory is not None
        self._watchdog = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, "rdsiam-realapi-watchdog", str(self.directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the test run must not end it before it acts
        )

    def _spawn(self, name: str, args: list[str], executable: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``name`` (a built binary, or ``executable``) in its own group, logging to ``logs/``."""
        assert self.directory is not None
        log = open(self.directory / "logs" / f"{name}.log", "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",) and not k.endswith("_PROXY")}
        env = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        with log:
            proc = subprocess.Popen(
                [executable or str(self.binaries / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=env,
                start_new_session=True,  # own process group: stop() ends it and its children
            )
        self._procs[name] = proc
        if self._watchdog is not None and self._watchdog.stdin is not None:
            self._watchdog.stdin.write(f"{proc.pid}\n".encode())
            self._watchdog.stdin.flush()
        return proc

    def _failed(self, name: str, what: str) -> RealClusterError:
        assert self.directory is not None
        log = self.directory / "logs" / f"{name}.log"
        proc = self._procs.get(name)
        code = proc.poll() if proc is not None else None
        state = f"exited with code {code}" if code is not None else "still running"
        return RealClusterError(f"{name} {what} ({state}); last lines of {log}:\n{_tail(log)}")

    def _deadline(self) -> float:
        return time.monotonic() + self.start_timeout

    def _start_etcd(self) -> None:
        assert self.directory is not None
        began = time.monotonic()
        client, peer = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                "--name=realapi",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=realapi={peer_url}",
                "--unsafe-no-fsync",  # throwaway data: no fsync keeps writes fast on slow disks
                "--log-level=warn",
            ],
        )
        deadline = self._deadline()
        while True:
            self._check_alive("etcd")
            try:
                with self._opener.open(f"{self.etcd_url}/health", timeout=2) as resp:
                    if json.loads(resp.read()).get("health") == "true":
                        break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise self._failed("etcd", f"not healthy after {self.start_timeout:.0f} s")
            time.sleep(0.05)
        self._phase("etcd", began)

    def _apiserver_args(self) -> list[str]:
        assert self.directory is not None
        pki = self._pki
        return [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self._apiserver_port}",
            f"--cert-dir={self.directory / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_file}",
            f"--token-auth-file={self.directory / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            # As on OpenShift: setting blockOwnerDeletion needs update on the owner's finalizers (the
            # chart grants it; this makes the RBAC tests prove it).
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            # The apiserver is its own OIDC issuer: /.well-known/openid-configuration and
            # /openid/v1/jwks describe the key that signs TokenRequest JWTs.
            f"--service-account-issuer={self.url}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--api-audiences={self.url}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *self.extra_apiserver_args,
        ]

    def _start_apiserver(self) -> None:
        began = time.monotonic()
        self._spawn("kube-apiserver", self._apiserver_args())
        deadline = self._deadline()
        while True:
            self._check_alive("kube-apiserver")
            try:
                status, _ = self.request("GET", "/readyz", timeout=2)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._failed("kube-apiserver", f"not ready (/readyz) after {self.start_timeout:.0f} s")
            time.sleep(0.1)
        self._phase("kube-apiserver", began)

    def _start_controller_manager(self) -> None:
        assert self.directory is not None
        began = time.monotonic()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.directory / 'kcm.kubeconfig'}",
                f"--controllers={','.join(self.controllers)}",
                f"--service-account-private-key-file={self._pki.sa_key}",
                f"--root-ca-file={self._pki.ca_file}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                "--secure-port=0",  # no serving port of its own: nothing to collide with
                "--v=1",
            ],
        )
        # Ready enough when the serviceaccount controller has made default/default.
        deadline = self._deadline()
        while True:
            self._check_alive("kube-controller-manager")
            status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default", timeout=5)
            if status == 200 or "serviceaccount-controller" not in self.controllers:
                break
            if time.monotonic() > deadline:
                raise self._failed(
                    "kube-controller-manager",
                    f"did not create ServiceAccount default/default within {self.start_timeout:.0f} s",
                )
            time.sleep(0.1)
        self._phase("kube-controller-manager", began)

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            raise self._failed(name, "exited during start")

    # ----------------------------------------------------------------- CRDs

    def _crd_documents(self) -> Iterator[dict[str, Any]]:
        for doc in _load_documents(list(self.crds)):
            if doc.get("kind") == "CustomResourceDefinition":
                yield doc

    def _install_crds(self) -> None:
        began = time.monotonic()
        names = [self.apply_crd(doc, wait=False) for doc in self._crd_documents()]
        for name in names:
            self.wait_crd_established(name)
        self._phase("crds", began)

    def apply_crd(self, crd: dict[str, Any], *, wait: bool = True, field_manager: str = "rdsiam-realapi") -> str:
        """Server-side apply a CustomResourceDefinition; returns its name (waits until Established)."""
        name = str(crd["metadata"]["name"])
        status, body = self.request(
            "PATCH",
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}?fieldManager={field_manager}&force=true",
            crd,
            content_type="application/apply-patch+yaml",
        )
        if status not in (200, 201):
            raise RealClusterError(f"applying CRD {name} failed: HTTP {status}: {_message(body)}")
        if wait:
            self.wait_crd_established(name)
        return name

    def wait_crd_established(self, name: str, timeout: float = 30.0) -> None:
        """Wait until the CRD is Established and its kind can be watched.

        Right after ``Established`` the kind's watch cache is still initializing and a
        watch gets ``429 storage is (re)initializing``; an operator started at that moment
        would begin with a retry. This waits until a watch of the storage version opens.
        """
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            if status == 200:
                conditions = (body.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
            if time.monotonic() > deadline:
                raise RealClusterError(f"CRD {name} not Established within {timeout:.0f} s")
            time.sleep(0.05)
        spec = body["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("storage"))
        path = f"/apis/{spec['group']}/{version}/{spec['names']['plural']}?watch=1&timeoutSeconds=1"
        while True:
            try:
                with self._open("GET", path, None, "", None, "application/json", 5.0) as resp:
                    status = int(resp.status)  # headers arrive as soon as the watch is established
            except urllib.error.HTTPError as err:
                with err:
                    status = err.code
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise RealClusterError(f"CRD {name}: watch not served within {timeout:.0f} s (HTTP {status})")
            time.sleep(0.1)

    # ----------------------------------------------------------------- HTTP

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the cluster's CA."""
        if self._ssl is None:
            raise RealClusterError("RealCluster is not started")
        return self._ssl

    def _open(
        self,
        method: str,
        path: str,
        body: Any,
        content_type: str,
        token: str | None,
        accept: str,
        timeout: float,
    ) -> Any:
        data = None
        headers = {"Authorization": f"Bearer {token or self.token}", "Accept": accept}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        https = urllib.request.HTTPSHandler(context=self.ssl_context())
        return urllib.request.build_opener(urllib.request.ProxyHandler({}), https).open(req, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
        accept: str = "application/json, */*",
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        """One API call as the admin (or ``token``); returns (HTTP status, decoded JSON or text).

        HTTP error statuses are returned, not raised; connection errors raise OSError.
        ``content_type`` selects the patch flavour for PATCH (merge, strategic, json, apply).
        """
        try:
            with self._open(method, path, body, content_type, token, accept, timeout) as resp:
                return int(resp.status), _decode(resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return err.code, _decode(err.read())

    def watch(
        self, path: str, *, token: str | None = None, timeout: float = 30.0
    ) -> Generator[tuple[int, dict[str, Any]], None, None]:
        """Stream a watch (``path`` carries ``?watch=1&...``): yields (HTTP status, event) per event.

        A refused watch yields one (status, Status object) and ends. A 410 for an expired
        resourceVersion arrives as an ``ERROR`` event whose object is a Status with code 410.
        ``timeout`` is the socket read timeout; put ``timeoutSeconds`` in ``path`` to end it.
        """
        try:
            resp = self._open("GET", path, None, "", token, "application/json", timeout)
        except urllib.error.HTTPError as err:
            with err:
                yield err.code, _decode(err.read())
            return
        with resp:
            for line in resp:
                if line.strip():
                    yield int(resp.status), json.loads(line)

    def client(self, **kwargs: Any) -> KubeClient:
        """A synchronous JSON client (:class:`rdsiam.testing.kube.client.KubeClient`) as the admin."""
        from rdsiam.testing.kube.client import KubeClient

        return KubeClient(self.url, token=self.token, ca_file=self.ca_file, **kwargs)

    def service_account_kubeconfig(self, namespace: str, name: str, *, expiration_seconds: int = 3600) -> str:
        """A kubeconfig that acts as ServiceAccount ``namespace/name`` (created if missing).

        Its token comes from TokenRequest, so RBAC applies exactly as to a pod with that
        ServiceAccount: run the operator with it to prove the chart's ClusterRole suffices.
        """
        assert self.directory is not None, "RealCluster is not started"
        status, body = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}}
        )
        if status not in (201, 409):
            raise RealClusterError(f"creating ServiceAccount {namespace}/{name}: HTTP {status}: {_message(body)}")
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"spec": {"expirationSeconds": expiration_seconds}},
        )
        if status != 201:
            raise RealClusterError(f"TokenRequest for {namespace}/{name}: HTTP {status}: {_message(body)}")
        path = self.directory / f"kubeconfig-sa-{namespace}-{name}"
        _write_private(
            path, self._kubeconfig_text(f"system:serviceaccount:{namespace}:{name}", body["status"]["token"])
        )
        return str(path)

    # ------------------------------------------------------------------ emulator-compatible helpers
    # The same names and meaning as on KubeEmulator (where it has them), so a scenario can run against either.

    @property
    def issuer(self) -> str:
        """The ``iss`` of ServiceAccount tokens (OIDC discovery at ``{issuer}/.well-known/...``)."""
        return self.url

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set that verifies ServiceAccount tokens (``/openid/v1/jwks``)."""
        status, body = self.request("GET", "/openid/v1/jwks", accept="application/jwk-set+json")
        if status != 200:
            raise RealClusterError(f"GET /openid/v1/jwks: HTTP {status}: {_message(body)}")
        return dict(body)

    def verify_token(self, token: str, audience: str | list[str] | None = None) -> dict[str, Any]:
        """Verify a ServiceAccount token minted by this cluster and return its claims."""
        import jwt

        header = jwt.get_unverified_header(token)
        key = next(k for k in self.jwks()["keys"] if k.get("kid") == header.get("kid"))
        claims: dict[str, Any] = jwt.decode(
            token,
            key=jwt.PyJWK(key).key,
            algorithms=[header.get("alg", "RS256")],
            audience=audience,
            issuer=self.issuer,
            options={"verify_aud": audience is not None},
        )
        return claims

    @property
    def resource_version(self) -> int:
        """The current resourceVersion (etcd revision) of the cluster."""
        status, body = self.request("GET", "/api/v1/namespaces?limit=1")
        if status != 200:
            raise RealClusterError(f"listing namespaces: HTTP {status}: {_message(body)}")
        return int(body["metadata"]["resourceVersion"])

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object or None; namespaced kinds default to the ``default`` namespace."""
        path = self._object_path(api_version, kind, name, namespace)
        status, body = self.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise RealClusterError(f"GET {path}: HTTP {status}: {_message(body)}")
        return dict(body)

    def apply_manifest(self, source: Any, *, field_manager: str = "rdsiam-testing") -> list[dict[str, Any]]:
        """Server-side apply objects (CRDs included) from dicts, YAML text, files or directories.

        Namespaced objects without a namespace go to ``default``. A CRD is waited for until
        its kind is served, so later documents may use it. A ``status`` in the manifest is
        applied through the status subresource.
        """
        results = []
        for doc in _load_documents(source):
            if doc.get("kind") == "CustomResourceDefinition":
                self.apply_crd(doc, field_manager=field_manager)
                self._discovery.clear()
                results.append(self.get(doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) or doc)
                continue
            path = self._object_path(
                doc["apiVersion"], doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace")
            )
            query = f"?fieldManager={field_manager}&force=true"
            status, body = self.request("PATCH", path + query, doc, content_type="application/apply-patch+yaml")
            if status not in (200, 201):
                raise RealClusterError(f"applying {doc['kind']} {path}: HTTP {status}: {_message(body)}")
            if "status" in doc and self._has_status(doc["apiVersion"], doc["kind"]):
                status_doc = {k: doc[k] for k in ("apiVersion", "kind", "metadata", "status")}
                status, body = self.request(
                    "PATCH", f"{path}/status{query}", status_doc, content_type="application/apply-patch+yaml"
                )
                if status != 200:
                    raise RealClusterError(f"applying status of {path}: HTTP {status}: {_message(body)}")
            results.append(dict(body))
        return results

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace (the namespace controller then deletes its content); no error if gone."""
        status, body = self.request("DELETE", f"/api/v1/namespaces/{name}")
        if status not in (200, 202, 404, 409):
            raise RealClusterError(f"deleting namespace {name}: HTTP {status}: {_message(body)}")

    def compact(self) -> int:
        """Make every older resourceVersion expire.

        Compacts etcd at its current revision and restarts kube-apiserver (about 3 s), so
        the watch caches start at the current revision: resuming a watch from an older
        resourceVersion then gets 410 Gone, as after a real compaction. Open watches are
        dropped by the restart (clients reconnect). Returns the current resourceVersion.
        """
        revision = self.resource_version
        req = urllib.request.Request(
            f"{self.etcd_url}/v3/kv/compaction",
            data=json.dumps({"revision": str(revision), "physical": True}).encode(),
            method="POST",
        )
        with self._opener.open(req, timeout=10) as resp:
            resp.read()
        self.restart_apiserver()
        return self.resource_version

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver (SIGTERM, graceful) and start it again on the same port."""
        if "kube-apiserver" not in self._procs:
            raise RealClusterError("RealCluster is not started")
        self._end("kube-apiserver", _STOP_GRACE["kube-apiserver"])
        self._start_apiserver()

    # ------------------------------------------------------------------ discovery

    def _resources(self, api_version: str) -> list[dict[str, Any]]:
        if api_version not in self._discovery:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            status, body = self.request("GET", path)
            if status != 200:
                raise RealClusterError(f"no API {api_version} (HTTP {status}): {_message(body)}")
            self._discovery[api_version] = list(body["resources"])
        return self._discovery[api_version]

    def _resource(self, api_version: str, kind: str) -> dict[str, Any]:
        for attempt in range(2):
            for res in self._resources(api_version):
                if res["kind"] == kind and "/" not in res["name"]:
                    return res
            if attempt == 0:
                self._discovery.pop(api_version, None)  # a kind added since the last look
        raise RealClusterError(f'no matches for kind "{kind}" in version "{api_version}"')

    def _has_status(self, api_version: str, kind: str) -> bool:
        plural = self._resource(api_version, kind)["name"]
        return any(res["name"] == f"{plural}/status" for res in self._resources(api_version))

    def _object_path(self, api_version: str, kind: str, name: str, namespace: str | None) -> str:
        res = self._resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if res["namespaced"]:
            return f"{base}/namespaces/{namespace or 'default'}/{res['name']}/{name}"
        return f"{base}/{res['name']}/{name}"

    def env(self) -> dict[str, str]:
        """Environment for a child process (kubectl, helm, the operator) that talks to this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = self.kubeconfig
        return env

    def log(self, name: str) -> str:
        """Text of one component's log (``etcd``, ``kube-apiserver``, ``kube-controller-manager``)."""
        if self.directory is None:
            return ""
        return (self.directory / "logs" / f"{name}.log").read_text(errors="replace")

    def restart_controller_manager(self) -> None:
        """Stop kube-controller-manager and start it again: its garbage collector then watches every kind
        served now from the start (CRDs applied after :meth:`start` are otherwise found within ~30 s)."""
        if "kube-controller-manager" not in self._procs:
            raise RealClusterError("RealCluster is not started")
        self._end("kube-controller-manager", _STOP_GRACE["kube-controller-manager"])
        self._start_controller_manager()


def _load_documents(source: Any) -> list[dict[str, Any]]:
    """Objects from a dict, a list, YAML text, a file or a directory (``*.yaml``, ``*.yml``, ``*.json``)."""
    import yaml

    if isinstance(source, dict):
        return [source]
    if isinstance(source, list):
        return [doc for item in source for doc in _load_documents(item)]
    if isinstance(source, str) and ("\n" in source or not Path(source).exists()):
        docs = [doc for doc in yaml.safe_load_all(source) if doc]
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
            return [doc for file in files for doc in _load_documents(file)]
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    expanded: list[dict[str, Any]] = []
    for doc in docs:
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            expanded.extend(doc["items"])
        else:
            expanded.append(doc)
    return expanded


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message", body))
    return str(body)[:500]
