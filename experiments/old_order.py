"""``scl-glue`` with the data order of the hand-written loop it replaced (a diagnostic).

The old loop shuffled the training rows each epoch with ``random.Random(f"shuffle:{seed}")``;
the Trainer draws its order from a seeded torch generator. This runs ``scl-glue`` with the
old order, so that, with ``--dropout 0`` (no random masks) and ``--optim adamw_torch`` (the
foreach Adam of the old loop, not the fused one), a rerun of a committed configuration isolates
what the Trainer changed (docs/results.md, "Reproducing a committed run"). The run's key does
not record the order: write its journal apart.

    python experiments/old_order.py run --config experiments/configs/sst2-n20.json --model $M \
        --samples 1 --ce_only --dropout 0 --optim adamw_torch --journal /tmp/old-order.jsonl
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

from scl_loss.glue.cli import main
from scl_loss.integrations.transformers import SCLTrainer


class OldOrder(Sampler[int]):
    """Every epoch, ``range(n)`` shuffled by one ``random.Random(f"shuffle:{seed}")``, as the old loop."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.rng = n, random.Random(f"shuffle:{seed}")

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n))
        self.rng.shuffle(order)
        return iter(order)


def _old_order(self: SCLTrainer, dataset: Any = None) -> OldOrder:
    return OldOrder(len(dataset if dataset is not None else self.train_dataset), self.args.seed)


if __name__ == "__main__":
    SCLTrainer._get_train_sampler = _old_order  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
