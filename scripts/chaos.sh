#!/usr/bin/env bash
# The chaos soak (`amdim-coordinator chaos`, README "Chaos soak"): builds the
# coordinator and the worker (debug), then runs a real coordinator, worker
# agents and a SeaweedFS S3 server on this machine under random faults for
# CHAOS_MINUTES (default 2.5) with the fixed seed CHAOS_SEED (default 1901),
# waits for every job to end and checks the outcome. Exit status 1 when a
# check fails (the report says which, with the seed). Extra arguments go to
# `amdim-coordinator chaos` (e.g. --workers 4 --jobs 3 --dir DIR).
# CI's .ci/run calls it after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v weed >/dev/null && [ -z "${WEED:-}" ]; then
  scripts/install-test-deps.sh
fi
cargo build -p amdim-coordinator -p amdim-worker
target_dir="${CARGO_TARGET_DIR:-target}"
exec "$target_dir/debug/amdim-coordinator" chaos \
  --minutes "${CHAOS_MINUTES:-2.5}" --seed "${CHAOS_SEED:-1901}" "$@"
