#!/usr/bin/env bash
# Builds the amdim images from binaries already built on the host.
#
#   cargo build --release -p amdim-coordinator -p amdim-worker
#   docker/build.sh                      # coordinator and worker
#   docker/build.sh worker-cuda          # needs the --features cuda build, see below
#
# Images: amdim/coordinator:TAG, amdim/worker:TAG, amdim/worker-cuda:TAG.
# For each one a small build context is assembled under
# target/docker-context/<image>/bin/ (debug info stripped from the copies;
# target/release is left as it is), so the engine is sent only what the
# image holds.
#
# Environment (all optional):
#   TAG                   image tag                         (workspace version, e.g. 0.1.0)
#   IMAGE_PREFIX          repository prefix                 (amdim)
#   BASE_IMAGE            base of coordinator and worker    (debian:bookworm-slim)
#   CUDA_BASE_IMAGE       base of worker-cuda               (nvidia/cuda:12.8.1-runtime-ubuntu24.04)
#   CUDA_PKG_VERSION      CUDA major-minor of that base     (12-8)
#   BIN_DIR               where the binaries are            (target/release)
#   CUDA_BIN_DIR          where the cuda amdim-worker is    (target/cuda/release)
#   STRIP                 1: strip debug info from the copies, 0: copy as built (1)
#   DOCKER_BUILD_NETWORK  network of RUN steps              (host)
#   DOCKER                the docker CLI                    (docker)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"

die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'build.sh: %s\n' "$*" >&2; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' Cargo.toml | head -n1)
TAG=${TAG:-${version:-dev}}
IMAGE_PREFIX=${IMAGE_PREFIX:-amdim}
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
CUDA_BASE_IMAGE=${CUDA_BASE_IMAGE:-nvidia/cuda:12.8.1-runtime-ubuntu24.04}
CUDA_PKG_VERSION=${CUDA_PKG_VERSION:-12-8}
BIN_DIR=${BIN_DIR:-target/release}
CUDA_BIN_DIR=${CUDA_BIN_DIR:-target/cuda/release}
STRIP=${STRIP:-1}
DOCKER_BUILD_NETWORK=${DOCKER_BUILD_NETWORK:-host}
DOCKER=${DOCKER:-docker}
CONTEXT_ROOT=target/docker-context

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

images=()
for arg in "$@"; do
    case $arg in
        coordinator | worker | worker-cuda) images+=("$arg") ;;
        -h | --help) usage 0 ;;
        *) printf 'build.sh: unknown image %s (coordinator, worker, worker-cuda)\n' "$arg" >&2; usage 2 ;;
    esac
done
[ "${#images[@]}" -gt 0 ] || images=(coordinator worker)

command -v "$DOCKER" >/dev/null 2>&1 || die "no docker CLI ($DOCKER) on PATH"
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine at ${DOCKER_HOST:-the default socket}; start one (docker/ci-engine.sh starts a private one) and set DOCKER_HOST"

# Checks a binary exists; the hint says which cargo command makes it.
need_bin() {
    local path=$1 hint=$2
    [ -x "$path" ] || die "$path is missing: build it first with
    $hint
(or point BIN_DIR / CUDA_BIN_DIR at a folder that holds it)"
}

# Copies a binary into a context, without its debug info when STRIP=1.
put_bin() {
    local src=$1 dst=$2
    if [ "$STRIP" = 1 ] && command -v strip >/dev/null 2>&1; then
        strip --strip-debug -o "$dst" "$src"
    else
        cp "$src" "$dst"
    fi
    chmod 0755 "$dst"
}

revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
release_hint="cargo build --release -p amdim-coordinator -p amdim-worker"
cuda_hint="cargo build --release -p amdim-worker --features cuda --target-dir target/cuda"

for image in "${images[@]}"; do
    ctx="$CONTEXT_ROOT/$image"
    rm -rf "$ctx"
    mkdir -p "$ctx/bin"
    case $image in
        coordinator)
            bins=("$BIN_DIR/amdim-coordinator" "$BIN_DIR/amdimctl")
            hints=("$release_hint" "$release_hint")
            base=$BASE_IMAGE
            ;;
        worker)
            bins=("$BIN_DIR/amdim-worker" "$BIN_DIR/amdimctl")
            hints=("$release_hint" "$release_hint")
            base=$BASE_IMAGE
            ;;
        worker-cuda)
            bins=("$CUDA_BIN_DIR/amdim-worker" "$BIN_DIR/amdimctl")
            hints=("$cuda_hint" "$release_hint")
            base=$CUDA_BASE_IMAGE
            ;;
    esac
    for i in "${!bins[@]}"; do
        need_bin "${bins[$i]}" "${hints[$i]}"
    done
    if [ "$image" = worker-cuda ] && ! grep -qa 'libnccl' "${bins[0]}"; then
        die "${bins[0]} has no NCCL support compiled in: build it with
    $cuda_hint"
    fi
    for b in "${bins[@]}"; do
        put_bin "$b" "$ctx/bin/$(basename "$b")"
    done
    ref="$IMAGE_PREFIX/$image:$TAG"
    extra=()
    [ "$image" = worker-cuda ] && extra+=(--build-arg "CUDA_PKG_VERSION=$CUDA_PKG_VERSION")
    log "building $ref from $base (context $ctx: $(du -sh "$ctx" | cut -f1))"
    start=$SECONDS
    "$DOCKER" build \
        --network "$DOCKER_BUILD_NETWORK" \
        --build-arg "BASE_IMAGE=$base" \
        "${extra[@]}" \
        --label "org.opencontainers.image.version=$TAG" \
        --label "org.opencontainers.image.revision=$revision" \
        --label "org.opencontainers.image.base.name=$base" \
        -f "docker/$image.Dockerfile" \
        -t "$ref" \
        "$ctx" >&2
    size=$("$DOCKER" image inspect --format '{{.Size}}' "$ref" | awk '{printf "%.0f MB", $1/1e6}')
    log "built $ref ($size) in $((SECONDS - start)) s"
    echo "$ref"
done
