#!/usr/bin/env bash
# The test command: set-up (first run only), lint, then the whole suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k conformance`.
set -euo pipefail
SCL_EXTRAS="${SCL_EXTRAS:-dev}"
source "$(dirname "$0")/_setup.sh"
python -m ruff check .
python -m ruff format --check .
python -m pytest "$@"
