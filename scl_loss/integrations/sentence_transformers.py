r"""Supervised contrastive losses for `sentence-transformers <https://sbert.net>`_.

:class:`SupConLoss` is a sentence-transformers loss (model first, ``forward(sentence_features,
labels)``, ``get_config_dict``, ``citation``) computed by :func:`scl_loss.functional.supcon_loss`:
exact, stable (an anchor alone in its class adds nothing instead of a NaN) and memory-lean
(batches of any size through the blocked kernel). Train it with ``SentenceTransformerTrainer``
on a ``(sentence, label)`` dataset; ``BatchSamplers.GROUP_BY_LABEL`` makes every batch hold at
least two labels with at least two examples each, so every anchor has a positive.

:class:`CachedSupConLoss` is the same loss with the batch decoupled from memory: the encoder only
ever holds ``mini_batch_size`` examples' activations, and the gradient is still the whole batch's
(exact gradient caching, the two phases of :mod:`scl_loss.cached`), as
``CachedMultipleNegativesRankingLoss`` does for in-batch negatives.

Several text columns are views of one example: ``(anchor, positive, label)`` gives features
``[N, 2, D]`` whose two views share the row's label. Without a label column, two or more columns
are required and the views of a row are its only positives (SimCLR).

docs/sentence-transformers.md has the recipe, SetFit included.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from scl_loss import _validation as v
from scl_loss.cached import MicroBatches, backward_micro_batches, encode_micro_batches
from scl_loss.functional import supcon_loss

__all__ = ["CachedSupConLoss", "SupConLoss"]

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


GRADCACHE_CITATION = """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
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
        temperature: ``τ ≥ 1e-12``.
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
        self.temperature = v.check_temperature("temperature", temperature)
        self.gather_across_devices = gather_across_devices

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        embeddings = [self.model(features)["sentence_embedding"] for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: Sequence[Tensor], labels: Tensor | None) -> Tensor:
        """The loss of already computed embeddings, one ``[N, D]`` tensor per input column."""
        return self.criterion(stack_views(embeddings), labels)

    def criterion(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss of stacked embeddings: ``[N, D]`` (one column) or ``[N, V, D]`` (views)."""
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


class CachedSupConLoss(SupConLoss):
    r""":class:`SupConLoss` on batches of any size, the encoder holding ``mini_batch_size`` rows at a time.

    The loss and its gradient are :class:`SupConLoss`'s on the whole batch, computed by exact
    gradient caching (Gao et al. 2021; :func:`scl_loss.cached.encode_micro_batches` and
    :func:`scl_loss.cached.backward_micro_batches`, docs/caching.md):

    1. ``forward`` embeds the batch ``mini_batch_size`` rows at a time without a graph, keeping
       each mini-batch's RNG state, and returns the loss of those embeddings, whose graph
       reaches the embeddings but not the encoder;
    2. the returned loss's backward (the Trainer's ``loss.backward()``, scaled as the Trainer
       scales it: gradient accumulation, fp16 loss scaling) reaches the embeddings, whose hook
       re-embeds each mini-batch with a graph from its saved RNG state (same dropout masks,
       under the autocast of step 1) and pushes its slice of the embedding gradient into the
       parameters.

    So the batch that is contrasted is ``per_device_train_batch_size``, and peak activation
    memory is that of ``mini_batch_size`` examples, at the price of one extra forward without a
    graph per step. The RNG is left as after a plain forward. Under DDP the re-embedding
    all-reduces once per step (every mini-batch but the last runs in ``no_sync``).

    Args:
        model: the :class:`~sentence_transformers.SentenceTransformer` to train.
        temperature: ``τ ≥ 1e-12``.
        mini_batch_size: rows embedded at once, an int ≥ 1.
        gather_across_devices: as in :class:`SupConLoss`.

    Inputs and shape:
        as :class:`SupConLoss`.

    Example:
        >>> import torch
        >>> from sentence_transformers import SentenceTransformer
        >>> from sentence_transformers.sentence_transformer.modules import Dense
        >>> from scl_loss.integrations.sentence_transformers import CachedSupConLoss
        >>> _ = torch.manual_seed(0)
        >>> model = SentenceTransformer(modules=[Dense(4, 8)])
        >>> loss = CachedSupConLoss(model, temperature=0.1, mini_batch_size=2)
        >>> value = loss([{"sentence_embedding": torch.randn(6, 4)}], torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> value.backward()  # re-embeds 3 mini-batches of 2 rows, with a graph
        >>> value.shape, model[0].linear.weight.grad.shape
        (torch.Size([]), torch.Size([8, 4]))
    """

    def __init__(
        self,
        model: SentenceTransformer,
        temperature: float = 0.1,
        mini_batch_size: int = 32,
        gather_across_devices: bool = False,
    ) -> None:
        super().__init__(model, temperature=temperature, gather_across_devices=gather_across_devices)
        mini_batch_size = v.check_int("mini_batch_size", mini_batch_size)
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be an int >= 1, got {mini_batch_size}")
        self.mini_batch_size = mini_batch_size

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        columns = list(sentence_features)
        if not columns:
            raise ValueError("sentence_features must hold at least one input column, got none")
        # The Trainer's autocast covers this forward, not the backward that re-embeds: enter it in both.
        encode = functools.partial(self._embed_copies, _autocast_now(columns))
        features, micro_batches = encode_micro_batches(encode, columns, micro_batch_size=self.mini_batch_size)
        if not torch.is_grad_enabled():  # evaluation: nothing to backpropagate
            return self.criterion(features, labels)
        features.requires_grad_()
        loss = self.criterion(features, labels)
        features.register_hook(functools.partial(self._backward_hook, micro_batches))
        return loss

    def embed(self, columns: list[dict[str, Tensor]]) -> Tensor:
        """One mini-batch's embeddings, ``[n, D]`` or views ``[n, V, D]``."""
        return stack_views([self.model(column)["sentence_embedding"] for column in columns])

    def _embed_copies(
        self, autocast: Callable[[], torch.autocast], columns: list[dict[str, Tensor]]
    ) -> Tensor:
        # Copies: modules may edit their inputs in place, and the backward embeds the same rows again.
        with autocast():
            return self.embed(_clone(columns))

    def _backward_hook(self, micro_batches: MicroBatches, grad: Tensor) -> None:
        """The embeddings' hook: their gradient (the Trainer's scaling included) into the parameters."""
        model = self.model
        no_sync = model.no_sync if isinstance(model, DistributedDataParallel) else None
        backward_micro_batches(micro_batches, grad, no_sync=no_sync)

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}

    @property
    def citation(self) -> str:
        return CITATION + GRADCACHE_CITATION


def _autocast_now(columns: list[Any]) -> Callable[[], torch.autocast]:
    """A context that re-enters the autocast now in force on the inputs' device (off if none is)."""
    tensors = [t for c in columns if isinstance(c, Mapping) for t in c.values() if isinstance(t, Tensor)]
    device_type = tensors[0].device.type if tensors else "cpu"
    return functools.partial(
        torch.autocast,
        device_type,
        dtype=torch.get_autocast_dtype(device_type),
        enabled=torch.is_autocast_enabled(device_type),
    )


def _clone(columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {key: t.clone() if isinstance(t, Tensor) else t for key, t in column.items()} for column in columns
    ]
