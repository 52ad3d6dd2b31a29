#!/usr/bin/env bash
# Build the container images of the real-node test tier (tests/e2e) without any registry, and write
# each as a docker-archive tarball that `ctr -n k8s.io images import` loads under its name:
#   base     localhost/rdsiam-e2e/python:3.11-bookworm  (debootstrap minbase + Debian's python3; only
#            kept in buildah's storage, as the base of the two below; built once, ~60 s)
#   pause    localhost/rdsiam-e2e/pause:3.10     images/pause.tar    (scripts/node/pause.c, gcc -static)
#   coredns  localhost/rdsiam-e2e/coredns:1.15.0 images/coredns.tar  (the binary scripts/build-realapi.sh
#            builds: run `scripts/build-realapi.sh coredns` first)
#   rdsiam   localhost/rdsiam-e2e/rdsiam:dev     images/rdsiam.tar   (the operator: ./Dockerfile)
#   app      localhost/rdsiam-e2e/app:dev        images/app.tar      (examples/apps/Dockerfile)
#   proxy    localhost/rdsiam-e2e/rdsiam-proxy:dev images/proxy.tar (./Dockerfile's `proxy` stage)
#   jre, nodejs  localhost/rdsiam-e2e/{jre:17,nodejs:18}-bookworm: the base plus Debian's
#            openjdk-17-jre-headless or nodejs (only kept in buildah's storage, as the bases below)
#   go-app   localhost/rdsiam-e2e/orders-go:dev    images/go-app.tar   (examples/apps/go/Dockerfile on scratch)
#   node-app localhost/rdsiam-e2e/orders-node:dev  images/node-app.tar (examples/apps/node/Dockerfile on nodejs)
#   java-app localhost/rdsiam-e2e/orders-java:dev  images/java-app.tar (examples/apps/java/Dockerfile on jre)
#            Their artifacts are built on the host as an app team's CI builds them: `go build` (Go
#            module proxy), `npm ci` (npm's registry), `mvn package` (Maven Central).
# under ${RDSIAM_NODE_CACHE:-$HOME/.cache/rdsiam/node}. buildah's storage, run state, configuration
# and temporary files live there too; nothing under /etc/containers or /var/lib/containers is changed:
# the builds run in a private mount namespace (nothing they mount outlives it) whose /var/lib is an
# overlay kept in the cache. The rdsiam wheel in the app image is built on the host from a copy of the
# sources (.venv's pip from scripts/setup.sh, else python3 -m pip).
#
# Needs root, buildah and runc (crun fails on cgroup v1 hybrid hosts), debootstrap, gcc and libc6-dev:
# whichever is missing is installed with apt-get. The network is used only by debootstrap (Debian's
# mirror) and pip (PyPI) inside the builds, each bounded by `timeout`.
#
# Usage: scripts/build-node-images.sh [--force] [--no-cache] [--print-image-dir] [IMAGE ...]
#   IMAGE: base, pause, coredns, rdsiam, app, proxy, jre, nodejs, go-app, node-app, java-app (none named: all). An image whose stamp matches its
#   inputs (the hash of the files that go into it, the base image under it, this script's recipe) is
#   skipped, so a second run takes seconds. --force ignores the stamps of the images named (buildah's
#   layer cache, keyed by content, still applies unless --no-cache is given too). Exits non-zero when
#   an image could not be built (the others are written all the same). Build logs: $CACHE/logs.
#
# Environment:
#   RDSIAM_NODE_CACHE          cache root (default ~/.cache/rdsiam/node)
#   RDSIAM_NODE_DEBIAN_MIRROR  default http://deb.debian.org/debian
#   RDSIAM_NODE_TIMEOUT        seconds allowed to each network-bound step (default 1200)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

