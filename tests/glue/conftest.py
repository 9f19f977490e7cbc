"""Fixtures for the GLUE script tests: real data location, a tiny offline model, synthetic task data."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

_DEPS = ("transformers", "tokenizers", "sklearn", "matplotlib", "tqdm")
_MISSING = [name for name in _DEPS if importlib.util.find_spec(name) is None]
# Without the [glue] extra these tests cannot even be imported.
collect_ignore_glob = ["test_*.py"] if _MISSING else []

GLUE_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "terrible", "nasty"]
FILLER = ["the", "a", "movie", "film", "plot", "actor", "story", "was", "is", "it", "this", "and"]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on a shared 2-core runner: one intra-op thread is ~10x faster than two (no spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def glue_data() -> Path:
    if not (GLUE_DATA / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {GLUE_DATA} (CI clones the repo next to shared/)")
    return GLUE_DATA


def sentence(label: int, rng: random.Random) -> str:
    cue = rng.choice(POSITIVE if label else NEGATIVE)
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
    words.insert(rng.randint(0, len(words)), cue)
    return " ".join(words)


def write_sst2_like(folder: Path, n_train: int = 60, n_dev: int = 40, seed: int = 0) -> Path:
    """An SST-2-layout folder (header ``sentence<TAB>label``) whose labels follow cue words."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        rows = [(sentence(i % 2, rng), i % 2) for i in range(n)]
        rng.shuffle(rows)
        (folder / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def save_tiny_model(folder: Path) -> Path:
    """A randomly initialised 2-layer BERT and a word-level tokenizer, built offline and saved."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["question", "answer", "premise", "hypothesis"]))
    vocab = {token: i for i, token in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture
def sst2_like(tmp_path: Path) -> Path:
    return write_sst2_like(tmp_path / "SST-2")
