"""Noisy paraphrases by back-translation (paper §5.2, Table 5): en → de → en, both directions
sampled at temperature T; the file format is in docs/glue.md ("augment")."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

__all__ = ["augment_rows", "marian_translator", "write_augmented"]

Translate = Callable[[list[str], float], list[str]]


def marian_translator(
    name_or_path: str, *, device: torch.device | str = "cpu", batch_size: int = 16, max_length: int = 256
) -> Translate:
    """A function ``(texts, temperature) -> translations`` sampling from a seq2seq model."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(name_or_path)
    model: Any = AutoModelForSeq2SeqLM.from_pretrained(name_or_path).to(device).eval()
    # Never ask for more tokens than the model has positions for.
    max_length = min(max_length, getattr(model.config, "max_position_embeddings", max_length))

    @torch.no_grad()
    def translate(texts: list[str], temperature: float) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            generated = model.generate(
                **batch, do_sample=True, temperature=temperature, top_k=0, max_new_tokens=max_length
            )
            out.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
        return out

    return translate


def augment_rows(
    train: Dataset,
    rows: Sequence[int],
    *,
    forward: Translate,
    backward: Translate,
    temperature: float,
    copies: int = 3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``copies`` back-translations of each of ``rows`` (both texts of a pair are paraphrased)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    unique = sorted(set(rows))
    out: list[dict[str, Any]] = []
    for copy in range(copies):
        torch.manual_seed(seed * 1000 + copy)
        paraphrases = {}
        for field in ("text_a", "text_b"):
            if field in train.column_names:
                texts = train.select(unique)[field][:]
                paraphrases[field] = backward(forward(texts, temperature), temperature)
        for j, row in enumerate(unique):
            item: dict[str, Any] = {"row": row, "copy": copy, "temperature": temperature}
            item.update({field: texts[j] for field, texts in paraphrases.items()})
            out.append(item)
    return sorted(out, key=lambda item: (item["row"], item["copy"]))


def write_augmented(path: str | Path, items: list[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
