#!/usr/bin/env bash
# Creates (once) a Python virtual environment with snakey-runner, a third-party Forgejo runner
# client written in Python, for the simulator's conformance test (crates/forgejo-sim/tests/snakey_runner.rs).
#
# Usage: tests/support/python-venv.sh [VENV_DIR]
#   VENV_DIR defaults to target/snakey-venv under the repository root.
#   Prints the path of the snakey_runner executable on success.
#
# Safe to run concurrently: an flock on VENV_DIR.lock serializes creation, and the file
# VENV_DIR/.complete marks a finished installation (a half-made one is removed and redone).
# snakey-runner declares Python >= 3.13 but runs on 3.11, hence --ignore-requires-python
# (see ../shared/machine-notes.md). Needs python3 with the venv module and network access to PyPI.
set -euo pipefail

SNAKEY_RUNNER_VERSION="${SNAKEY_RUNNER_VERSION:-0.1.0}"
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$repo_root/target/snakey-venv}"
runner_exe="$venv/bin/snakey_runner"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [[ -f "$venv/.complete" && -x "$runner_exe" ]]; then
    echo "$runner_exe"
    exit 0
fi

rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check --ignore-requires-python \
    "snakey-runner==$SNAKEY_RUNNER_VERSION" >&2
"$venv/bin/python" -c 'import snakey_runner' >&2
touch "$venv/.complete"
echo "$runner_exe"
