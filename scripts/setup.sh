#!/usr/bin/env bash
# Set up a virtual environment in .venv for mtlweight and the MENET example.
#   bash scripts/setup.sh          # library + example (enough for `python -m menet demo`)
#   bash scripts/setup.sh test     # ... plus test, lint and docs tools
# PyTorch's CPU build (2.13.0) is installed first, from PyTorch's CPU index: on Linux a bare
# `pip install torch` takes PyPI's multi-GB CUDA build. TORCH_INDEX_URL picks another index
# (TORCH_INDEX_URL= uses only pip's own configuration: a mirror or a local wheel folder); if
# the index cannot be reached, pip's own configuration is tried. If you want CUDA, install
# your torch first and re-run this script: it keeps a torch that satisfies the package's range.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -z "$TORCH_INDEX_URL" ] || ! "${PIP[@]}" "torch==2.13.0" --index-url "$TORCH_INDEX_URL"; then
    [ -z "$TORCH_INDEX_URL" ] || echo "setup.sh: $TORCH_INDEX_URL failed; trying pip's own configuration" >&2
    "${PIP[@]}" "torch==2.13.0"
  fi
fi
if [ "${1:-}" = "test" ]; then
  "${PIP[@]}" -e ".[test,docs,qm9]" -e examples/menet
else
  "${PIP[@]}" -e . -e examples/menet
fi
.venv/bin/python -c "import torch, mtlweight, menet; print('ready: torch', torch.__version__, '| mtlweight', mtlweight.__version__)"
