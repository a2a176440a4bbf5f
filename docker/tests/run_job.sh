#!/usr/bin/env bash
# CI test of the images: builds amdim/coordinator and amdim/worker, runs a
# coordinator and two CPU workers as containers, submits
# examples/fashion-mnist-smoke.toml with amdimctl from the coordinator image and
# checks that it succeeds and leaves complete checkpoints.
#
# Every container runs as the Helm chart's securityContext would have it:
# uid/gid 10001, read-only root filesystem, all capabilities dropped,
# no-new-privileges, a tmpfs /tmp. Only host networking is used (the private
# engine has no bridge), everything on 127.0.0.1 with free ports.
#
# Needs the release binaries:
#   cargo build --release -p amdim-coordinator -p amdim-worker
#   docker/tests/run_job.sh
#
# Environment (all optional):
#   TAG            image tag to build and run        (ci)
#   BASE_IMAGE     base of both images               (amdim-base:bookworm, made by docker/ci-engine.sh)
#   BIN_DIR        where the binaries are            (target/release)
#   SKIP_BUILD=1   run the images already tagged TAG
#   ENGINE=external  use the engine at DOCKER_HOST instead of starting docker/ci-engine.sh's
#   DATASET        the Fashion-MNIST IDX folder      (/usr/share/datasets/fashion-mnist)
#   JOB_TIMEOUT    seconds the job may take          (1500)
#   JOB_MAX_STEPS  stop the job after this many steps (0: the example's full epoch)
#   KEEP=1         keep the work folder (tokens, state, checkpoints, logs) after a pass
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO_ROOT"

export TAG=${TAG:-ci}
export BASE_IMAGE=${BASE_IMAGE:-amdim-base:bookworm}
DATASET=${DATASET:-/usr/share/datasets/fashion-mnist}
JOB_TIMEOUT=${JOB_TIMEOUT:-1500}
JOB_MAX_STEPS=${JOB_MAX_STEPS:-0}
WORKERS=2
COORD_IMAGE=amdim/coordinator:$TAG
WORKER_IMAGE=amdim/worker:$TAG
RUN_ID=run-job-$$
T0=$SECONDS
passed=0
failed=0

