"""Few-shot training samples from the rows of a one-file set outside its test and validation.

Some sets come with one labelled file only (the offline Yelp-2 file
``textfooler_yelp_test_1000.txt``): the protocol's test and validation are drawn from it as
usual (``scl-glue split --regime full``), and this draws the training samples from its
remaining rows, so the three never overlap. The written file is a normal split file: pass it
to ``scl-glue run --split FILE`` with ``--train_file`` naming the same file as ``--eval_file``.
The rows are those the old ``--train-from-eval`` option drew (same function, same seeds).

    python experiments/train_from_eval.py split.json --task yelp2 --data_dir DIR \
        --eval_file textfooler_yelp_test_1000.txt --per_class 20 --samples 10 --out split-train.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scl_loss.glue.arguments import DataArguments
from scl_loss.glue.data import load_task_data
from scl_loss.glue.splits import per_class_samples
from scl_loss.glue.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", help="split JSON written by `scl-glue split --regime full`")
    parser.add_argument("--task", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--eval_file", required=True)
    parser.add_argument("--per_class", type=int, required=True)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    task = get_task(args.task)
    record = json.loads(Path(args.split).read_text(encoding="utf-8"))
    if record["task"] != task.name:
        raise SystemExit(f"error: {args.split} is for {record['task']!r}, not {task.name!r}")
    data = load_task_data(task, DataArguments(data_dir=args.data_dir, eval_file=args.eval_file))
    labels = data.eval["label"][:]
    held_out = set(record["test"]) | set(record["validation"])
    pool = [i for i in range(len(labels)) if i not in held_out]
    record["train_samples"] = per_class_samples(labels, args.per_class, args.samples, record["seed"], pool)
    record["files"]["train"] = record["files"]["eval"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record) + "\n", encoding="utf-8")
    print(f"{task.display}: {args.samples} samples from {len(pool)} rows -> {args.out}")


if __name__ == "__main__":
    main()
