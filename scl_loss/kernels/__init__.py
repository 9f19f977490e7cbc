"""Kernels and the choice between them.

A kernel solves a :class:`~scl_loss._problem.ContrastProblem`: for each anchor ``a``

    loss_a = logsumexp_{k ≠ a, valid k} (z_a·z_k / τ) − (1/|P(a)|) Σ_{p ∈ P(a)} z_a·z_p / τ

(exactly 0, still attached to the graph, where ``|P(a)| = 0``), then a reduction. Two paths:

* ``"dense"`` (:func:`~scl_loss.kernels.dense.dense_supcon`): the whole ``[A, M]`` logit
  matrix in one fused ``autograd.Function``; the fewest kernel launches, for small problems.
* ``"blocked"`` (:func:`~scl_loss.kernels.blocked.blocked_supcon`): ``chunk`` anchor rows at
  a time, hand-written backward, ``O(M·D + chunk·M)`` extra memory; for large problems.

Both normalise the contrasts themselves (scale-safely), take half-precision values into the
products unrounded, never read tensor values on the host, and recompute their gradient with
differentiable ops when it must be differentiated again (:mod:`scl_loss.kernels.formula`).

``"auto"`` picks by :func:`choose_path`. See ``docs/blocked.md``.
"""

from __future__ import annotations

from torch import Tensor

from scl_loss._problem import ContrastProblem
from scl_loss._validation import PATHS
from scl_loss.kernels.blocked import blocked_supcon, default_chunk_size
from scl_loss.kernels.dense import dense_supcon

__all__ = [
    "CPU_DENSE_MAX_ELEMENTS",
    "DENSE_MAX_ELEMENTS",
    "PATHS",
    "choose_path",
    "default_chunk_size",
    "dense_supcon",
    "per_anchor_loss",
    "reduced_loss",
    "resolve_path",
]

#: On a GPU, ``"auto"`` stays dense while the ``[A, M]`` matrices have at most this many
#: entries (16 MiB per float32 matrix; e.g. up to 2,048 single-view rows): there launch count
#: decides small problems' time, and the dense kernel launches the fewest kernels.
DENSE_MAX_ELEMENTS = 2**22
#: On the CPU the blocked kernel is as fast from a few hundred rows on and faster at 2,048
#: (docs/benchmarks.md, 2 cores, 2026-11-26), with less memory: dense only up to 256² entries.
CPU_DENSE_MAX_ELEMENTS = 2**16


def choose_path(num_anchors: int, num_contrasts: int, on_cpu: bool = False) -> str:
    """The ``"auto"`` rule: ``"dense"`` while ``A·M`` is at most the device's threshold, else ``"blocked"``.

    The threshold is :data:`DENSE_MAX_ELEMENTS` on accelerators and
    :data:`CPU_DENSE_MAX_ELEMENTS` on the CPU.

    Example:
        >>> from scl_loss.kernels import choose_path
        >>> choose_path(16, 16), choose_path(2048, 2048), choose_path(32768, 32768)
        ('dense', 'dense', 'blocked')
        >>> choose_path(16, 16, on_cpu=True), choose_path(2048, 2048, on_cpu=True)
        ('dense', 'blocked')
    """
    threshold = CPU_DENSE_MAX_ELEMENTS if on_cpu else DENSE_MAX_ELEMENTS
    return "dense" if num_anchors * num_contrasts <= threshold else "blocked"


def resolve_path(problem: ContrastProblem, path: str) -> str:
    """``"dense"`` or ``"blocked"``: ``path`` itself, or the :func:`choose_path` rule for ``"auto"``."""
    if path == "auto":
        on_cpu = problem.contrasts.device.type == "cpu"
        return choose_path(problem.num_anchors, problem.contrasts.shape[0], on_cpu=on_cpu)
    return path


def per_anchor_loss(
    problem: ContrastProblem, *, path: str = "auto", chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(loss [A], num_positives [A])`` on the chosen path."""
    if resolve_path(problem, path) == "dense":
        return dense_supcon(problem, "none")
    return blocked_supcon(problem, "none", chunk_size)


def reduced_loss(
    problem: ContrastProblem, reduction: str, *, path: str = "auto", chunk_size: int | None = None
) -> Tensor:
    """The loss with ``reduction`` applied (``[A]`` for ``"none"``, else a scalar) on the chosen path.

    On both paths a scalar reduction computes the gradient in the forward pass.
    """
    if resolve_path(problem, path) == "dense":
        return dense_supcon(problem, reduction)[0]
    return blocked_supcon(problem, reduction, chunk_size)[0]