say() { printf '[run_job %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { say "error: $*"; exit 1; }
# output_has PATTERN COMMAND…: the command succeeds and prints a line matching PATTERN.
output_has() {
    local pattern=$1 out
    shift
    out=$("$@") || return 1
    grep -q -- "$pattern" <<<"$out"
}
check() {
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        say "ok: $name"
    else
        failed=$((failed + 1))
        say "FAILED: $name"
    fi
}

[ -f "$DATASET/train-images-idx3-ubyte.gz" ] || [ -f "$DATASET/train-images-idx3-ubyte" ] ||
    die "no Fashion-MNIST at $DATASET (apt-get install dataset-fashion-mnist, or set DATASET)"
command -v curl >/dev/null 2>&1 || die "curl is needed on the host"

# 1. The engine and the base image.
if [ "${ENGINE:-}" != external ]; then
    say "engine: docker/ci-engine.sh"
    engine_env=$(timeout 900 docker/ci-engine.sh | tail -n1)
    eval "$engine_env"
fi
timeout 20 docker version --format '{{.Server.Version}}' >/dev/null ||
    die "no Docker engine at ${DOCKER_HOST:-the default socket}"
say "engine at ${DOCKER_HOST:-the default socket}"

# 2. The images.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    build_start=$SECONDS
    timeout 900 docker/build.sh coordinator worker >/dev/null
    say "images built in $((SECONDS - build_start)) s"
fi
for image in "$COORD_IMAGE" "$WORKER_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 || die "no image $image"
    say "$image: $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
done

# 3. A work folder: tokens (read-only mounts), the coordinator's state and
# the checkpoints (both writable by uid 10001 only), logs.
mkdir -p target/docker-test
work=$(mktemp -d "$REPO_ROOT/target/docker-test/$RUN_ID.XXXX")
mkdir -p "$work/tokens" "$work/state" "$work/checkpoints" "$work/job" "$work/logs"
token() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
token >"$work/tokens/client-token"
token >"$work/tokens/join-token"
chown 10001:10001 "$work/tokens"/* "$work/state" "$work/checkpoints"
chmod 0400 "$work/tokens"/*
chmod 0750 "$work/state" "$work/checkpoints"
chmod 0755 "$work/tokens" "$work/job"

cleanup() {
    local status=$?
    set +e
    local ids
    ids=$(docker ps -aq --filter "label=amdim.ci.run=$RUN_ID" 2>/dev/null)
    for id in $ids; do
        local name
        name=$(docker inspect --format '{{.Name}}' "$id" | tr -d /)
        timeout 20 docker logs "$id" >"$work/logs/$name.log" 2>&1
        if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ]; then
            say "last lines of $name:"
            tail -n 25 "$work/logs/$name.log" >&2
        fi
    done
    # shellcheck disable=SC2086 # one id per word
    [ -n "$ids" ] && timeout 60 docker rm -f $ids >/dev/null 2>&1
    if [ "$status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$work"
    else
        say "work folder kept: $work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
grpc_port=$(free_port)
http_port=$(free_port)
[ "$grpc_port" != "$http_port" ] || http_port=$(free_port)
server=http://127.0.0.1:$grpc_port

# The securityContext of the Helm chart, as docker run flags.
# shellcheck disable=SC2054 # the commas are tmpfs mount options
SECURE=(--network host --read-only --cap-drop ALL --security-opt no-new-privileges
    --user 10001:10001 --tmpfs /tmp:rw,nosuid,nodev,size=256m
    --label "amdim.ci.run=$RUN_ID")

# Fails fast, with the log, when a container has stopped.
running() {
    [ "$(docker inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ] ||
        { docker logs --tail 40 "$1" >&2 2>&1; die "container $1 stopped"; }
}

# 4. The coordinator.
coord=$RUN_ID-coordinator
timeout 60 docker run -d --name "$coord" "${SECURE[@]}" \
    -v "$work/state:/var/lib/amdim" \
    -v "$work/tokens:/etc/amdim/tokens:ro" \
    "$COORD_IMAGE" \
    --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
    --store /var/lib/amdim/coordinator.db \
    --client-token-file /etc/amdim/tokens/client-token \
    --join-token-file /etc/amdim/tokens/join-token >/dev/null
deadline=$((SECONDS + 60))
until curl -fsS --max-time 2 "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1; do
    running "$coord"
    [ "$SECONDS" -lt "$deadline" ] || die "coordinator /healthz did not answer within 60 s"
    sleep 1
done
say "coordinator up: gRPC $server, HTTP http://127.0.0.1:$http_port"

# amdimctl from the coordinator image, with the client token mounted.
ctl() {
    local limit=$1
    shift
    timeout "$limit" docker run --rm "${SECURE[@]}" \
        -v "$work/tokens/client-token:/etc/amdim/tokens/client-token:ro" \
        -v "$work/job:/etc/amdim/job:ro" \
        -v "$work/checkpoints:/checkpoints:ro" \
        -e AMDIM_SERVER="$server" \
        -e AMDIM_DATA__PATH="$DATASET" \
        -e AMDIM_CHECKPOINT__URI=/checkpoints \
        -e AMDIM_TRAIN__MAX_STEPS="$JOB_MAX_STEPS" \
        --entrypoint amdimctl "$COORD_IMAGE" \
        --token-file /etc/amdim/tokens/client-token "$@"
}

# 5. The workers, with the join token as a file and metrics on a free port.
metrics_ports=()
for i in $(seq 1 "$WORKERS"); do
    metrics_ports+=("$(free_port)")
    timeout 60 docker run -d --name "$RUN_ID-worker-$i" "${SECURE[@]}" \
        -v "$DATASET:$DATASET:ro" \
        -v "$work/checkpoints:/checkpoints" \
        -v "$work/tokens/join-token:/etc/amdim/tokens/join-token:ro" \
        "$WORKER_IMAGE" agent --coordinator "$server" --name "ci-worker-$i" \
        --advertise-host 127.0.0.1 --join-token-file /etc/amdim/tokens/join-token \
        --metrics-listen "127.0.0.1:${metrics_ports[-1]}" >/dev/null
done
deadline=$((SECONDS + 90))
while :; do
    n=$({ ctl 30 workers 2>/dev/null || true; } | grep -c 'ci-worker-' || true)
    [ "$n" -ge "$WORKERS" ] && break
    for i in $(seq 1 "$WORKERS"); do running "$RUN_ID-worker-$i"; done
    [ "$SECONDS" -lt "$deadline" ] || die "only $n of $WORKERS workers registered within 90 s"
    sleep 2
done
say "$WORKERS workers registered"

# 6. The job: the example as it is; the data path, checkpoint location and
# step count come from AMDIM_SECTION__FIELD overrides in ctl's environment,
# which `amdimctl submit` applies to the spec it sends.
cp examples/fashion-mnist-smoke.toml "$work/job/job.toml"
chmod 0644 "$work/job/job.toml"
check "amdimctl validate (with AMDIM_* overrides)" ctl 60 validate -f /etc/amdim/job/job.toml

say "submitting examples/fashion-mnist-smoke.toml on $WORKERS workers (timeout $JOB_TIMEOUT s)"
job_start=$SECONDS
set +e
ctl "$JOB_TIMEOUT" submit -f /etc/amdim/job/job.toml --min-workers "$WORKERS" --max-workers "$WORKERS" --watch \
    2>&1 | tee "$work/logs/submit.log" >&2
submit_status=${PIPESTATUS[0]}
set -e
say "job ended after $((SECONDS - job_start)) s, amdimctl exit $submit_status"
check "amdimctl submit --watch exits 0" test "$submit_status" -eq 0
# stdout's job id, among stderr's notes of the AMDIM_* overrides it applied.
job_id=$(grep -m1 -oE '^job-[0-9]+$' "$work/logs/submit.log" || true)

# 7. What the job left behind.
manifests() { find "$work/checkpoints" -path '*/step-*/manifest.json' -type f; }
check "a complete checkpoint (step-*/manifest.json)" test -n "$(manifests)"
say "checkpoints: $(manifests | sed "s|$work/checkpoints/||" | tr '\n' ' ')"
check "checkpoints owned by uid 10001" test -z "$(find "$work/checkpoints" -mindepth 1 ! -uid 10001 -print -quit)"
check "amdimctl checkpoints lists 2-rank checkpoints" \
    output_has '"world_size":2' ctl 60 checkpoints -o json /checkpoints
check "amdimctl export verifies the newest checkpoint" ctl 120 export --out /tmp/export /checkpoints
check "amdimctl get $job_id: SUCCEEDED" output_has SUCCEEDED ctl 60 get "$job_id"
check "coordinator store written" test -s "$work/state/coordinator.db"
check "coordinator /healthz" curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$http_port/healthz"
check "coordinator /readyz" curl -fsS --max-time 5 -o /dev/null "http://127.0.0.1:$http_port/readyz"
check "coordinator /metrics has amdim_jobs" \
    output_has '^amdim_jobs' curl -fsS --max-time 5 "http://127.0.0.1:$http_port/metrics"
for port in "${metrics_ports[@]}"; do
    check "worker /metrics on :$port" output_has '^amdim_' curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics"
done
check "containers ran as 10001 with a read-only root" \
    test "$(docker inspect --format '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}' "$coord")" = "10001:10001 true"

# 8. `docker stop` sends SIGTERM through tini: the processes end cleanly
# (exit 0) at once instead of at the 20 s SIGKILL.
stops_within() { # seconds container [exit code]
    local limit=$1 c=$2 want=${3:-} start=$SECONDS code
    timeout 60 docker stop -t 20 "$c" >/dev/null || return 1
    code=$(docker inspect --format '{{.State.ExitCode}}' "$c")
    say "$c stopped in $((SECONDS - start)) s, exit $code"
    [ $((SECONDS - start)) -lt "$limit" ] && { [ -z "$want" ] || [ "$code" = "$want" ]; }
}
for i in $(seq 1 "$WORKERS"); do
    check "worker $i stops on docker stop within 10 s, exit 0" stops_within 10 "$RUN_ID-worker-$i" 0
done
check "coordinator stops on docker stop within 10 s, exit 0" stops_within 10 "$coord" 0

say "done in $((SECONDS - T0)) s"
echo "run_job: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
