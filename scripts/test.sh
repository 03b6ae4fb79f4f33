#!/usr/bin/env bash
# README command two: install into .venv (with test tools) and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh" test
cd "$root"
exec "${MODELSELECTOR_VENV:-$root/.venv}/bin/python" -m pytest "$@"