CACHE="${RDSIAM_NODE_CACHE:-$HOME/.cache/rdsiam/node}"
IMAGES="$CACHE/images"
STAMPS="$CACHE/stamps"
LOGS="$CACHE/logs"
CONF="$CACHE/containers"
TMP="$CACHE/tmp"
MIRROR="${RDSIAM_NODE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NET_TIMEOUT="${RDSIAM_NODE_TIMEOUT:-1200}"
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
# Bump when a build recipe changes, so stamps written by an older recipe are ignored. The base has its
# own (rebuilding it costs a debootstrap and rebuilds the images on top of it).
RECIPE=1
BASE_RECIPE=1

PREFIX=localhost/rdsiam-e2e
BASE_IMAGE="$PREFIX/python:3.11-bookworm"
image_of() {
    case "$1" in
        base) echo "$BASE_IMAGE" ;;
        pause) echo "$PREFIX/pause:3.10" ;;
        coredns) echo "$PREFIX/coredns:1.15.0" ;;
        rdsiam) echo "$PREFIX/rdsiam:dev" ;;
        app) echo "$PREFIX/app:dev" ;;
        proxy) echo "$PREFIX/rdsiam-proxy:dev" ;;
        jre) echo "$PREFIX/jre:17-bookworm" ;;
        nodejs) echo "$PREFIX/nodejs:18-bookworm" ;;
        go-app) echo "$PREFIX/orders-go:dev" ;;
        node-app) echo "$PREFIX/orders-node:dev" ;;
        java-app) echo "$PREFIX/orders-java:dev" ;;
    esac
}

force=0
no_cache=()
components=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --no-cache) no_cache=(--no-cache) ;;
        --print-image-dir) echo "$IMAGES"; exit 0 ;;
        base|pause|coredns|rdsiam|app|proxy|jre|nodejs|go-app|node-app|java-app) components+=("$arg") ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) echo "build-node-images: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done
ALL=(base pause coredns rdsiam app proxy jre nodejs go-app node-app java-app)
[ "${#components[@]}" -gt 0 ] || components=("${ALL[@]}")
named=" ${components[*]} "  # what --force applies to
# In build order, each with the base images it is built on (a no-op when they are there).
case " ${components[*]} " in *" node-app "*) components+=(nodejs) ;; esac
case " ${components[*]} " in *" java-app "*) components+=(jre) ;; esac
case " ${components[*]} " in *" rdsiam "*|*" app "*|*" proxy "*|*" jre "*|*" nodejs "*) components+=(base) ;; esac
ordered=()
for c in "${ALL[@]}"; do
    case " ${components[*]} " in *" $c "*) ordered+=("$c") ;; esac
done
components=("${ordered[@]}")

log() { printf '%s build-node-images: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (buildah with runc, debootstrap)"

# --- tools: install what is missing (apt-get update once) ---------------------------------------
apt_updated=0
apt_install() {  # PACKAGE...
    command -v apt-get >/dev/null || die "missing $*; install it (no apt-get here)"
    # Never below, where /var/lib (dpkg's database) is an overlay that the host does not see.
    [ "${RDSIAM_NODE_IN_NAMESPACE:-}" != 1 ] || die "still missing after installing: $*"
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        timeout "$NET_TIMEOUT" apt-get update -qq
        apt_updated=1
    fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive timeout "$NET_TIMEOUT" \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
need() { command -v "$1" >/dev/null || apt_install "${@:2}"; }  # need COMMAND PACKAGE...
# All installs happen here, before the mount namespace below (whose /var/lib is an overlay).
need buildah buildah
need runc runc
for c in "${components[@]}"; do
    case "$c" in
        base) need debootstrap debootstrap ;;
        pause)
            need gcc gcc libc6-dev
            [ "$(gcc -print-file-name=libc.a)" != libc.a ] || apt_install libc6-dev ;;  # the static C library
        go-app) command -v go >/dev/null || die "go-app: needs Go (the node's binaries need it too)" ;;
        node-app) need npm npm ;;
        java-app) need mvn maven ;;
    esac
