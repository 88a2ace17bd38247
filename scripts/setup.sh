#!/usr/bin/env bash
# Set-up shared by `make run` and `make test`: a virtual environment (unless one is active), the
# CPU build of torch from this disk, then the project without build isolation (setup.py imports
# torch and builds r1kernels._C with ninja).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || python -m pip install -q torch==2.13.0
stamp=.venv/.r1core-installed
if [ ! -f "$stamp" ] || [ -n "$(find setup.py pyproject.toml csrc -newer "$stamp" 2>/dev/null | head -1)" ] \
   || ! python -c "import r1kernels._C" 2>/dev/null; then
  python -m pip install -q ninja numpy setuptools wheel
  python -m pip install -q --no-build-isolation -e ".[test,bench]"
  mkdir -p "$(dirname "$stamp")" && touch "$stamp"
fi
