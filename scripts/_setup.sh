# Sourced by the scripts in this folder: creates .venv on a fresh machine and installs the
# project with the extras named in $SCL_EXTRAS. torch comes first and pinned (TORCH_SPEC):
# on the project's CPU machines `torch==2.13.0` is a CPU build on local disk, whereas a bare
# `torch` would pull a multi-GB CUDA build. A torch already in .venv is kept (CUDA users:
# install yours into .venv first).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
python -m pip install -q -e ".[${SCL_EXTRAS:-dev}]"