done
RUNC="$(command -v runc)"

case "$CACHE/" in
    /var/lib/*) die "RDSIAM_NODE_CACHE must not be under /var/lib (it is overlaid while building)" ;;
esac
mkdir -p "$IMAGES" "$STAMPS" "$LOGS" "$CONF" "$TMP"
if [ "${RDSIAM_NODE_IN_NAMESPACE:-}" != 1 ]; then
    exec 9>"$CACHE/.lock"
    flock 9  # one build per cache at a time (the lock is held by the process below)
    # A private mount namespace: whatever buildah, runc and debootstrap mount disappears with it, and
    # /var/lib is an overlay whose writes land in the cache. containers/image writes its blob-info
    # cache to /var/lib/containers/cache for root and buildah has no option to move it.
    exec unshare --mount --propagation private -- env RDSIAM_NODE_IN_NAMESPACE=1 "$REPO/scripts/${0##*/}" "$@"
fi
mkdir -p "$CONF/var-lib/upper" "$CONF/var-lib/work"
mount -t overlay rdsiam-var-lib -o "lowerdir=/var/lib,upperdir=$CONF/var-lib/upper,workdir=$CONF/var-lib/work" /var/lib
rm -rf "$CONF/run"  # run state of an earlier run: nothing of it is mounted or running now

# --- buildah confined to the cache ----------------------------------------------------------------
cat > "$CONF/containers.conf" <<EOF
# Written by scripts/build-node-images.sh.
[containers]
# The shell may lack CAP_SYS_RESOURCE: stay below the hard limit.
default_ulimits = ["nofile=20000:20000"]
[engine]
runtime = "runc"
image_copy_tmp_dir = "$TMP"
EOF
cat > "$CONF/storage.conf" <<EOF
# Written by scripts/build-node-images.sh.
[storage]
driver = "overlay"
graphroot = "$CONF/storage"
runroot = "$CONF/run"
EOF
cat > "$CONF/registries.conf" <<EOF
# Written by scripts/build-node-images.sh: no registry is reachable; every image name is local.
unqualified-search-registries = []
short-name-mode = "enforcing"
EOF
echo '{"default": [{"type": "insecureAcceptAnything"}]}' > "$CONF/policy.json"
export CONTAINERS_CONF="$CONF/containers.conf" CONTAINERS_STORAGE_CONF="$CONF/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$CONF/registries.conf" TMPDIR="$TMP"
export BUILDAH_ISOLATION=oci BUILDAH_LAYERS=true
POLICY=(--signature-policy "$CONF/policy.json")
bah() { buildah --root "$CONF/storage" --runroot "$CONF/run" --storage-driver overlay "$@"; }

ROOTFS="$TMP/base-rootfs"
unmount_under() {  # lazily unmount whatever is mounted below $1 (a debootstrap that died leaves /proc, /sys)
    local mp
    awk '{print $2}' /proc/mounts | { grep -F "$1/" || true; } | sort -r | while read -r mp; do
        umount -l "$mp" 2>/dev/null || true
    done
}
cleanup() {
    bah rm --all >/dev/null 2>&1 || true  # working containers of this run (the storage is ours alone)
    # After a build, the images no name points at any more (previous builds); the layer cache of the
    # current ones stays (the operator's build stage is named for that).
    [ "$built" = 0 ] || bah rmi --prune >/dev/null 2>&1 || true
    if [ -d "$ROOTFS" ]; then unmount_under "$ROOTFS"; rm -rf --one-file-system "$ROOTFS"; fi
    rm -rf "$TMP"/run.*
}
built=0
trap cleanup EXIT
RUN_TMP="$(mktemp -d "$TMP/run.XXXXXX")"

