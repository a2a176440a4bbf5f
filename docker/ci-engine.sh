#!/usr/bin/env bash
# Starts (or finds) a private Docker engine for building and testing the amdim
# images where no engine runs and nothing can be pulled from a registry, and
# makes the `amdim-base:bookworm` base image with debootstrap.
#
# Idempotent: a second run finds the engine and the image and returns at once.
# The last line on stdout is `export DOCKER_HOST=unix://…`, so callers can do
#   eval "$(docker/ci-engine.sh | tail -n1)"
# Progress goes to stderr.
#
# Needs root (or passwordless sudo) for apt-get, dockerd and debootstrap.
#
# Environment (all optional):
#   AMDIM_DOCKER_SOCK       engine socket        (/run/amdim-docker.sock)
#   AMDIM_DOCKER_DATA_ROOT  engine data root     (/var/lib/amdim-docker)
#   AMDIM_DOCKER_LOG        engine log file      (/var/log/amdim-dockerd.log)
#   AMDIM_BASE_IMAGE        base image to make   (amdim-base:bookworm)
#   AMDIM_DEBIAN_MIRROR     Debian mirror for debootstrap (default: the first
#                           Debian mirror in /etc/apt/sources.list*)
#   AMDIM_DOCKER_CACHE      where the debootstrap tarball is cached
#                           (<repo>/target/docker-cache)
set -euo pipefail

SOCK=${AMDIM_DOCKER_SOCK:-/run/amdim-docker.sock}
DATA_ROOT=${AMDIM_DOCKER_DATA_ROOT:-/var/lib/amdim-docker}
LOG=${AMDIM_DOCKER_LOG:-/var/log/amdim-dockerd.log}
BASE_IMAGE=${AMDIM_BASE_IMAGE:-amdim-base:bookworm}
# How the base image is made; bump it when slim_rootfs changes, so that the
# cached tarball and the image are remade.
BASE_RECIPE=bookworm-minbase-slim1
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${AMDIM_DOCKER_CACHE:-$REPO_ROOT/target/docker-cache}
# Keep this engine's run-time state apart from a system dockerd's.
EXEC_ROOT=${SOCK%.sock}-exec
PIDFILE=${SOCK%.sock}.pid

log() { printf 'ci-engine: %s\n' "$*" >&2; }
die() { printf 'ci-engine: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "run as root (or install sudo): dockerd and debootstrap need it"
    SUDO=(sudo -n)
fi

# 1. Packages: Debian's engine and debootstrap (the docker CLI may be newer).
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v docker >/dev/null 2>&1 || die "no docker CLI on PATH (Debian's docker.io ships one in /usr/bin)"

export DOCKER_HOST="unix://$SOCK"

engine_up() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# 2. The engine: no bridge, no iptables; builds and containers use --network host|none.
if engine_up; then
    log "engine already running at $DOCKER_HOST"
else
    log "starting dockerd at $DOCKER_HOST (data root $DATA_ROOT, log $LOG)"
    "${SUDO[@]}" mkdir -p "$DATA_ROOT" "$EXEC_ROOT" "$(dirname "$LOG")"
    "${SUDO[@]}" rm -f "$SOCK"
    # setsid + nohup: the engine outlives this script and its terminal.
    "${SUDO[@]}" setsid nohup dockerd \
        --data-root "$DATA_ROOT" \
        --exec-root "$EXEC_ROOT" \
        --pidfile "$PIDFILE" \
        --host "unix://$SOCK" \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
        >>"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        engine_up && break
        sleep 1
    done
    engine_up || { tail -n 30 "$LOG" >&2; die "dockerd did not come up within 60 s (log above, full log: $LOG)"; }
    log "engine up: dockerd $(docker version --format '{{.Server.Version}}'), storage $(docker info --format '{{.Driver}}')"
fi

# Makes a debootstrapped tree look like debian:bookworm-slim: the apt and
# dpkg settings of Debian's official images (no package caches, no docs, man
# pages or translations), security updates listed.
slim_rootfs() {
    local root=$1 mirror=${2%/}
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
        "$mirror" "$mirror" "$mirror" | put_file "$root/etc/apt/sources.list"
    put_file "$root/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
    echo 'Apt::AutoRemove::SuggestsImportant "false";' | put_file "$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
    printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' | put_file "$root/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Acquire::Languages "none";' | put_file "$root/etc/apt/apt.conf.d/docker-no-languages"
    "${SUDO[@]}" mkdir -p "$root/etc/dpkg/dpkg.cfg.d"
    put_file "$root/etc/dpkg/dpkg.cfg.d/docker" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CONF
    "${SUDO[@]}" find "$root/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
    "${SUDO[@]}" find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
    "${SUDO[@]}" find "$root/usr/share/man" "$root/usr/share/groff" "$root/usr/share/info" \
        "$root/usr/share/lintian" "$root/usr/share/linda" "$root/usr/share/locale" \
        "$root/var/lib/apt/lists" "$root/tmp" -mindepth 1 -delete 2>/dev/null || true
    "${SUDO[@]}" rm -f "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/log/*.log "$root"/var/log/apt/*
}

# Writes stdin to a file as root.
put_file() { "${SUDO[@]}" tee "$1" >/dev/null; }

# 3. The base image: Debian bookworm minbase, since nothing can be pulled.
recipe=$(docker image inspect --format '{{index .Config.Labels "amdim.base.recipe"}}' "$BASE_IMAGE" 2>/dev/null || true)
if [ "$recipe" = "$BASE_RECIPE" ]; then
    log "base image $BASE_IMAGE present"
else
    mirror=${AMDIM_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        # deb822 (`URIs: …`) or one-line (`deb [opts] URI suite …`) sources; skip -security.
        mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | grep -v '^[[:space:]]*#' \
            | grep -Eo 'https?://[^[:space:]]*/debian/?([[:space:]]|$)' \
            | grep -v security | head -n1 | tr -d '[:space:]' || true)
    fi
    [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*; set AMDIM_DEBIAN_MIRROR"
    tarball="$CACHE/debootstrap-$BASE_RECIPE.tar"
    if [ ! -s "$tarball" ]; then
        log "debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
        mkdir -p "$CACHE"
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        trap '"${SUDO[@]}" rm -rf "$rootfs"' EXIT
        "${SUDO[@]}" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2
        slim_rootfs "$rootfs" "$mirror"
        "${SUDO[@]}" tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
        "${SUDO[@]}" mv "$tarball.part" "$tarball"
        "${SUDO[@]}" rm -rf "$rootfs"
        trap - EXIT
    else
        log "using cached $tarball"
    fi
    log "importing $tarball as $BASE_IMAGE"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --change "LABEL amdim.base.recipe=$BASE_RECIPE" \
        "$tarball" "$BASE_IMAGE" >/dev/null
    log "base image $BASE_IMAGE: $(docker image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
fi

echo "export DOCKER_HOST=$DOCKER_HOST"
