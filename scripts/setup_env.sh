#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the pinned dependencies.
# Usage: scripts/setup_env.sh [test]   ("test" also installs the test tools)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MODELSELECTOR_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  # the pinned wheels (numpy, scipy, scikit-learn, ...) need Python 3.11 or newer
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: $python is not Python 3.11 or newer (the pinned dependencies need it); set PYTHON, e.g. PYTHON=python3.11" >&2
    exit 2
  fi
  echo "Creating virtual environment in $venv" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.modelselector-installed"
digest="$(cat "$root/requirements-lock.txt" "$root/requirements-test.txt" "$root/pyproject.toml" | sha1sum | cut -d' ' -f1)"
want="$digest-${1:-runtime}"
# an environment with the test tools also holds everything the demo needs
if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want" ] || [ "$(cat "$stamp")" = "$digest-test" ]; }; then
  exit 0
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2 || true
"$venv/bin/python" -m pip install --quiet -r "$root/requirements-lock.txt" >&2
if [ "${1:-}" = "test" ]; then
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements-test.txt" >&2
fi
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$root" >&2
echo "$want" > "$stamp"
