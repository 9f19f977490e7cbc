"""The split protocol on synthetic labels (properties) and on the real GLUE files."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scl_loss.glue.arguments import DataArguments
from scl_loss.glue.data import find_task_files, read_file
from scl_loss.glue.splits import allocate, few_shot_samples, per_class_samples, protocol_split
from scl_loss.glue.tasks import get_task


def assert_stratified(labels, chosen, pool) -> None:
    """Every class's count is within one example of its proportional share."""
    pool_counts = Counter(labels[i] for i in pool)
    got = Counter(labels[i] for i in chosen)
    for c, k in pool_counts.items():
        assert abs(got[c] - len(chosen) * k / len(pool)) < 1, (c, got[c], len(chosen), k, len(pool))


label_lists = st.lists(st.integers(0, 3), min_size=2, max_size=300)


@settings(max_examples=60, deadline=None)
@given(label_lists, st.integers(0, 10_000))
def test_protocol_split_properties(labels, seed):
    split = protocol_split(labels, seed, validation_size=50)
    n = len(labels)
    assert len(split.test) == n // 2
    assert len(split.validation) == min(50, n - n // 2)
    assert not set(split.test) & set(split.validation)
    assert len(set(split.test)) == len(split.test)
    assert len(set(split.validation)) == len(split.validation)
    assert_stratified(labels, split.test, range(n))
    rest = sorted(set(range(n)) - set(split.test))
    assert_stratified(labels, split.validation, rest)
    assert protocol_split(labels, seed, validation_size=50) == split


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(0, 5), st.integers(1, 50), min_size=1), st.data())
def test_allocate_is_exact_and_proportional(counts, data):
    n = data.draw(st.integers(0, sum(counts.values())))
    share = allocate(counts, n)
    assert sum(share.values()) == n
    total = sum(counts.values())
    for c, k in counts.items():
        assert abs(share[c] - n * k / total) < 1
        assert share[c] <= k


def test_split_depends_on_seed_and_rejects_bad_sizes():
    labels = [i % 3 for i in range(200)]
    assert protocol_split(labels, 0).test != protocol_split(labels, 1).test
    with pytest.raises(ValueError, match="validation_size"):
        protocol_split(labels, 0, validation_size=0)
    with pytest.raises(ValueError, match="eval_labels"):
        protocol_split([1], 0)


def test_few_shot_samples_are_stratified_distinct_and_deterministic():
    rng = random.Random(0)
    labels = [rng.choice([0, 0, 0, 1, 2]) for _ in range(500)]
    samples = few_shot_samples(labels, 20, 10, seed=3)
    assert len(samples) == 10
    assert all(len(s) == 20 == len(set(s)) for s in samples)
    for s in samples:
        assert_stratified(labels, s, range(len(labels)))
    assert len({tuple(s) for s in samples}) == 10
    assert few_shot_samples(labels, 20, 10, seed=3) == samples
    assert few_shot_samples(labels, 20, 10, seed=4) != samples
    with pytest.raises(ValueError, match="shots"):
        few_shot_samples(labels, 501, 1, seed=0)


def test_per_class_samples_have_exact_counts():
    labels = [0] * 30 + [1] * 50
    samples = per_class_samples(labels, 20, 3, seed=0)
    for s in samples:
        assert Counter(labels[i] for i in s) == {0: 20, 1: 20}
    with pytest.raises(ValueError, match="per_class"):
        per_class_samples(labels, 31, 1, seed=0)


# name, eval file, GLUE validation size (README)
REAL = [
    ("sst2", "SST-2", "dev.tsv", 872),
    ("cola", "CoLA", "dev.tsv", 1043),
    ("mrpc", "MRPC", "dev.tsv", 408),
    ("rte", "RTE", "dev.tsv", 277),
    ("qnli", "QNLI", "dev.tsv", 5463),
    ("mnli", "MNLI", "dev_matched.jsonl", 9815),
]


@pytest.mark.parametrize(("task", "folder", "name", "size"), REAL)
def test_real_validation_split(glue_data, task, folder, name, size):
    _, dev_path = find_task_files(DataArguments(data_dir=str(glue_data / folder)), get_task(task))
    assert dev_path.name == name
    labels = read_file(dev_path, get_task(task))["label"][:]
    assert len(labels) == size
    split = protocol_split(labels, seed=0)
    assert len(split.test) == size // 2
    assert len(split.validation) == min(500, size - size // 2)
    assert not set(split.test) & set(split.validation)
    assert max(split.test + split.validation) < size
    assert_stratified(labels, split.test, range(size))
    assert_stratified(labels, split.validation, sorted(set(range(size)) - set(split.test)))
    assert protocol_split(labels, seed=0) == split


# Few-shot samples from the training files available offline (QNLI/MNLI: the 9k subsets).
TRAIN = [
    ("sst2", "SST-2/train.tsv", 67349),
    ("qnli", "QNLI/train_subset_9k.json", 8999),
    ("mnli", "MNLI/train_subset_9k.json", 8999),
]


@pytest.mark.parametrize(("task", "path", "size"), TRAIN)
def test_real_few_shot_samples(glue_data, task, path, size):
    labels = read_file(glue_data / path, get_task(task))["label"][:]
    assert len(labels) == size
    for shots in (20, 100, 1000):
        samples = few_shot_samples(labels, shots, 10, seed=0)
        assert len(samples) == 10
        for s in samples:
            assert len(s) == len(set(s)) == shots
            assert_stratified(labels, s, range(size))
        assert few_shot_samples(labels, shots, 10, seed=0) == samples
