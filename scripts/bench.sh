#!/usr/bin/env bash
# The benchmark job: set-up (first run only), the benchmark grid, then the summary, printed and
# written to results/benchmarks.md + results/benchmarks.png (raw data: results/bench.json).
#
#   bash scripts/bench.sh            CPU sizes: N = 16..8192, D = 768, fp32 (a few minutes on 2 cores)
#   bash scripts/bench.sh --gpu      GPU report (H100/H200; sized for <= 8 min, not yet timed on a card):
#                                    correctness, host syncs, kernel counts at N = 16, N = 16..262144 at
#                                    D = 1024 in bf16 and fp32, largest encoder batch with/without caching
#
# Further arguments go to pytest (CPU) or benchmarks.gpu_check (--gpu), e.g. `--impl pkg.mod:func`
# to add your own kernel (docs/byo-kernel.md), or `--bench-n 16,2048` for other sizes.
set -euo pipefail
SCL_EXTRAS="${SCL_EXTRAS:-bench}"
source "$(dirname "$0")/_setup.sh"
mkdir -p results
if [ "${1:-}" = "--gpu" ]; then
  shift
  python -m benchmarks.gpu_check --out results "$@"
  exit
fi
python -m pytest benchmarks/test_supcon_bench.py -q -p no:cacheprovider -o addopts= --bench-preset cpu \
  --benchmark-json=results/bench.json --benchmark-columns=min,median,rounds --benchmark-sort=name "$@"
python -m benchmarks.summarize results/bench.json --markdown results/benchmarks.md --plot results/benchmarks.png
