"""A real single-node Kubernetes cluster for the e2e tier, run from binaries built here.

:class:`RealNode` is :class:`rdsiam.testing.realapi.RealCluster` (etcd, kube-apiserver,
kube-controller-manager) plus what a node runs: containerd with runc and bridge CNI, the kubelet,
kube-scheduler, kube-proxy (iptables) and CoreDNS as a pod. Pods run from images loaded into
containerd from the docker-archive tarballs of ``scripts/build-node-images.sh``; nothing is pulled.

It expects to run inside a network namespace of its own (``scripts/e2e.sh`` makes one: a veth
pair inside it with the node IP and a default route through it), so kube-proxy's and CNI's iptables
rules, the bridge and the pods' interfaces never touch the host's network, and in a mount namespace
of its own (``unshare --mount --propagation slave``), so the kubelet's and containerd's mounts vanish
with it.

What still reaches the host, and is undone by :meth:`RealNode.stop`: the kubelet's cgroups (under
``/rdsiam-e2e`` in each cgroup v1 hierarchy) and the sysctls it sets on the host kernel
(``vm.overcommit_memory``, ``kernel.panic``, ...), restored to the values read before it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rdsiam.testing.realapi import RealCluster, RealClusterError, bin_dir

NODE_NAME = "rdsiam-e2e-node"
POD_CIDR = "10.214.0.0/24"
SERVICE_CIDR = "10.0.0.0/24"  # the range RealCluster's serving certificate names (10.0.0.1)
DNS_IP = "10.0.0.10"
CGROUP_ROOT = "/rdsiam-e2e"
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy")
IMAGE_PREFIX = "localhost/rdsiam-e2e"
PAUSE_IMAGE = f"{IMAGE_PREFIX}/pause:3.10"
COREDNS_IMAGE = f"{IMAGE_PREFIX}/coredns:1.15.0"
# Host-wide sysctls the kubelet sets (pkg/kubelet/cm: setupKernelTunables); restored on stop.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
_NODE_GRACE = {"kubelet": 5.0, "kube-proxy": 3.0, "kube-scheduler": 3.0, "containerd": 5.0}


def image_dir() -> Path:
    cache = os.environ.get("RDSIAM_NODE_CACHE") or str(Path.home() / ".cache" / "rdsiam" / "node")
    return Path(cache) / "images"


def read_sysctls() -> dict[str, str]:
    values = {}
    for name in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = Path("/proc/sys", name).read_text().strip()
    return values


def restore_sysctls(saved: Mapping[str, str]) -> list[str]:
    """Write back what :func:`read_sysctls` read; returns the names that had changed."""
    changed = []
    for name, value in saved.items():
        path = Path("/proc/sys", name)
        try:
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
                changed.append(name)
        except OSError:
            pass
    return changed


def cgroup_dirs() -> list[Path]:
    """The node's cgroup directory in each cgroup v1 hierarchy (and the unified one)."""
    base = Path("/sys/fs/cgroup")
    return [d / CGROUP_ROOT.strip("/") for d in base.iterdir() if d.is_dir()] if base.is_dir() else []


def _walk(top: Path) -> list[Path]:
    """Every directory below ``top``, deepest first (cgroups vanish while this runs: skip those)."""
    found: list[Path] = []
    for root, dirs, _ in os.walk(top, onerror=lambda _: None):
        found += [Path(root, d) for d in dirs]
    return sorted(found, key=lambda p: -len(p.parts))


def kill_cgroups() -> int:
    """SIGKILL every process in the node's cgroups, then remove them; returns how many were killed."""
    killed = 0
    for _ in range(50):
        pids: set[int] = set()
        for top in cgroup_dirs():
            for directory in [top, *_walk(top)]:
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.1)
    for top in cgroup_dirs():
        for directory in [*_walk(top), top]:
            with contextlib.suppress(OSError):
                directory.rmdir()
    return killed


