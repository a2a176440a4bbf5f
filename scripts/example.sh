#!/usr/bin/env bash
# The README's first command: on a fresh machine, get Fashion-MNIST if it is
# missing (Debian's dataset-fashion-mnist, or the official files with DEST),
# train examples/fashion-mnist.toml on this machine's CPU as two ranks in one
# process (each on its own half of the cores: about 30 % faster than one
# rank on 2 cores), then evaluate the trained encoder's frozen features with
# the linear probe, next to raw pixels and a randomly initialised encoder of
# the same shape.
#
#   scripts/example.sh [JOB_SPEC (default examples/fashion-mnist.toml)]
#
# Needs Rust's cargo (https://rustup.rs); the first build compiles burn.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-examples/fashion-mnist.toml}

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (https://rustup.rs, or Debian's cargo package), then run this again" >&2
  exit 1
fi
if [ -z "${AMDIM_DATA__PATH:-}" ]; then
  scripts/get-fashion-mnist.sh
fi

cargo build -p amdim-worker
echo "== training ($spec; about 10 minutes on 2 cores)"
started=$(date +%s)
target/debug/amdim-worker train --config "$spec" --local-ranks 2
trained_s=$(( $(date +%s) - started ))
echo
echo "== trained for ${trained_s} s. The result: a linear probe of the frozen encoder's r1 features"
echo "   (fitted on the 60,000 training images, scored on the 10,000 test images), beside raw"
echo "   pixels and the same encoder at its random initialisation. The online heads' accuracies"
echo "   above were a live signal during training; this table is the figure."
target/debug/amdim-worker probe --config "$spec" --baselines --no-knn
