#!/usr/bin/env bash
# The main job until the benchmarks land: set-up (first run only), then `python -m scl_loss`,
# which checks the loss on a fine-tuning-shaped batch against the float64 reference.
set -euo pipefail
SCL_EXTRAS="${SCL_EXTRAS:-test}"
source "$(dirname "$0")/_setup.sh"
python -m scl_loss "$@"