def is_ready(obj: dict[str, Any]) -> bool:
    """A Node or Pod whose Ready condition is True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class RealNode(RealCluster):
    """A one-node cluster inside the current network namespace. See the module docstring.

    ``node_ip``: an address of this namespace the pods reach the node on (the API server, and
    any test server bound to it). ``hosts``: extra DNS names CoreDNS answers (name -> IP), such
    as an RDS endpoint name for a local front door.
    """

    def __init__(
        self,
        node_ip: str,
        *,
        hosts: Mapping[str, str] | None = None,
        images: Sequence[Path] | None = None,
        sync_frequency: str = "10s",
        crds: Sequence[Path | str] = (),
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__(
            crds=crds,
            controllers=("*",),
            start_timeout=start_timeout,
            extra_apiserver_args=(
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ),
        )
        self.node_ip = node_ip
        self.hosts = dict(hosts or {})
        self.images = list(images) if images is not None else sorted(image_dir().glob("*.tar"))
        self.sync_frequency = sync_frequency
        self.containerd_socket = ""
        self._saved_sysctls: dict[str, str] = {}

    @classmethod
    def node_available(cls) -> tuple[bool, str]:
        ok, reason = cls.available()
        if not ok:
            return ok, reason
        missing = [b for b in NODE_BINARIES if not (bin_dir() / b).is_file()]
        if missing:
            return False, f"{', '.join(missing)} not found in {bin_dir()}: run scripts/build-realapi.sh node"
        for tool in ("containerd", "ctr", "runc", "iptables"):
            if not any(Path(d, tool).is_file() for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin"]):
                return False, f"{tool} not found: scripts/e2e.sh installs it (apt-get install containerd runc iptables)"
        if not Path("/usr/lib/cni/bridge").is_file():
            return False, "CNI plugins not found in /usr/lib/cni (apt-get install containernetworking-plugins)"
        tarballs = {p.name for p in image_dir().glob("*.tar")}
        for needed in ("pause.tar", "coredns.tar"):
            if needed not in tarballs:
                return False, f"{needed} not found in {image_dir()}: run scripts/build-node-images.sh"
        return True, ""

    # ----------------------------------------------------------------- control plane tweaks

    def _apiserver_args(self) -> list[str]:
        args = []
        for arg in super()._apiserver_args():
            if arg.startswith("--bind-address="):
                arg = "--bind-address=0.0.0.0"  # this namespace only: pods reach it through kube-proxy
            elif arg.startswith("--advertise-address="):
                arg = f"--advertise-address={self.node_ip}"
            elif arg.startswith("--service-cluster-ip-range="):
                continue  # given once, in extra_apiserver_args
            args.append(arg)
        assert self.client_cert is not None
        args += [f"--kubelet-client-certificate={self.client_cert[0]}", f"--kubelet-client-key={self.client_cert[1]}"]
        return args

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> RealNode:
        ok, reason = self.node_available()
        if not ok:
            raise RealClusterError(reason)
        super().start()
        try:
            self._start_node()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("kube-proxy", "kubelet", "kube-scheduler"):
            self._end(name, _NODE_GRACE[name])
        kill_cgroups()  # the containers (the kubelet is gone, nothing restarts them)
        self._end("containerd", _NODE_GRACE["containerd"])
        self._kill_shims()
        kill_cgroups()
        if self._saved_sysctls:
            restore_sysctls(self._saved_sysctls)
            self._saved_sysctls = {}
        self._unmount_all()
        super().stop()

    def _kill_shims(self) -> None:
        """containerd's shims run in their own sessions: end those of this node's containerd."""
        if self.directory is None:
            return
        marker = str(self.directory).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and marker in cmdline:
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount_all(self) -> None:
        """Unmount what containerd and the kubelet left under the node's directory (deepest first)."""
        if self.directory is None:
            return
        prefix = str(self.directory) + "/"
        for _ in range(3):
            mounts = []
            with contextlib.suppress(OSError):
                for line in Path("/proc/self/mounts").read_text().splitlines():
                    target = line.split()[1].replace("\\040", " ")
                    if target.startswith(prefix):
                        mounts.append(target)
            if not mounts:
                return
            for target in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", target], check=False, capture_output=True)

    # ----------------------------------------------------------------- the node

    def _start_node(self) -> None:
        assert self.directory is not None
        began = time.monotonic()
        self._start_containerd()
        self._phase("containerd", began)
        began = time.monotonic()
        self._import_images()
        self._phase("images", began)
        began = time.monotonic()
        kubeconfig = self.directory / "node.kubeconfig"
        kubeconfig.write_text(Path(self.kubeconfig).read_text())
        kubeconfig.chmod(0o600)
        self._spawn(
            "kube-scheduler",
            [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=1"],
        )
        self._saved_sysctls = read_sysctls()
        self._start_kubelet(kubeconfig)
        self._start_kube_proxy(kubeconfig)
        self._wait(lambda: self._node_ready(), "node Ready", "kubelet")
        self._phase("node", began)
        began = time.monotonic()
        self._start_coredns()
        self._phase("coredns", began)

    def _start_containerd(self) -> None:
        assert self.directory is not None
        d = self.directory / "containerd"
        for sub in ("root", "state", "cni", "cni-ipam", "opt"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.containerd_socket = str(d / "containerd.sock")
        (d / "cni" / "10-rdsiam-e2e.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "rdsiam-e2e",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(d / "cni-ipam"),
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        config = f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  disable_tcp_service = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d / 'cni'}"
"""
        (d / "config.toml").write_text(config)
        self._spawn("containerd", ["--config", str(d / "config.toml"), "--log-level", "warn"], executable="containerd")
        self._wait(lambda: Path(self.containerd_socket).exists() and self._ctr("version").returncode == 0,
                   "containerd socket", "containerd")

    def _ctr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", self.containerd_socket, "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def _import_images(self) -> None:
        for tarball in self.images:
            done = self._ctr("images", "import", str(tarball), timeout=300)
            if done.returncode != 0:
                raise RealClusterError(f"ctr images import {tarball} failed: {done.stderr.strip()[-2000:]}")

    def _start_kubelet(self, kubeconfig: Path) -> None:
        assert self.directory is not None
        d = self.directory / "kubelet"
        d.mkdir()
        for top in cgroup_dirs():
            with contextlib.suppress(OSError):
                top.mkdir(exist_ok=True)
        resolv = d / "resolv.conf"
        resolv.write_text("# no upstream resolvers: CoreDNS answers cluster names and the test hosts only\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this host has hybrid cgroup v1
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": CGROUP_ROOT,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.node_ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": self.ca_file},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDomain": "cluster.local",
            "clusterDNS": [DNS_IP],
            "resolvConf": str(resolv),
            "syncFrequency": self.sync_frequency,
            "failSwapOn": False,
            "podLogsDir": str(d / "pod-logs"),
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "registerNode": True,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "kernelMemcgNotification": False,
        }
        (d / "config.yaml").write_text(json.dumps(config, indent=2))
        self._spawn(
            "kubelet",
            [
                f"--config={d / 'config.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={d / 'root'}",
                f"--cert-dir={d / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self, kubeconfig: Path) -> None:
        assert self.directory is not None
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",  # no IPVS here
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_CIDR,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # 0: leave the host-wide conntrack sysctls alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        path = self.directory / "kube-proxy.yaml"
        path.write_text(json.dumps(config, indent=2))
        self._spawn("kube-proxy", [f"--config={path}", "--v=1"])

    def _node_ready(self) -> bool:
        status, body = self.request("GET", f"/api/v1/nodes/{NODE_NAME}", timeout=5)
        return status == 200 and is_ready(body)

    def _wait(self, check: Any, what: str, process: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            self._check_alive(process)
            try:
                if check():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._failed(process, f"{what}: not reached within {timeout or self.start_timeout:.0f} s")
            time.sleep(0.2)

    # ----------------------------------------------------------------- cluster DNS

    def coredns_manifests(self) -> list[dict[str, Any]]:
        hosts = "".join(f"        {ip} {name}\n" for name, ip in sorted(self.hosts.items()))
        corefile = (
            ".:53 {\n    errors\n    health :8080\n    ready :8181\n"
            + (f"    hosts {{\n{hosts}        fallthrough\n    }}\n" if hosts else "")
            + "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        pods insecure\n"
            "        fallthrough in-addr.arpa ip6.arpa\n    }\n    cache 5\n}\n"
        )
        labels = {"k8s-app": "kube-dns"}
        return [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "system:coredns"},
                "rules": [
                    {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                     "verbs": ["list", "watch"]},
                    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:coredns"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
                "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
            },
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
             "data": {"Corefile": corefile}},
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": "coredns",
                            "dnsPolicy": "Default",
                            "containers": [
                                {
                                    "name": "coredns",
                                    "image": COREDNS_IMAGE,
                                    "imagePullPolicy": "Never",
                                    "args": ["-conf", "/etc/coredns/Corefile"],
                                    "ports": [
                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                    ],
                                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                                       "periodSeconds": 2},
                                    "securityContext": {
                                        "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                                        "readOnlyRootFilesystem": True,
                                    },
                                    "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                                }
                            ],
                            "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
                "spec": {
                    "clusterIP": DNS_IP,
                    "selector": labels,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                    ],
                },
            },
        ]

    def _start_coredns(self) -> None:
        self.apply_manifest(self.coredns_manifests())

        def ready() -> bool:
            status, body = self.request("GET", "/apis/apps/v1/namespaces/kube-system/deployments/coredns", timeout=5)
            return status == 200 and (body.get("status") or {}).get("readyReplicas", 0) >= 1

        self._wait(ready, "CoreDNS Ready", "kubelet")
