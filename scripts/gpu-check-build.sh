#!/usr/bin/env bash
# Builds the worker that scripts/gpu-check.sh carries to a GPU machine:
# `--features cuda`, profile gpu-check (release, stripped, no debug info),
# xz-compressed into .gpu-check/ (git-ignored; name it in the device run's
# `carry`). Run on x86-64 Linux with glibc no newer than the GPU machine's.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
flock /tmp/cargo.lock cargo build --profile gpu-check -p amdim-worker --features cuda
mkdir -p .gpu-check
xz -T0 -9 -c "$target_dir/gpu-check/amdim-worker" >.gpu-check/amdim-worker.xz
ls -l "$target_dir/gpu-check/amdim-worker" .gpu-check/amdim-worker.xz
