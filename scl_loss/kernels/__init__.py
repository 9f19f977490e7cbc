"""Kernels: functions ``ContrastProblem -> (per_anchor_loss [A], num_positives [A])``.

The public functions in :mod:`scl_loss.functional` validate arguments, build a
:class:`~scl_loss._problem.ContrastProblem`, call one kernel and apply the reduction. A
kernel returns, for each anchor ``a``,

    loss_a = logsumexp_{k ≠ a, valid k} (z_a·z_k / τ) − (1/|P(a)|) Σ_{p ∈ P(a)} z_a·z_p / τ

and ``|P(a)|``; ``loss_a`` is exactly 0 (still attached to the graph) where ``|P(a)| = 0``.
"""

from scl_loss.kernels.dense import dense_per_anchor_loss

__all__ = ["dense_per_anchor_loss"]
