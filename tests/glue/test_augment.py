"""Back-translation: the row bookkeeping, and sampling through a tiny offline seq2seq model."""

from __future__ import annotations

import pytest
from datasets import Dataset

from scl_loss.glue.augment import augment_rows, marian_translator
from scl_loss.glue.data import DataFormatError, load_augmented, schema_of, with_paraphrases
from scl_loss.glue.tasks import get_task


def test_augment_rows_paraphrases_both_texts_of_each_row():
    rows = {"text_a": [f"a{i}" for i in range(6)], "text_b": [f"b{i}" for i in range(6)], "label": [0, 1] * 3}
    train = Dataset.from_dict(rows, features=schema_of(get_task("rte")))
    seen = []

    def forward(texts, temperature):
        seen.append(temperature)
        return [f"de({t})" for t in texts]

    def backward(texts, temperature):
        return [f"en({t})" for t in texts]

    items = augment_rows(train, [4, 1, 4], forward=forward, backward=backward, temperature=0.7, copies=3)
    assert [(it["row"], it["copy"]) for it in items] == [(1, 0), (1, 1), (1, 2), (4, 0), (4, 1), (4, 2)]
    assert items[0]["text_a"] == "en(de(a1))"
    assert items[0]["text_b"] == "en(de(b1))"
    assert set(seen) == {0.7}
    with pytest.raises(ValueError, match="temperature"):
        augment_rows(train, [0], forward=forward, backward=backward, temperature=0.0)


def test_paraphrases_join_their_rows_with_the_original_label(tmp_path):
    train = Dataset.from_dict(
        {"text_a": ["good", "bad"], "label": [1, 0]}, features=schema_of(get_task("sst2"))
    )
    path = tmp_path / "aug.jsonl"
    path.write_text(
        '{"row": 1, "text_a": "poor"}\n{"row": 0, "text_a": "fine"}\n{"row": 1, "text_a": "awful"}\n'
    )
    got = with_paraphrases(train, [1], load_augmented(path))
    assert got[:] == {"text_a": ["bad", "poor", "awful"], "label": [0, 0, 0]}
    pair = Dataset.from_dict(
        {"text_a": ["q0", "q1"], "text_b": ["s0", "s1"], "label": [0, 1]},
        features=schema_of(get_task("rte")),
    )
    path.write_text('{"row": 1, "text_a": "Q1", "text_b": "S1"}\n{"row": 1, "text_a": "Q1 again"}\n')
    got = with_paraphrases(pair, [1], load_augmented(path))  # a missing text_b keeps the original's
    assert got[:] == {"text_a": ["q1", "Q1", "Q1 again"], "text_b": ["s1", "S1", "s1"], "label": [1, 1, 1]}
    path.write_text('{"text_a": "no row"}\n')
    with pytest.raises(DataFormatError, match=r'aug\.jsonl:1: expected an object with an integer "row"'):
        load_augmented(path)


@pytest.fixture(scope="module")
def tiny_seq2seq(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-marian")
    vocab = {
        t: i
        for i, t in enumerate(
            ["<pad>", "</s>", "<unk>", *["the", "film", "was", "good", "bad", "fine", "very"]]
        )
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=1,
    )
    MarianMTModel(config).save_pretrained(folder)
    return folder


def test_marian_translator_samples_with_the_temperature(tiny_seq2seq):
    import torch

    translate = marian_translator(str(tiny_seq2seq), max_length=8, batch_size=2)
    texts = ["the film was good", "very bad", "fine"]
    torch.manual_seed(1)
    first = translate(texts, 0.9)
    torch.manual_seed(1)
    assert translate(texts, 0.9) == first  # seeded sampling is reproducible
    assert len(first) == 3
    assert all(isinstance(t, str) for t in first)
    samples = set()
    for seed in range(6):
        torch.manual_seed(seed)
        samples.add(tuple(translate(texts, 5.0)))
    assert len(samples) > 1  # it samples rather than decoding greedily


def test_augment_command_writes_one_file_per_temperature(tiny_seq2seq, sst2_like, tmp_path):
    from scl_loss.glue.cli import main

    split = tmp_path / "split.json"
    assert (
        main(
            [
                "split",
                "--task",
                "sst2",
                "--data_dir",
                str(sst2_like),
                "--shots",
                "4",
                "--samples",
                "2",
                "--out",
                str(split),
            ]
        )
        == 0
    )
    out = tmp_path / "aug"
    args = ["augment", "--task", "sst2", "--data_dir", str(sst2_like), "--split", str(split), "--copies", "2"]
    args += ["--en_de", str(tiny_seq2seq), "--de_en", str(tiny_seq2seq), "--temperatures", "0.3", "0.9"]
    assert main([*args, "--out", str(out)]) == 0
    import json

    rows = {r for s in json.loads(split.read_text())["train_samples"] for r in s}
    for name, temperature in (("augmented-T0.3.jsonl", 0.3), ("augmented-T0.9.jsonl", 0.9)):
        items = load_augmented(out / name)
        assert set(items["row"]) == rows
        assert len(items) == 2 * len(rows)
        assert set(items["temperature"]) == {temperature}