# --- inputs and stamps ---------------------------------------------------------------------------
hash_files() {  # FILE... -> one sha256 over the names and contents
    local f
    for f in "$@"; do printf '%s %s\n' "$f" "$(sha256sum < "$f" | cut -d' ' -f1)"; done | sha256sum | cut -d' ' -f1
}
operator_files() {  # what the build context's operator/ holds (.dockerignore drops caches and egg-info)
    find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' | LC_ALL=C sort
}
image_id() { bah images --noheading --no-trunc --format '{{.ID}}' "$1" 2>/dev/null | head -n 1; }
coredns_bin() { echo "$(scripts/build-realapi.sh --print-bin-dir)/coredns"; }

stamp_value() {  # image -> the stamp a completed build of it writes (empty: inputs missing)
    local base_id
    case "$1" in
        base) echo "recipe=$BASE_RECIPE suite=$SUITE include=$BASE_PACKAGES mirror=$MIRROR" ;;
        pause)
            echo "recipe=$RECIPE gcc=$(gcc -dumpfullversion 2>/dev/null || echo none)" \
                "src=$(hash_files scripts/node/pause.c)" ;;
        coredns)
            [ -x "$(coredns_bin)" ] || return 0
            echo "recipe=$RECIPE bin=$(sha256sum < "$(coredns_bin)" | cut -d' ' -f1)" ;;
        rdsiam|app|proxy)
            base_id="$(image_id "$BASE_IMAGE")"
            [ -n "$base_id" ] || return 0
            if [ "$1" != app ]; then
                # shellcheck disable=SC2046
                echo "recipe=$RECIPE base=$base_id src=$(hash_files Dockerfile .dockerignore pyproject.toml \
                    constraints.txt README.md $(operator_files))"
            else
                # shellcheck disable=SC2046
                echo "recipe=$RECIPE base=$base_id src=$(hash_files examples/apps/Dockerfile examples/apps/*.py \
                    pyproject.toml constraints.txt README.md $(operator_files))"
            fi ;;
        jre|nodejs)
            base_id="$(image_id "$BASE_IMAGE")"
            [ -n "$base_id" ] || return 0
            echo "recipe=$BASE_RECIPE base=$base_id packages=$(lang_packages "$1")" ;;
        go-app|node-app|java-app)
            case "$1" in
                go-app) base_id=scratch ;;
                node-app) base_id="$(image_id "$(image_of nodejs)")" ;;
                java-app) base_id="$(image_id "$(image_of jre)")" ;;
            esac
            [ -n "$base_id" ] || return 0
            # shellcheck disable=SC2046
            echo "recipe=$RECIPE base=$base_id src=$(hash_files $(lang_app_files "$1"))" ;;
    esac
}
lang_packages() {  # jre|nodejs -> the Debian packages added to the base
    case "$1" in jre) echo openjdk-17-jre-headless ;; nodejs) echo nodejs ;; esac
}
lang_dir() { echo "examples/apps/${1%-app}"; }  # go-app -> examples/apps/go
lang_app_files() {  # what goes into an example app's image (not what a build leaves there)
    find "$(lang_dir "$1")" -type f ! -path '*/node_modules/*' ! -path '*/target/*' ! -name orders-app \
        ! -name '*.md' | LC_ALL=C sort
}
is_base() { case "$1" in base|jre|nodejs) return 0 ;; *) return 1 ;; esac; }
up_to_date() {
    local c="$1" want
    want="$(stamp_value "$c")"
    [ -n "$want" ] && [ -f "$STAMPS/$c" ] && [ "$(cat "$STAMPS/$c")" = "$want" ] || return 1
    if is_base "$c"; then [ -n "$(image_id "$(image_of "$c")")" ]; else [ -s "$IMAGES/$c.tar" ]; fi
}

export_image() {  # IMAGE FILE: a docker-archive that keeps IMAGE as its name, renamed into place when whole
    local image="$1" file="$IMAGES/$2" part="$IMAGES/.$2.part"
    rm -f "$part"
    bah push "${POLICY[@]}" --quiet "$image" "docker-archive:$part:$image" >/dev/null
    mv -f "$part" "$file"
}

