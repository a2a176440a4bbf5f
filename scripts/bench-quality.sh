#!/usr/bin/env bash
# Quality benchmark (a benchmark, not a test): train the README's recipe
# (examples/fashion-mnist.toml, or SPEC) on Fashion-MNIST under a wall-clock
# cap, keeping a checkpoint every CURVE_EVERY steps, then probe every
# checkpoint's frozen r1 (linear probe fitted on the 60,000 training images,
# scored on the 10,000 test images): a curve of probe accuracy against
# training time. The last checkpoint is also probed with k-NN and beside raw
# pixels and a random encoder of the same shape. Prints the curve and the
# probe table, then one JSON line.
#
#   scripts/bench-quality.sh [BUDGET_SECONDS (default 600)] [OUT_DIR]
#
# It trains as scripts/example.sh does: LOCAL_RANKS (default 2) ranks in one
# process, each on its own share of the cores.
# AMDIM_WORKER_BIN picks the binary (default target/debug/amdim-worker, the
# one scripts/example.sh builds; built when missing). A run still going at
# the budget is stopped with SIGINT, which finishes the step and writes a
# checkpoint. The probes' own time is not part of the budget.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${1:-600}
out=${2:-$(mktemp -d -t amdim-bench-quality.XXXXXX)}
spec=${SPEC:-examples/fashion-mnist.toml}
every=${CURVE_EVERY:-500}
data=${AMDIM_DATA__PATH:-/usr/share/datasets/fashion-mnist}
bin=${AMDIM_WORKER_BIN:-target/debug/amdim-worker}
local_ranks=${LOCAL_RANKS:-2}

if [ ! -f "$data/train-images-idx3-ubyte.gz" ] && [ ! -f "$data/train-images-idx3-ubyte" ]; then
  echo "Fashion-MNIST is missing under $data: scripts/get-fashion-mnist.sh installs it" >&2
  exit 1
fi
if [ ! -x "$bin" ]; then
  echo "== building $bin" >&2
  cargo build -p amdim-worker >&2
fi
mkdir -p "$out"
rm -rf "$out/checkpoints"
export AMDIM_DATA__PATH="$data"
export AMDIM_CHECKPOINT__URI="$out/checkpoints"
export AMDIM_CHECKPOINT__EVERY_STEPS="$every"
export AMDIM_CHECKPOINT__KEEP=0

echo "== training $spec for at most ${budget} s (checkpoint every $every steps)" >&2
started=$(date +%s)
timeout --preserve-status -s INT -k 300 "$budget" "$bin" train -c "$spec" --local-ranks "$local_ranks" >"$out/train.jsonl" 2>"$out/train.log"
trained_s=$(( $(date +%s) - started ))

steps=()
for dir in "$out"/checkpoints/step-*/; do
  [ -f "$dir/manifest.json" ] && steps+=("$(basename "$dir" | sed 's/^step-0*//')")
done
[ ${#steps[@]} -gt 0 ] || { echo "no checkpoint was written; see $out/train.log" >&2; exit 1; }
last=${steps[-1]}

curve="[]"
for step in "${steps[@]}"; do
  if [ "$step" = "$last" ]; then
    echo "== probing step $step, with k-NN, raw pixels and the random encoder" >&2
    "$bin" probe -c "$spec" --step "$step" --baselines --json-out "$out/probe-$step.json" >"$out/probe.txt"
  else
    echo "== probing step $step (linear)" >&2
    "$bin" probe -c "$spec" --step "$step" --no-knn --json-out "$out/probe-$step.json" >/dev/null
  fi
  curve=$(python3 - "$out" "$step" "$started" "$curve" <<'PY'
import json, sys
out, step, started, curve = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
manifest = json.load(open(f"{out}/checkpoints/step-{step:010d}/manifest.json"))
probe = json.load(open(f"{out}/probe-{step}.json"))
row = next(r for r in probe["rows"] if r["features"] == "checkpoint")
curve.append({"step": step, "train_s": manifest["created_unix"] - started, "linear_test": row["linear_test"]})
print(json.dumps(curve))
PY
)
done

echo
echo "probe accuracy against training time ($spec, $(nproc) cores):"
python3 - "$curve" <<'PY'
import json, sys
print("%6s %11s %20s" % ("step", "train time", "linear probe (test)"))
for p in json.loads(sys.argv[1]):
    print("%6d %10ds %19.2f%%" % (p["step"], p["train_s"], 100 * p["linear_test"]))
PY
echo
cat "$out/probe.txt"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/"//g' || true)
printf '{"bench":"quality","date":"%s","machine":"%s, %s cores","spec":"%s","local_ranks":%s,"budget_s":%s,"trained_s":%s,"steps":%s,"curve":%s,"probe":%s}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$cpu" "$(nproc)" "$spec" "$local_ranks" "$budget" "$trained_s" "$last" "$curve" "$(cat "$out/probe-$last.json")"
