"""The paper's data protocol as pure functions of the labels and a seed: stratified test and
validation rows from GLUE validation, few-shot training samples (docs/glue.md, "split")."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ProtocolSplit",
    "allocate",
    "few_shot_samples",
    "per_class_samples",
    "protocol_split",
    "stratified_sample",
]


def _by_class(labels: Sequence[int], pool: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index in pool:
        groups.setdefault(labels[index], []).append(index)
    return groups


def allocate(counts: dict[int, int], n: int) -> dict[int, int]:
    """Split ``n`` over classes in proportion to ``counts`` (largest remainder, ties by class id).

    Example:
        >>> allocate({0: 428, 1: 444}, 436)  # SST-2 dev: half of it, stratified
        {0: 214, 1: 222}
    """
    total = sum(counts.values())
    if not 0 <= n <= total:
        raise ValueError(f"n must be in [0, {total}] (the pool size), got {n}")
    exact = {c: n * k / total for c, k in counts.items()}
    share = {c: int(x) for c, x in exact.items()}
    by_remainder = sorted(counts, key=lambda c: (-(exact[c] - share[c]), c))
    for c in by_remainder[: n - sum(share.values())]:
        share[c] += 1
    return share


def stratified_sample(labels: Sequence[int], pool: Sequence[int], n: int, rng: random.Random) -> list[int]:
    """``n`` indices from ``pool`` with the pool's label proportions, sorted ascending."""
    groups = _by_class(labels, pool)
    share = allocate({c: len(members) for c, members in groups.items()}, n)
    chosen: list[int] = []
    for c in sorted(groups):
        chosen.extend(rng.sample(groups[c], share[c]))
    return sorted(chosen)


@dataclass(frozen=True)
class ProtocolSplit:
    """Row indices (0-based, into the GLUE validation file and the training file)."""

    test: list[int]
    validation: list[int]
    train_samples: list[list[int]] = field(default_factory=list)


def protocol_split(eval_labels: Sequence[int], seed: int, validation_size: int = 500) -> ProtocolSplit:
    """Test (stratified half) and validation (stratified ``validation_size`` of the rest).

    Example:
        >>> labels = [0] * 60 + [1] * 40
        >>> split = protocol_split(labels, seed=0, validation_size=20)
        >>> len(split.test), sum(labels[i] for i in split.test), len(split.validation)
        (50, 20, 20)
        >>> set(split.test) & set(split.validation)
        set()
    """
    if validation_size < 1:
        raise ValueError(f"validation_size must be >= 1, got {validation_size}")
    if len(eval_labels) < 2:
        raise ValueError(f"eval_labels must hold at least 2 examples, got {len(eval_labels)}")
    everything = range(len(eval_labels))
    test = stratified_sample(eval_labels, everything, len(eval_labels) // 2, random.Random(f"test:{seed}"))
    taken = set(test)
    rest = [i for i in everything if i not in taken]
    size = min(validation_size, len(rest))
    validation = stratified_sample(eval_labels, rest, size, random.Random(f"validation:{seed}"))
    return ProtocolSplit(test=test, validation=validation)


def few_shot_samples(
    train_labels: Sequence[int], shots: int, samples: int, seed: int, pool: Sequence[int] | None = None
) -> list[list[int]]:
    """``samples`` independent stratified training sets of ``shots`` examples each (from ``pool``)."""
    pool = range(len(train_labels)) if pool is None else pool
    if shots < 1 or samples < 1:
        raise ValueError(f"shots and samples must be >= 1, got shots={shots}, samples={samples}")
    if shots > len(pool):
        raise ValueError(f"shots must be at most the training pool size {len(pool)}, got {shots}")
    return [
        stratified_sample(train_labels, pool, shots, random.Random(f"train:{seed}:{shots}:{k}"))
        for k in range(samples)
    ]


def per_class_samples(
    train_labels: Sequence[int], per_class: int, samples: int, seed: int, pool: Sequence[int] | None = None
) -> list[list[int]]:
    """``samples`` training sets with exactly ``per_class`` examples of every class (from ``pool``)."""
    if per_class < 1 or samples < 1:
        raise ValueError(f"per_class and samples must be >= 1, got per_class={per_class}, samples={samples}")
    groups = _by_class(train_labels, range(len(train_labels)) if pool is None else pool)
    short = {c: len(m) for c, m in groups.items() if len(m) < per_class}
    if short:
        raise ValueError(f"per_class={per_class} exceeds the examples available for classes {short}")
    out = []
    for k in range(samples):
        rng = random.Random(f"per_class:{seed}:{per_class}:{k}")
        out.append(sorted(i for c in sorted(groups) for i in rng.sample(groups[c], per_class)))
    return out
