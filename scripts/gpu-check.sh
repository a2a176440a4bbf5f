#!/usr/bin/env bash
# One command for a machine with one NVIDIA GPU (≤ 8 min): the checks of
# scripts/gpu_check/driver.py against a worker built beforehand by
# scripts/gpu-check-build.sh, writing one JSON file of results.
#
#   scripts/gpu-check.sh [--out DIR] [--worker BIN] [--dry-run] [driver flags…]
#
# --out: where gpu-check.json goes (default: $OUT if set, else ./gpu-check-out).
# --worker: the binary (default: .gpu-check/amdim-worker.xz, unpacked to /tmp).
# --dry-run: every command on the CPU backend with tiny sizes (default
#   worker: target/debug/amdim-worker), to prove the script without a GPU.
#
# Nothing is downloaded or built here. On the GPU machine the libraries the
# worker dlopens come from the system or from PyTorch's wheels: NVRTC (cubecl
# compiles its kernels at run time, against $CUDA_PATH/include) and NCCL
# (libnccl.so.2). A folder of links gives them the names the loaders try.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-$PWD/gpu-check-out}"
worker=""
dry=0
rest=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --worker) worker="$2"; shift 2 ;;
        --dry-run) dry=1; rest+=("$1"); shift ;;
        *) rest+=("$1"); shift ;;
    esac
done
mkdir -p "$out"

if [ -z "$worker" ]; then
    if [ "$dry" = 1 ]; then
        worker="$PWD/target/debug/amdim-worker"
    else
        packed=.gpu-check/amdim-worker.xz
        [ -f "$packed" ] || { echo "no $packed: run scripts/gpu-check-build.sh first" >&2; exit 2; }
        worker=/tmp/amdim-gpu-check/amdim-worker
        mkdir -p "$(dirname "$worker")"
        if command -v xz >/dev/null; then xz -dc "$packed" >"$worker"
        else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$packed" "$worker"; fi
        chmod +x "$worker"
    fi
fi
[ -x "$worker" ] || { echo "worker binary $worker not found or not executable" >&2; exit 2; }

if [ "$dry" = 0 ]; then
    # CUDA headers for NVRTC, and library names the loaders look for.
    for d in "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-12.8; do
        if [ -n "$d" ] && [ -f "$d/include/cuda_runtime.h" ]; then export CUDA_PATH="$d"; break; fi
    done
    links=/tmp/amdim-gpu-check/lib
    mkdir -p "$links"
    dirs="$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
roots = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
found = set()
for r in roots:
    for pat in ("nvidia/*/lib", "nvidia/lib"):
        found.update(glob.glob(os.path.join(r, pat)))
print(":".join(sorted(found)))
PY
)"
    search="${CUDA_PATH:-/usr/local/cuda}/lib64:${CUDA_PATH:-/usr/local/cuda}/targets/x86_64-linux/lib:${dirs}:${LD_LIBRARY_PATH:-}"
    link_first() { # name pattern…: link $links/name to the first file matching a pattern
        local name="$1"; shift
        local IFS=:
        for d in $search; do
            for pat in "$@"; do
                for f in "$d"/$pat; do
                    if [ -e "$f" ]; then ln -sf "$f" "$links/$name"; echo "$name -> $f"; return 0; fi
                done
            done
        done
        echo "$name: not found (searched $search)" >&2
    }
    link_first libnccl.so.2 'libnccl.so.2' 'libnccl.so.2.*'
    link_first libnvrtc.so 'libnvrtc.so' 'libnvrtc.so.1[0-9]' 'libnvrtc.so.1[0-9].*'
    export LD_LIBRARY_PATH="$links:$search"
    export AMDIM_NCCL_LIBRARY="$links/libnccl.so.2"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi

exec "${PYTHON:-python3}" scripts/gpu_check/driver.py --worker "$worker" --out "$out" "${rest[@]}"
