#!/usr/bin/env bash
# Makes Fashion-MNIST available for examples/fashion-mnist.toml.
#
# On Debian/Ubuntu it installs the `dataset-fashion-mnist` package (files in
# /usr/share/datasets/fashion-mnist). Elsewhere, or with DEST set, it
# downloads the four official IDX files (Zalando Research's release) into
# DEST; then point data.path at DEST (e.g. AMDIM_DATA__PATH=DEST).
#
# usage: scripts/get-fashion-mnist.sh            # Debian package
#        DEST=data/fashion-mnist scripts/get-fashion-mnist.sh
set -euo pipefail
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
BASE_URL="${FASHION_MNIST_URL:-http://fashion-mnist.s3-website.eu-central-1.amazonaws.com}"

if [ -z "${DEST:-}" ]; then
  if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    exit 0
  fi
  if command -v apt-get >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "== installing Debian's dataset-fashion-mnist (into /usr/share/datasets/fashion-mnist)"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    exit 0
  fi
  echo "no apt-get here: run with DEST=some/folder to download the files instead" >&2
  exit 1
fi

mkdir -p "$DEST"
for f in $FILES; do
  if [ ! -f "$DEST/$f" ]; then
    echo "== downloading $BASE_URL/$f"
    curl -fsSL --retry 3 -o "$DEST/$f.part" "$BASE_URL/$f"
    mv "$DEST/$f.part" "$DEST/$f"
  fi
done
echo "Fashion-MNIST is in $DEST: set data.path (or AMDIM_DATA__PATH) to it"
