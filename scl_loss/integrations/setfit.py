r"""Our supervised contrastive loss where a `SetFit <https://github.com/huggingface/setfit>`_ user picks
``setfit.losses.SupConLoss``.

Two imports change, nothing else::

    from scl_loss.integrations.setfit import SupConLoss, Trainer   # instead of setfit's
    args = TrainingArguments(loss=SupConLoss, ...)                  # setfit.TrainingArguments
    trainer = Trainer(model=model, args=args, train_dataset=train)

Why a :class:`Trainer` too: SetFit chooses the dataset layout by the identity of the loss class
(``args.loss is SupConLoss``); any other class gets sentence *pairs* with a 0/1 similarity label,
from which the class of every sentence cannot be recovered. :class:`Trainer` gives every subclass
of :class:`scl_loss.integrations.sentence_transformers.SupConLoss` the layout SetFit gives its own
SupConLoss: one ``(sentence, label)`` row per example. It also sets the
``BatchSamplers.GROUP_BY_LABEL`` sampler that SetFit means to set for its SupConLoss but, in
setfit 1.2.0, never does (it compares the loss *instance* with the loss classes; see
huggingface/setfit#644), so every anchor has a positive.

SetFit builds the loss as ``args.loss(model=body)``, so its hyper-parameters are the class's
defaults: for others, pass a subclass (docs/sentence-transformers.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import setfit
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from setfit.compat import BatchSamplers
from torch import Tensor, nn

from scl_loss import _validation as v
from scl_loss.integrations import sentence_transformers as st

__all__ = ["SupConLoss", "Trainer"]

CONTRAST_MODES = ("all", "one")


class SupConLoss(st.SupConLoss):
    r"""``setfit.losses.SupConLoss``'s arguments, computed by :func:`scl_loss.functional.supcon_loss`.

    .. math::

        \mathcal{L} = \frac{\tau}{\tau_b} \cdot \frac{1}{|A|} \sum_{i \in A} \frac{-1}{|P(i)|}
            \sum_{j \in P(i)} \log \frac{\exp(\Phi_i \cdot \Phi_j / \tau)}
                                        {\sum_{k \ne i} \exp(\Phi_i \cdot \Phi_k / \tau)}

    with ``τ = temperature`` and ``τ_b = base_temperature`` (SupContrast's scaling). On a batch in
    which every example shares its label with another, the value and gradient are SetFit's.
    An example alone in its class is not an anchor here (``A`` are the anchors with a positive),
    where SetFit's loss divides by its zero positive count and returns NaN.

    Args:
        model: the SetFit model body (a :class:`~sentence_transformers.SentenceTransformer`).
        temperature: ``τ ≥ 1e-12``.
        contrast_mode: ``"all"`` or ``"one"``, as in SetFit; they differ only for several views
            per example, which SetFit never builds (one text column), so ``"one"`` requires one column.
        base_temperature: ``τ_b > 0``.
        gather_across_devices: as in :class:`scl_loss.integrations.sentence_transformers.SupConLoss`.

    Shape:
        - sentence_features: one dict of tokenised inputs with ``N`` rows
        - labels: :math:`(N)`
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from sentence_transformers import SentenceTransformer
        >>> from sentence_transformers.sentence_transformer.modules import Dense
        >>> from scl_loss.integrations.setfit import SupConLoss
        >>> _ = torch.manual_seed(0)
        >>> body = SentenceTransformer(modules=[Dense(4, 8)])
        >>> loss = SupConLoss(body)  # SetFit's defaults: temperature = base_temperature = 0.07
        >>> features = [{"sentence_embedding": torch.randn(5, 4)}]
        >>> bool(loss(features, torch.tensor([0, 0, 1, 1, 2])).isfinite())  # label 2 is alone
        True
    """

    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = 0.07,
        contrast_mode: str = "all",
        base_temperature: float = 0.07,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model, temperature=temperature, gather_across_devices=gather_across_devices)
        if contrast_mode not in CONTRAST_MODES:
            raise ValueError(f"contrast_mode must be one of {CONTRAST_MODES}, got {contrast_mode!r}")
        self.contrast_mode = contrast_mode
        self.base_temperature = v.check_temperature("base_temperature", base_temperature)

    def compute_loss_from_embeddings(self, embeddings: Sequence[Tensor], labels: Tensor | None) -> Tensor:
        if self.contrast_mode == "one" and len(embeddings) > 1:
            raise ValueError(
                f"contrast_mode='one' is supported for one text column, got {len(embeddings)} columns"
            )
        loss = super().compute_loss_from_embeddings(embeddings, labels)
        return loss * (self.temperature / self.base_temperature)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **super().get_config_dict(),
            "contrast_mode": self.contrast_mode,
            "base_temperature": self.base_temperature,
        }


def is_supcon(loss: object) -> bool:
    """Whether ``loss`` (a ``TrainingArguments.loss``) is a class of our sentence-transformers SupConLoss.

    Example:
        >>> from setfit.losses import SupConLoss as SetFitSupConLoss
        >>> is_supcon(SupConLoss), is_supcon(SetFitSupConLoss)
        (True, False)
    """
    return isinstance(loss, type) and issubclass(loss, st.SupConLoss)


class Trainer(setfit.Trainer):
    """:class:`setfit.Trainer` that trains with :class:`SupConLoss` as SetFit trains with its own.

    Every argument is :class:`setfit.Trainer`'s. With ``args.loss`` a subclass of
    :class:`scl_loss.integrations.sentence_transformers.SupConLoss` (:class:`SupConLoss` included),
    the embedding phase sees one ``(sentence, label)`` row per training example in batches from
    ``BatchSamplers.GROUP_BY_LABEL`` (``batch_size`` even and ``≥ 4``; at least two labels with two
    examples each); any other loss is trained exactly as by :class:`setfit.Trainer`.

    Example:
        >>> from setfit import TrainingArguments
        >>> from scl_loss.integrations.setfit import SupConLoss, Trainer
        >>> args = TrainingArguments(loss=SupConLoss, batch_size=16, num_epochs=4)
        >>> # trainer = Trainer(model=SetFitModel.from_pretrained(path), args=args, train_dataset=train)
        >>> # trainer.train()
    """

    def train_embeddings(
        self,
        x_train: list[str],
        y_train: list[int] | list[list[int]] | None = None,
        x_eval: list[str] | None = None,
        y_eval: list[int] | list[list[int]] | None = None,
        args: setfit.TrainingArguments | None = None,
    ) -> None:
        sampler = self.st_trainer.args.batch_sampler
        if is_supcon((args or self.args).loss):
            self.st_trainer.args.batch_sampler = BatchSamplers.GROUP_BY_LABEL
        try:
            super().train_embeddings(x_train, y_train, x_eval, y_eval, args=args)
        finally:  # a later call with another loss gets the sampler it would have had
            self.st_trainer.args.batch_sampler = sampler

    def get_dataset(
        self,
        x: list[str],
        y: list[int] | list[list[int]],
        args: setfit.TrainingArguments,
        max_pairs: int = -1,
    ) -> tuple[Dataset, nn.Module]:
        if not is_supcon(args.loss):
            return super().get_dataset(x, y, args=args, max_pairs=max_pairs)
        return Dataset.from_dict({"sentence": x, "label": y}), args.loss(model=self.model.model_body)
