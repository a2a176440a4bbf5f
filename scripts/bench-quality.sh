#!/usr/bin/env bash
# Quality benchmark (a benchmark, not a test): train one fixed AMDIM recipe
# on Fashion-MNIST for a fixed wall-clock budget, then probe the frozen
# encoder (linear probe + k-NN, fitted on the 60,000 training images, scored
# on the 10,000 test images) against raw pixels and a random encoder of the
# same shape. Prints the probe table, then one JSON line.
#
#   scripts/bench-quality.sh [BUDGET_SECONDS (default 600)] [OUT_DIR]
#
# AMDIM_WORKER_BIN picks the binary (default target/release/amdim-worker,
# built with `cargo build --release -p amdim-worker` when missing). Training
# stops at the budget with SIGINT, which finishes the step and writes a
# checkpoint; the probe's own time is not part of the budget.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${1:-600}
out=${2:-$(mktemp -d -t amdim-bench-quality.XXXXXX)}
data=${AMDIM_BENCH_DATA:-/usr/share/datasets/fashion-mnist}
bin=${AMDIM_WORKER_BIN:-target/release/amdim-worker}

if [ ! -f "$data/train-images-idx3-ubyte.gz" ] && [ ! -f "$data/train-images-idx3-ubyte" ]; then
  echo "Fashion-MNIST is missing under $data: apt-get install dataset-fashion-mnist" >&2
  echo "(elsewhere: the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist, AMDIM_BENCH_DATA=DIR)" >&2
  exit 1
fi
if [ ! -x "$bin" ]; then
  echo "== building $bin" >&2
  cargo build --release -p amdim-worker >&2
fi
mkdir -p "$out"
rm -rf "$out/checkpoints"

# The fixed recipe: a small encoder for a CPU, grayscale-friendly
# augmentations (no colour jitter or random grayscale), no online heads.
spec="$out/bench-quality.toml"
cat >"$spec" <<TOML
[job]
name = "bench-quality"
seed = 1

[data]
format = "idx"
path = "$data"

[model]
image_size = 32
ndf = 32
n_rkhs = 256
depth = 1

[augment]
color_jitter = false
grayscale = false

[train]
batch_size = 100
epochs = 1000
log_every = 50

[optim]
lr = 1e-3
warmup_steps = 100
milestones = []

[eval]
enabled = false

[checkpoint]
uri = "$out/checkpoints"
every_steps = 500
keep = 1
TOML

echo "== training for ${budget} s ($spec)" >&2
started=$(date +%s)
timeout --preserve-status -s INT -k 300 "$budget" "$bin" train -c "$spec" >"$out/train.jsonl" 2>"$out/train.log"
trained_s=$(( $(date +%s) - started ))
steps=$(grep -o '"steps":[0-9]*' "$out/train.jsonl" | head -1 | cut -d: -f2)

echo "== probing the checkpoint of step ${steps:-?} (and raw pixels, random init)" >&2
"$bin" probe -c "$spec" --baselines --json-out "$out/probe.json"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/"//g' || true)
printf '{"bench":"quality","date":"%s","machine":"%s, %s cores","budget_s":%s,"trained_s":%s,"steps":%s,"batch_size":100,"probe":%s}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$cpu" "$(nproc)" "$budget" "$trained_s" "${steps:-0}" "$(cat "$out/probe.json")"
