"""Encoder, tokenizer and batched inference for the fine-tuning script."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scl_loss.glue.loaders import Example
from scl_loss.integrations.transformers import first_token_features

__all__ = ["Encoded", "batches", "encode", "load_model", "load_tokenizer", "predict"]


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def load_model(name_or_path: str, num_labels: int, dropout: float | None) -> nn.Module:
    """A sequence classifier with a fresh (or, for a fine-tuned checkpoint, its own) head.

    ``dropout`` sets every dropout probability the config knows (the paper uses 0.1).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name_or_path, num_labels=num_labels)
    if dropout is not None:
        for attr in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout"):
            if hasattr(config, attr):
                setattr(config, attr, dropout)
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config)


@dataclass
class Encoded:
    """Tokenised examples (unpadded) and their labels."""

    features: list[dict[str, list[int]]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def encode(tokenizer: Any, examples: Sequence[Example], max_length: int) -> Encoded:
    """Tokenise once: ``[CLS] a [SEP]`` or the pair form, truncated to ``max_length`` tokens."""
    texts_a = [e.text_a for e in examples]
    pair = examples[0].text_b is not None
    texts_b = [e.text_b or "" for e in examples] if pair else None
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
    return Encoded(features, [e.label for e in examples])


def batches(
    tokenizer: Any, data: Encoded, order: Sequence[int], batch_size: int, device: torch.device
) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """Padded batches in ``order``: (row indices, model inputs with ``labels``)."""
    for start in range(0, len(order), batch_size):
        rows = list(order[start : start + batch_size])
        padded = tokenizer.pad([data.features[i] for i in rows], return_tensors="pt")
        inputs = {k: v.to(device) for k, v in padded.items()}
        inputs["labels"] = torch.tensor([data.labels[i] for i in rows], device=device)
        yield rows, inputs


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer: Any,
    data: Encoded,
    batch_size: int,
    device: torch.device,
    *,
    features: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Logits ``[N, C]`` (and Φ ``[N, D]`` when ``features``) in data order, on the CPU.

    Batches are formed from length-sorted rows so little compute goes to padding.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.features[i]["input_ids"]))
    logits: list[Tensor | None] = [None] * len(data)
    phis: list[Tensor | None] = [None] * len(data)
    for rows, inputs in batches(tokenizer, data, order, batch_size, device):
        inputs.pop("labels")
        out = model(**inputs, output_hidden_states=features)
        for j, row in enumerate(rows):
            logits[row] = out.logits[j].float().cpu()
            if features:
                phis[row] = first_token_features(out)[j].float().cpu()
    model.train(was_training)
    stacked = torch.stack(logits)  # type: ignore[arg-type]
    return stacked, (torch.stack(phis) if features else None)  # type: ignore[arg-type]
