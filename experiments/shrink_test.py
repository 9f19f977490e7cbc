"""Shrink the test half of a `scl-glue split` file to a stratified subset (CPU budget).

The protocol's test set is half of GLUE validation: 2,731 rows for QNLI and 4,907 for MNLI.
On a 2-core CPU one pass over them costs more than the whole few-shot training run, so the
CPU-sized experiment scores every run on the same stratified subset of that test half
(validation and training samples unchanged). The written file is a normal split file: pass
it to `scl-glue run --split FILE`; its name is recorded in each run's spec.

    python experiments/shrink_test.py split.json --task qnli --data_dir DIR \
        --train_file train_subset_9k.json --size 1000 --out split-test1000.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from scl_loss.glue.arguments import DataArguments
from scl_loss.glue.data import load_task_data
from scl_loss.glue.splits import stratified_sample
from scl_loss.glue.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", help="split JSON written by `scl-glue split`")
    parser.add_argument("--task", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--train_file")
    parser.add_argument("--size", type=int, required=True, help="rows of the test half to keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    task = get_task(args.task)
    record = json.loads(Path(args.split).read_text(encoding="utf-8"))
    if record["task"] != task.name:
        raise SystemExit(f"error: {args.split} is for {record['task']!r}, not {task.name!r}")
    data = load_task_data(task, DataArguments(data_dir=args.data_dir, train_file=args.train_file))
    labels = data.eval["label"][:]
    test = record["test"]
    if not 1 <= args.size <= len(test):
        raise SystemExit(f"error: --size must be in 1..{len(test)}, got {args.size}")
    # Same stratification as the protocol, restricted to the test half, with its own seed.
    record["test"] = stratified_sample(labels, test, args.size, random.Random(f"test-subset:{args.seed}"))
    record["test_subset"] = {"of": len(test), "size": args.size, "seed": args.seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record) + "\n", encoding="utf-8")
    print(f"{task.display}: test {len(test)} -> {args.size} rows -> {args.out}")


if __name__ == "__main__":
    main()
