r"""Supervised contrastive fine-tuning inside a Hugging Face :class:`transformers.Trainer`.

The objective is Gunel et al. (2020), eq. 1, ``(1 − λ)·CE + λ·SCL``, computed by
:class:`scl_loss.SCLCrossEntropy` on the classifier logits and on Φ, the final-layer hidden state
of the first token (``[CLS]`` / ``<s>``), taken *before* the classification head.

Two ways in:

- :class:`SCLTrainer`: a drop-in ``Trainer`` with ``scl_lambda``, ``scl_tau`` and
  ``scl_reduction`` arguments;
- :func:`scl_compute_loss`: the loss computation itself, for your own ``Trainer.compute_loss``.

Gradient accumulation: SCL contrasts the examples of one micro-batch, so the loss of a
micro-batch is a mean over that micro-batch and is *not* pre-normalised by the
``num_items_in_batch`` of the accumulated batch. :class:`SCLTrainer` therefore sets
``model_accepts_loss_kwargs = False`` (and ``loss_is_scaled_for_ga = False`` where the installed
transformers has it), so the Trainer divides each micro-batch loss by the number of
accumulation steps: with equal micro-batches the CE term equals the full-batch mean.

Larger SCL batches than the encoder's memory allows: ``SCLTrainer(..., scl_micro_batch_size=m)``
keeps the per-device batch as the SCL batch (its negatives and positives) and runs the encoder on
micro-batches of ``m`` rows with exact gradient caching (:func:`scl_loss.cached_backward`,
docs/caching.md). The gradient is that of the whole per-device batch, so the update equals the
plain step's; gradient accumulation, mixed precision (through ``accelerator.backward``) and DDP's
``no_sync`` work as in the plain step.

Evaluation: the loss is computed with ``output_hidden_states=True`` but only the logits are
returned, so the Trainer does not gather every layer's hidden states across the eval set.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import Tensor, nn
from transformers import Trainer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.training_args import OptimizerNames

from scl_loss.cached import cached_backward
from scl_loss.functional import SCLComponents
from scl_loss.losses import SCLCrossEntropy

__all__ = ["SCLTrainer", "first_token_features", "scl_compute_loss"]


def first_token_features(outputs: Any) -> Tensor:
    """Φ: the final-layer hidden state of the first token, ``[N, D]``.

    Args:
        outputs: a model output computed with ``output_hidden_states=True``.

    Example:
        >>> import torch
        >>> from transformers.modeling_outputs import SequenceClassifierOutput
        >>> out = SequenceClassifierOutput(logits=torch.zeros(2, 3), hidden_states=(torch.zeros(2, 5, 8),))
        >>> first_token_features(out).shape
        torch.Size([2, 8])
    """
    hidden = (
        outputs.get("hidden_states")
        if isinstance(outputs, Mapping)
        else getattr(outputs, "hidden_states", None)
    )
    if not hidden:
        raise ValueError("outputs must carry hidden_states: call the model with output_hidden_states=True")
    last = hidden[-1]
    if last.dim() != 3:
        raise ValueError(f"outputs.hidden_states[-1] must have shape [N, T, D], got {tuple(last.shape)}")
    return last[:, 0]


def scl_compute_loss(
    model: nn.Module,
    inputs: Mapping[str, Any],
    criterion: nn.Module,
    *,
    return_outputs: bool = False,
) -> Tensor | tuple[Tensor, SequenceClassifierOutput]:
    """Run ``model`` on ``inputs`` and return ``criterion(logits, Φ, labels)``.

    ``inputs`` holds ``labels``; they are not passed to the model (it would compute a CE of its
    own). ``criterion`` is a :class:`scl_loss.SCLCrossEntropy` (or any module with the same call).
    With ``return_outputs`` the second element holds only ``loss`` and ``logits``.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> from scl_loss import SCLCrossEntropy
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...                     intermediate_size=16, num_labels=2)
        >>> model = BertForSequenceClassification(config)
        >>> inputs = {"input_ids": torch.randint(0, 30, (4, 6)), "labels": torch.tensor([0, 1, 0, 1])}
        >>> loss = scl_compute_loss(model, inputs, SCLCrossEntropy(0.9, 0.3))
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """
    model_inputs, labels = _split_labels(inputs)
    logits, features = _logits_and_features(model, model_inputs)
    result = criterion(logits, features, labels)
    loss = result.loss if isinstance(result, SCLComponents) else result
    if return_outputs:
        return loss, SequenceClassifierOutput(loss=loss, logits=logits)
    return loss


def _split_labels(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], Tensor]:
    if "labels" not in inputs:
        raise ValueError(f"inputs must contain 'labels' to compute the SCL loss, got keys {sorted(inputs)}")
    return {k: v for k, v in inputs.items() if k != "labels"}, inputs["labels"]


def _logits_and_features(model: nn.Module, model_inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
    outputs = model(**model_inputs, output_hidden_states=True)
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
    return logits, first_token_features(outputs)


class SCLTrainer(Trainer):
    """A :class:`transformers.Trainer` that fine-tunes with ``(1 − λ)·CE + λ·SCL``.

    Args:
        *args, **kwargs: as for :class:`transformers.Trainer`.
        scl_lambda: λ ∈ [0, 1]; ``0`` is plain cross-entropy.
        scl_tau: τ ≥ 1e-12.
        scl_reduction: ``"mean"`` (default, λ independent of batch size) or ``"sum"``
            (the paper's eq. 1–3 literally); see :class:`scl_loss.SCLCrossEntropy`.
        scl_micro_batch_size: ``None`` (default): the encoder sees the whole per-device batch.
            An int ``m ≥ 1``: the per-device batch stays the SCL batch, the encoder runs on
            micro-batches of ``m`` rows with exact gradient caching (:func:`scl_loss.cached_backward`;
            the same update, less activation memory, about one extra forward pass). Not with
            DeepSpeed, ``nn.DataParallel`` (several GPUs in one process) or LOMO optimizers; the
            cached step does not call :meth:`compute_loss`.
        scl_gather_distributed: under DDP/torchrun, contrast against every rank's batch with
            exact gradients (``gather_distributed`` of :class:`scl_loss.SCLCrossEntropy`).

    Example:
        >>> from scl_loss.integrations.transformers import SCLTrainer
        >>> # trainer = SCLTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
        >>> #                      scl_lambda=0.9, scl_tau=0.3)
        >>> # trainer.train()
    """

    # Each micro-batch loss is a mean over that micro-batch: let the Trainer divide by the
    # accumulation steps (transformers versions that have this attribute read it).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        scl_lambda: float = 0.9,
        scl_tau: float = 0.3,
        scl_reduction: str = "mean",
        scl_micro_batch_size: int | None = None,
        scl_gather_distributed: bool = False,
        **kwargs: Any,
    ) -> None:
        if scl_micro_batch_size is not None:
            if isinstance(scl_micro_batch_size, bool) or not isinstance(
                scl_micro_batch_size, numbers.Integral
            ):
                raise TypeError(
                    "scl_micro_batch_size must be None or an int >= 1, "
                    f"got {type(scl_micro_batch_size).__name__}"
                )
            if scl_micro_batch_size < 1:
                raise ValueError(
                    f"scl_micro_batch_size must be None or an int >= 1, got {scl_micro_batch_size}"
                )
        if not isinstance(scl_gather_distributed, bool):
            raise TypeError(
                f"scl_gather_distributed must be a bool, got {type(scl_gather_distributed).__name__}"
            )
        super().__init__(*args, **kwargs)
        self.scl_criterion = SCLCrossEntropy(
            scl_lambda, scl_tau, scl_reduction=scl_reduction, gather_distributed=scl_gather_distributed
        )
        self.scl_micro_batch_size = scl_micro_batch_size
        if scl_micro_batch_size is not None:
            self._check_cached_step_supported()
        # Never hand num_items_in_batch to the model, and let the Trainer scale for accumulation.
        self.model_accepts_loss_kwargs = False

    def _check_cached_step_supported(self) -> None:
        # Each of these backpropagates in its own way, which the cached step cannot reproduce.
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError("scl_micro_batch_size does not support DeepSpeed (its engine runs the backward)")
        if self.args.n_gpu > 1:
            raise ValueError(
                f"scl_micro_batch_size does not support nn.DataParallel over {self.args.n_gpu} GPUs in one "
                "process: launch one process per GPU (torchrun) instead"
            )
        if self.args.optim in (OptimizerNames.LOMO, OptimizerNames.ADALOMO):
            raise ValueError(f"scl_micro_batch_size does not support the {self.args.optim} optimizer")

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """:meth:`transformers.Trainer.training_step`, or with ``scl_micro_batch_size`` the cached step:
        forward and backward of the whole per-device batch in micro-batches, one backward in all."""
        if self.scl_micro_batch_size is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        model_inputs, labels = _split_labels(self._prepare_inputs(inputs))
        # As the plain step: the loss is a mean over the batch, divided by the accumulation steps,
        # then accelerator.backward (which applies the fp16 GradScaler when there is one).
        steps = self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager():
            result = cached_backward(
                lambda batch: _logits_and_features(model, batch),
                model_inputs,
                labels,
                self.scl_criterion,
                micro_batch_size=self.scl_micro_batch_size,
                backward=lambda loss: self.accelerator.backward(loss / steps),
                no_sync=lambda: self.accelerator.no_sync(model),
            )
        loss = result.loss if isinstance(result, SCLComponents) else result
        return loss / steps

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Same contract as :meth:`transformers.Trainer.compute_loss`; ``num_items_in_batch`` is unused
        because the loss is a per-micro-batch mean (see the module docstring)."""
        del num_items_in_batch
        return scl_compute_loss(model, inputs, self.scl_criterion, return_outputs=return_outputs)
