#!/usr/bin/env bash
# The real-node tier (tests/e2e): a one-node Kubernetes cluster built here (kubelet + containerd + runc,
# kube-proxy, CoreDNS; no Docker, no registry), the operator as a pod from its own image and chart, apps
# logging in through real kubelet mounts.
#
# 1. installs the Debian packages a node needs (containerd, runc, CNI plugins, iptables, buildah, ...);
# 2. builds what is missing, cached: scripts/build-realapi.sh (control plane, kubelet, kube-proxy,
#    kube-scheduler, CoreDNS, helm) and scripts/build-node-images.sh (base, pause, CoreDNS, operator, app);
# 3. makes a network namespace with the node's IP (10.213.0.2 on a veth inside it) and runs
#    `pytest tests/e2e` inside it, in a mount namespace of its own;
# 4. tears everything down: processes, the kubelet's cgroups, the namespace, and the host sysctls the
#    kubelet changes are put back. It fails if anything is left.
#
# Usage: scripts/e2e.sh [pytest args...]     (make e2e)
# Without root, Go or the Go module proxy the tier is skipped with the reason (exit 0), as the real-API
# tier is; RDSIAM_E2E_REQUIRE=1 (or CI=true, as .ci/run has it) turns that into a failure. Measured times: tests/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

NODE_IP=10.213.0.2
SECOND_IP=10.213.0.3
log() { printf '%s e2e: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
skip() {
    log "SKIPPED: $*"
    case "${RDSIAM_E2E_REQUIRE:-${CI:-}}" in 1|true) log "failing instead (RDSIAM_E2E_REQUIRE or CI is set)"; exit 1 ;; esac
    exit 0
}

[ "$(id -u)" -eq 0 ] || skip "a real node needs root (network namespace, containerd, kubelet)"
command -v go >/dev/null 2>&1 || skip "go not found: the node's binaries are built from Go modules"
scripts/setup.sh >/dev/null

need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
    log "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

began=$(date +%s)
timeout 2400 scripts/build-realapi.sh || skip "building the node's binaries failed (see above)"
timeout 1200 scripts/build-node-images.sh || skip "building the node's images failed (see above)"
log "builds ready in $(( $(date +%s) - began )) s"

# One node at a time on a machine: the kubelet's cgroups and the host sysctls are machine-wide.
lock="${RDSIAM_NODE_CACHE:-$HOME/.cache/rdsiam/node}/e2e.lock"
mkdir -p "$(dirname "$lock")"
exec 8>"$lock"
flock -w 3600 8 || skip "another e2e run holds $lock"

ns="rdsiam-e2e-$$"
# Every temporary file of the run (the cluster's directory, the databases', pytest's) under one directory,
# removed at the end even when the run is killed.
work=$(mktemp -d "${TMPDIR:-/tmp}/rdsiam-e2e-run.XXXXXX")
chmod 755 "$work"  # as /tmp is to them: PostgreSQL runs as its own user
sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
         kernel.keys.root_maxbytes)
declare -A saved existed
for s in "${sysctls[@]}"; do saved[$s]=$(sysctl -n "$s"); done
for d in /run/containerd /var/log/containers /var/log/pods /var/lib/kubelet /var/lib/cni; do
    if [ -e "$d" ]; then existed[$d]=1; fi
done

cleanup() {
    local rc=$? left=0 pid s d
    # Anything still in the namespace (a crashed test run): end it.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    for d in /sys/fs/cgroup/*/rdsiam-e2e; do
        [ -d "$d" ] || continue
        for pid in $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    sleep 0.5
    for d in /sys/fs/cgroup/*/rdsiam-e2e; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$d" ] && { log "LEFT: cgroup $d"; left=1; }
    done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
    for s in "${sysctls[@]}"; do
        if [ "$(sysctl -n "$s")" != "${saved[$s]}" ]; then
            log "restoring $s=${saved[$s]} (was $(sysctl -n "$s"))"
            sysctl -qw "$s=${saved[$s]}"
        fi
    done
    if pgrep -f 'rdsiam-realapi-.*(containerd|kubelet)|containerd-shim.*rdsiam-realapi' >/dev/null; then
        log "LEFT: processes: $(pgrep -af 'rdsiam-realapi-.*(containerd|kubelet)|containerd-shim.*rdsiam-realapi' | head -5)"
        left=1
    fi
    if grep -q 'rdsiam-realapi-\|rdsiam-e2e-' /proc/self/mounts; then log "LEFT: mounts on the host"; left=1; fi
    for d in /run/containerd /var/log/containers /var/log/pods /var/lib/kubelet /var/lib/cni; do
        if [ -e "$d" ] && [ -z "${existed[$d]:-}" ]; then log "LEFT: $d (made during the run)"; left=1; fi
    done
    if [ "$left" = 1 ] && [ "$rc" = 0 ]; then rc=1; fi
    log "torn down (network namespace, cgroups, sysctls); exit $rc"
    exit "$rc"
}
trap cleanup EXIT INT TERM

ip netns add "$ns"
ip -n "$ns" link set lo up
# The node's interface: a veth pair with both ends inside (no dummy driver on this kernel).
ip -n "$ns" link add rdsiam0 type veth peer name rdsiam1
ip -n "$ns" addr add "$NODE_IP/24" dev rdsiam0
ip -n "$ns" addr add "$SECOND_IP/24" dev rdsiam0  # a second RDS endpoint's front door
ip -n "$ns" link set rdsiam0 up
ip -n "$ns" link set rdsiam1 up
ip -n "$ns" route add default dev rdsiam0
ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1

log "running tests/e2e in network namespace $ns (node IP $NODE_IP)"
set +e
# nsenter, not `ip netns exec`: that remounts /sys and hides the cgroup mounts the kubelet needs. A mount
# namespace of its own (slave: nothing propagates back) keeps the kubelet's and containerd's mounts off
# the host; they go with its last process. Fresh tmpfs on /run and /var/log there take the paths
# containerd and the kubelet write whatever their configuration says (/run/containerd/s for the shims'
# sockets, /var/log/containers), so nothing of theirs is left on the host either.
unshare --mount --propagation slave nsenter --net="/run/netns/$ns" -- sh -c \
    'mount -t tmpfs -o mode=0755 rdsiam-e2e-run /run && mount -t tmpfs -o mode=0755 rdsiam-e2e-log /var/log &&
     exec "$@"' rdsiam-e2e \
    env TMPDIR="$work" RDSIAM_E2E_NODE_IP="$NODE_IP" RDSIAM_E2E_SECOND_IP="$SECOND_IP" \
    .venv/bin/python -m pytest tests/e2e "$@"
rc=$?
set -e
exit "$rc"
