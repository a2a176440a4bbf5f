#!/usr/bin/env bash
# The project's test command (README): installs what the tests need when it is
# missing (scripts/install-test-deps.sh), then runs every test of the
# workspace. Extra arguments go to `cargo test` (e.g. `-p amdim-worker`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --workspace "$@"
