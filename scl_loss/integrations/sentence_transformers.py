r"""Supervised contrastive losses for `sentence-transformers <https://sbert.net>`_.

:class:`SupConLoss` is a sentence-transformers loss (model first, ``forward(sentence_features,
labels)``, ``get_config_dict``, ``citation``) computed by :func:`scl_loss.functional.supcon_loss`:
exact, stable (an anchor alone in its class adds nothing instead of a NaN) and memory-lean
(batches of any size through the blocked kernel). Train it with ``SentenceTransformerTrainer``
on a ``(sentence, label)`` dataset; ``BatchSamplers.GROUP_BY_LABEL`` makes every batch hold at
least two labels with at least two examples each, so every anchor has a positive.

Several text columns are views of one example: ``(anchor, positive, label)`` gives features
``[N, 2, D]`` whose two views share the row's label. Without a label column, two or more columns
are required and the views of a row are its only positives (SimCLR).

docs/sentence-transformers.md has the recipe, SetFit included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from scl_loss import _validation as v
from scl_loss.functional import supcon_loss

__all__ = ["SupConLoss"]

CITATION = """
@inproceedings{khosla2020supervised,
    title={Supervised Contrastive Learning},
    author={Prannay Khosla and Piotr Teterwak and Dilip Krishnan and Aaron Sarna and Yonglong Tian
            and Phillip Isola and Aaron Maschinot and Ce Liu and Dilip Krishnan},
    booktitle={Advances in Neural Information Processing Systems},
    year={2020}
}
@inproceedings{gunel2021supervised,
    title={Supervised Contrastive Learning for Pre-trained Language Model Fine-tuning},
    author={Beliz Gunel and Jingfei Du and Alexis Conneau and Veselin Stoyanov},
    booktitle={International Conference on Learning Representations},
    year={2021}
}
"""


def stack_views(embeddings: Sequence[Tensor]) -> Tensor:
    """One column's embeddings as ``[N, D]``, several columns as views ``[N, V, D]``.

    Example:
        >>> import torch
        >>> stack_views([torch.zeros(4, 8)]).shape, stack_views([torch.zeros(4, 8)] * 3).shape
        (torch.Size([4, 8]), torch.Size([4, 3, 8]))
    """
    if len(embeddings) == 0:
        raise ValueError("sentence_features must hold at least one input column, got none")
    sizes = {tuple(e.shape) for e in embeddings}
    if len(sizes) != 1:
        raise ValueError(f"every input column must embed to the same shape [N, D], got {sorted(sizes)}")
    return embeddings[0] if len(embeddings) == 1 else torch.stack(list(embeddings), dim=1)


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss (Khosla et al. 2020; Gunel et al. 2020, eq. 3) for sentence-transformers.

    .. math::

        \mathcal{L} = \frac{1}{|A|} \sum_{i \in A} \frac{-1}{|P(i)|} \sum_{j \in P(i)}
            \log \frac{\exp(\Phi_i \cdot \Phi_j / \tau)}{\sum_{k \ne i} \exp(\Phi_i \cdot \Phi_k / \tau)}

    over the l2-normalised sentence embeddings Φ; ``P(i)`` are the other embeddings with the
    label of ``i`` and ``A`` the anchors that have at least one (see
    :func:`scl_loss.functional.supcon_loss`). Use ``BatchSamplers.GROUP_BY_LABEL`` in the
    training arguments so that every batch has positives; a batch without any gives a zero loss.

    Args:
        model: the :class:`~sentence_transformers.SentenceTransformer` to train.
        temperature: ``τ > 0``.
        gather_across_devices: under DDP, contrast this device's anchors against every device's
            embeddings, with exact gradients (``gather_distributed`` of
            :func:`~scl_loss.functional.supcon_loss`; docs/distributed.md).

    Inputs:
        One text column and a label column of integer class ids (``(sentence, label)``); more
        text columns are views sharing the row's label; without labels, ``≥ 2`` columns whose
        views of one row are its only positives.

    Shape:
        - sentence_features: ``V`` dicts of tokenised inputs, ``N`` rows each
        - labels: :math:`(N)` or ``None``
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from sentence_transformers import SentenceTransformer
        >>> from sentence_transformers.sentence_transformer.modules import Dense
        >>> from scl_loss.integrations.sentence_transformers import SupConLoss
        >>> _ = torch.manual_seed(0)
        >>> model = SentenceTransformer(modules=[Dense(4, 8)])  # a toy embedder of 4-d inputs
        >>> loss = SupConLoss(model, temperature=0.1)
        >>> features = [{"sentence_embedding": torch.randn(6, 4)}]
        >>> value = loss(features, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> value.backward()
        >>> value.shape, loss.get_config_dict()
        (torch.Size([]), {'temperature': 0.1, 'gather_across_devices': False})
    """

    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = 0.1,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a SentenceTransformer (an nn.Module), got {type(model).__name__}")
        if not isinstance(gather_across_devices, bool):
            kind = type(gather_across_devices).__name__
            raise TypeError(f"gather_across_devices must be a bool, got {kind}")
        self.model = model
        self.temperature = v.check_positive_finite("temperature", temperature)
        self.gather_across_devices = gather_across_devices

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: Sequence[Tensor], labels: Tensor | None) -> Tensor:
        """The loss of already computed embeddings, one ``[N, D]`` tensor per input column."""
        features = stack_views(embeddings)
        if labels is None and features.dim() == 2:
            raise ValueError(
                f"{type(self).__name__} needs a label column of integer class ids, or at least two text "
                "columns (views of one example) when there is none"
            )
        return supcon_loss(
            features, labels, temperature=self.temperature, gather_distributed=self.gather_across_devices
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "gather_across_devices": self.gather_across_devices}

    @property
    def citation(self) -> str:
        return CITATION