# Host files pip needs inside a build (an HTTPS proxy's CA), mounted for the RUN steps, never copied.
BUILD_VOLUMES=()
for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [ -f "$f" ] && BUILD_VOLUMES+=(--volume "$f:$f:ro")
done
bud() {  # LOGFILE buildah-bud-arguments...
    local logfile="$1"; shift
    timeout "$NET_TIMEOUT" buildah --root "$CONF/storage" --runroot "$CONF/run" --storage-driver overlay \
        bud "${POLICY[@]}" --pull=never --network=host --layers --force-rm --format docker \
        --runtime "$RUNC" --runtime-flag "root=$CONF/runc" --ulimit nofile=20000:20000 \
        "${no_cache[@]}" "${BUILD_VOLUMES[@]}" "$@" > "$logfile" 2>&1
}
show_log() { log "last lines of $1:"; tail -n 25 "$1" >&2 || true; }

# --- the images ----------------------------------------------------------------------------------
slim_rootfs() {  # as Debian's official images: no docs, man pages or translations, apt keeps no caches
    local root="$1"
    cat > "$root/etc/dpkg/dpkg.cfg.d/rdsiam-slim" <<'EOF'
# Written by scripts/build-node-images.sh (as debuerreotype's slim images): packages installed later
# leave these out too.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
    cat > "$root/etc/apt/apt.conf.d/rdsiam-clean" <<'EOF'
// Written by scripts/build-node-images.sh (as Debian's official images): an `apt-get install` in an
// image build leaves no .deb files and no package caches in its layer.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Install-Recommends "false";
EOF
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$root"/usr/share/{groff,info,linda,locale,man}/* "$root"/usr/share/lintian/overrides/*
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
        "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
}

