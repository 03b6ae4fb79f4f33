#!/usr/bin/env bash
# README command one: install into .venv and run the demo on the bundled defaults.
# Extra arguments go to `modelselector demo` (e.g. an image path, --out DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh"
exec "${MODELSELECTOR_VENV:-$root/.venv}/bin/modelselector" demo "$@"
