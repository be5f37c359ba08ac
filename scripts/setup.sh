#!/usr/bin/env bash
# Set up a virtual environment in .venv for mtlweight and the MENET example.
#   bash scripts/setup.sh          # library + example (enough for `python -m menet demo`)
#   bash scripts/setup.sh test     # ... plus test, lint and docs tools
# PyTorch's CPU build (2.13.0) is installed first: a bare `torch` requirement with no torch
# installed would pull a multi-GB CUDA build. If you want CUDA, install your torch first and
# re-run this script: it keeps a torch that satisfies the package's range.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
if [ "${1:-}" = "test" ]; then
  "${PIP[@]}" -e ".[test,docs,qm9]" -e examples/menet
else
  "${PIP[@]}" -e . -e examples/menet
fi
.venv/bin/python -c "import torch, mtlweight, menet; print('ready: torch', torch.__version__, '| mtlweight', mtlweight.__version__)"