build_base() {
    local logfile="$LOGS/base.log" tarball="$RUN_TMP/rootfs.tar" ctr
    if [ -d "$ROOTFS" ]; then unmount_under "$ROOTFS"; rm -rf --one-file-system "$ROOTFS"; fi
    log "base: debootstrap $SUITE minbase + $BASE_PACKAGES from $MIRROR (~60 s)"
    if ! timeout "$NET_TIMEOUT" debootstrap --variant=minbase --include="$BASE_PACKAGES" \
            "$SUITE" "$ROOTFS" "$MIRROR" > "$logfile" 2>&1; then
        show_log "$logfile"; return 1
    fi
    slim_rootfs "$ROOTFS"
    tar --numeric-owner --xattrs -C "$ROOTFS" -cf "$tarball" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' --exclude='./tmp/*' .
    unmount_under "$ROOTFS"; rm -rf --one-file-system "$ROOTFS"  # only the image is kept
    ctr="$(bah from "${POLICY[@]}" --pull=never scratch)"
    bah add "$ctr" "$tarball" / >> "$logfile"
    rm -f "$tarball"
    bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
        --cmd '["python3"]' \
        --label "org.opencontainers.image.description=debootstrap $SUITE minbase + $BASE_PACKAGES" "$ctr"
    bah commit --rm --quiet --format docker "$ctr" "$BASE_IMAGE" >> "$logfile"
}

build_pause() {
    local dir="$RUN_TMP/pause" ctr
    mkdir -p "$dir"
    gcc -static -Os -s -Wall -Wextra -o "$dir/pause" scripts/node/pause.c
    ctr="$(bah from "${POLICY[@]}" --pull=never scratch)"
    bah copy --chmod 0755 "$ctr" "$dir/pause" /pause >/dev/null
    bah config --user 65535:65535 --entrypoint '["/pause"]' --cmd '' "$ctr"
    bah commit --rm --quiet --format docker "$ctr" "$(image_of pause)" >/dev/null
    export_image "$(image_of pause)" pause.tar
}

build_coredns() {
    local bin ctr
    bin="$(coredns_bin)"
    if [ ! -x "$bin" ]; then
        log "coredns: $bin is missing: build it with 'scripts/build-realapi.sh coredns', then run this again"
        return 1
    fi
    ctr="$(bah from "${POLICY[@]}" --pull=never scratch)"
    bah copy --chmod 0755 "$ctr" "$bin" /coredns >/dev/null
    # root, so that it can bind :53; the pod drops every capability but NET_BIND_SERVICE.
    bah config --user 0:0 --entrypoint '["/coredns"]' --cmd '' --port 53 --port 53/udp "$ctr"
    bah commit --rm --quiet --format docker "$ctr" "$(image_of coredns)" >/dev/null
    export_image "$(image_of coredns)" coredns.tar
}

build_rdsiam() {
    local logfile="$LOGS/rdsiam.log"
    log "rdsiam: buildah bud of ./Dockerfile on $BASE_IMAGE (log: $logfile)"
    # The build stage first, under a name of its own, so that pruning keeps its layers (the operator's
    # dependencies) for the next build; the second bud reuses them.
    bud "$logfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" -f Dockerfile --target build \
        -t "$PREFIX/rdsiam-build-stage:cache" . || { show_log "$logfile"; return 1; }
    bud "$logfile.2" --build-arg "BASE_IMAGE=$BASE_IMAGE" -f Dockerfile -t "$(image_of rdsiam)" . \
        || { show_log "$logfile.2"; return 1; }
    cat "$logfile.2" >> "$logfile"; rm -f "$logfile.2"
    export_image "$(image_of rdsiam)" rdsiam.tar
}

build_proxy() {
    local logfile="$LOGS/proxy.log"
    log "proxy: buildah bud of ./Dockerfile --target proxy on $BASE_IMAGE (log: $logfile)"
    bud "$logfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" -f Dockerfile --target proxy -t "$(image_of proxy)" . \
        || { show_log "$logfile"; return 1; }
    export_image "$(image_of proxy)" proxy.tar
}

build_app() {
    local logfile="$LOGS/app.log" src="$RUN_TMP/app-src" ctx="$RUN_TMP/app-context" py=""
    # The wheel of rdsiam, built from a copy of the package's sources (never inside the repository).
    if [ -x .venv/bin/python ]; then py=.venv/bin/python
    elif python3 -m pip --version >/dev/null 2>&1; then py=python3
    else log "app: no Python with pip to build the rdsiam wheel (run scripts/setup.sh)"; return 1
    fi
    mkdir -p "$src" "$ctx/dist"
    tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - \
        pyproject.toml README.md operator | tar -C "$src" -xf -
    # SOURCE_DATE_EPOCH: the same sources give the same wheel, so buildah's layer cache holds.
    if ! SOURCE_DATE_EPOCH=315532800 timeout "$NET_TIMEOUT" "$py" -m pip wheel --no-deps --no-cache-dir \
            --disable-pip-version-check -q -w "$ctx/dist" "$src" > "$logfile" 2>&1; then
        show_log "$logfile"; return 1
    fi
    cp examples/apps/Dockerfile examples/apps/*.py constraints.txt "$ctx/"
    log "app: buildah bud of examples/apps/Dockerfile on $BASE_IMAGE (log: $logfile)"
    bud "$logfile.bud" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$(image_of app)" "$ctx" \
        || { show_log "$logfile.bud"; return 1; }
    cat "$logfile.bud" >> "$logfile"; rm -f "$logfile.bud"
    export_image "$(image_of app)" app.tar
}

build_lang_base() {  # jre|nodejs: the base plus a Debian language runtime (the JRE's postinst needs man1)
    local c="$1" logfile="$LOGS/$1.log" ctx="$RUN_TMP/$1-context"
    mkdir -p "$ctx"
    printf '%s\n' "FROM $BASE_IMAGE" \
        "RUN mkdir -p /usr/share/man/man1 && apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(lang_packages "$c") && rm -rf /var/lib/apt/lists/* /usr/share/man/*" \
        > "$ctx/Dockerfile"
    log "$c: $(lang_packages "$c") from Debian on $BASE_IMAGE (log: $logfile)"
    bud "$logfile" -t "$(image_of "$c")" "$ctx" || { show_log "$logfile"; return 1; }
}
build_jre() { build_lang_base jre; }
build_nodejs() { build_lang_base nodejs; }

build_lang_app() {  # go-app|node-app|java-app: the artifact built here, then the example's Dockerfile
    local c="$1" dir logfile="$LOGS/$1.log" ctx="$RUN_TMP/$1-context" base
    dir="$(lang_dir "$c")"
    mkdir -p "$ctx"
    tar -C "$dir" --exclude=node_modules --exclude=target --exclude=orders-app -cf - . | tar -C "$ctx" -xf -
    log "$c: building the app in a copy of $dir (log: $logfile)"
    case "$c" in
        go-app)
            base=scratch
            # Its tests first (the mount reader under a kubelet-style writer), as the app's CI would.
            (cd "$ctx" && export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local &&
                timeout "$NET_TIMEOUT" go test -trimpath ./... &&
                go build -trimpath -ldflags="-s -w" -o orders-app .) > "$logfile" 2>&1 ;;
        node-app)
            base="$(image_of nodejs)"
            (cd "$ctx" && timeout "$NET_TIMEOUT" npm ci --omit=dev --no-audit --no-fund --ignore-scripts &&
                node --test) > "$logfile" 2>&1 ;;
        java-app)
            base="$(image_of jre)"
            (cd "$ctx" && timeout "$NET_TIMEOUT" mvn -q -B -DskipTests package) > "$logfile" 2>&1 ;;
    esac || { show_log "$logfile"; return 1; }
    log "$c: buildah bud of $dir/Dockerfile on $base (log: $logfile)"
    bud "$logfile.bud" --build-arg "BASE_IMAGE=$base" -t "$(image_of "$c")" "$ctx" \
        || { show_log "$logfile.bud"; return 1; }
    cat "$logfile.bud" >> "$logfile"; rm -f "$logfile.bud"
    export_image "$(image_of "$c")" "$c.tar"
}
build_go-app() { build_lang_app go-app; }
build_node-app() { build_lang_app node-app; }
build_java-app() { build_lang_app java-app; }

failed=()
for c in "${components[@]}"; do
    if { [ "$force" = 0 ] || [ "${named/ $c /}" = "$named" ]; } && up_to_date "$c"; then
        log "$c: up to date ($(image_of "$c"))"
        continue
    fi
    under=""
    case "$c" in
        rdsiam|app|proxy|jre|nodejs) under="$BASE_IMAGE" ;;
        node-app) under="$(image_of nodejs)" ;;
        java-app) under="$(image_of jre)" ;;
    esac
    if [ -n "$under" ] && [ -z "$(image_id "$under")" ]; then
        log "$c: the base image $under is missing; skipped"
        failed+=("$c"); continue
    fi
    rm -f "$STAMPS/$c"
    start=$(date +%s)
    built=1
    if "build_$c"; then
        stamp_value "$c" > "$STAMPS/$c"
        if is_base "$c"; then
            log "$c: built in $(( $(date +%s) - start )) s: $(image_of "$c")"
        else
            log "$c: built in $(( $(date +%s) - start )) s: $(image_of "$c") -> $IMAGES/$c.tar" \
                "($(du -m "$IMAGES/$c.tar" | cut -f1) MB)"
        fi
    else
        log "$c: FAILED after $(( $(date +%s) - start )) s"
        failed+=("$c")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    log "failed: ${failed[*]}; the other images are in $IMAGES"
    exit 1
fi
log "images in $IMAGES"
