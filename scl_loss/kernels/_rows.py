"""Before and after the quadratic part of every kernel: the rows the products take, and the
gradient that flows back through the normalisation.

Scale safety, exact half precision and the normalisation's gradient live here, once for all
kernels; the derivation is in docs/maths.md ("Normalisation", "Half precision").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scl_loss._problem import compute_dtype

__all__ = [
    "HALF_DTYPES",
    "Rows",
    "exact_addmm_",
    "exact_mm",
    "operand_scale",
    "power_of_two_rows",
    "prepare_rows",
    "split_operand",
]

#: Input dtypes whose values the similarity products take unrounded, accumulating in float32.
HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Rows:
    """The contrast rows in the form the products take.

    The vectors of the loss are ``u = operands · scales`` (row-wise; ``operands`` alone when
    ``scales`` is None), each a unit vector when ``normalize`` is set.

    Attributes:
        operands: ``[M, D]``: for fp16/bf16 input the input values themselves (bf16 rows
            multiplied by an exact power of two), else the vectors ``u`` in the compute dtype.
        scales: ``[M]`` float32 inverse norms of the half ``operands``, or None.
        grad_scales: ``[M]`` factors of the input gradient (see :meth:`input_gradient`), or
            None for 1.
        normalize: the vectors are the normalised inputs.
        dtype: the compute dtype (float32, or float64 for float64 input).
        input_dtype: the dtype of the input rows (that of their gradient).
    """

    operands: Tensor
    scales: Tensor | None
    grad_scales: Tensor | None
    normalize: bool
    dtype: torch.dtype
    input_dtype: torch.dtype

    @property
    def half(self) -> bool:
        return self.operands.dtype in HALF_DTYPES

    def vectors(self) -> Tensor:
        """``u``, ``[M, D]`` in the compute dtype (a new tensor only for half operands)."""
        u = self.operands.to(self.dtype)
        return u if self.scales is None else u * self.scales.unsqueeze(1)

    def to_operand_space(self, grad_u: Tensor) -> Tensor:
        """A gradient with respect to ``u`` as one with respect to the operands, scales held fixed."""
        return grad_u if self.scales is None else grad_u * self.scales.unsqueeze(1)

    def input_gradient(self, grad: Tensor, u: Tensor | None = None) -> Tensor:
        """The gradient with respect to the input rows from ``grad`` (overwritten), the one with
        respect to the operands with the scales held fixed: ``grad_scales ⊙ (grad − u (u·grad))``
        when normalising (the projection is the scales' own derivative), ``grad`` otherwise.

        In the compute dtype (rounded once where ``grad_scales`` is float64): the caller rounds
        it to the input dtype once, after any scaling by ``grad_output``.
        """
        if self.normalize:
            u = self.vectors() if u is None else u
            radial = torch.einsum("md,md->m", u, grad)  # one batched product, no [M, D] temporary
            grad = grad.addcmul_(u, radial.unsqueeze(1), value=-1.0)
        if self.grad_scales is not None:
            grad = grad.mul_(self.grad_scales.unsqueeze(1))
        return grad


def _inverse(norm: Tensor) -> Tensor:
    # 1/‖x‖ with 0 for a zero row (its vector is 0 and gets no gradient) and NaN kept NaN:
    # a NaN row must give a NaN loss, never be mistaken for a zero row.
    return torch.reciprocal(norm).nan_to_num_(nan=math.nan, posinf=0.0)


def power_of_two_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(x · r, r)`` with ``r`` ``[M, 1]`` exact powers of two putting each row's largest
    magnitude in ``[0.5, 1)`` (from ``2**-126``-size rows up only as far as ``2**125``).

    Exact in every float format, so the rescaled rows are the same values at another scale;
    their squares and products then neither overflow nor underflow. NaN and Inf rows become NaN.
    """
    largest = torch.linalg.vector_norm(x, ord=math.inf, dim=1, keepdim=True)
    largest = largest.clamp(min=torch.finfo(x.dtype).tiny)
    mantissa, _ = torch.frexp(largest)
    r = mantissa / largest  # = 2**-exponent exactly
    return x * r, r


def prepare_rows(x: Tensor, normalize: bool) -> Rows:
    """The operands and scales of the rows ``x`` (``[M, D]``, any float dtype); no autograd inside."""
    dtype = compute_dtype(x.dtype)
    if not normalize:
        operands = x if x.dtype in HALF_DTYPES else x.to(dtype)
        return Rows(operands, None, None, False, dtype, x.dtype)
    if x.dtype in HALF_DTYPES:
        # float16 squares and products cannot leave float32's range; bfloat16 ones can.
        z, r = (x, None) if x.dtype == torch.float16 else power_of_two_rows(x)
        scales = _inverse(torch.linalg.vector_norm(z, dim=1, dtype=torch.float32))
        grad_scales = None if r is None else r.squeeze(1).to(torch.float32)
        return Rows(z, scales, grad_scales, True, dtype, x.dtype)
    if x.dtype == torch.float64:
        z, r = power_of_two_rows(x)
        inverse = _inverse(torch.linalg.vector_norm(z, dim=1))
        return Rows(z * inverse.unsqueeze(1), None, r.squeeze(1) * inverse, True, dtype, x.dtype)
    # float32: a float64 norm can neither overflow nor underflow for any float32 row, and the
    # unit vectors are rounded once.
    inverse = _inverse(torch.linalg.vector_norm(x, dim=1, dtype=torch.float64))
    return Rows((x * inverse.unsqueeze(1)).to(dtype), None, inverse, True, dtype, x.dtype)


def exact_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``; half operands enter unrounded and accumulate into a float32 result.

    On CUDA this is ``torch.mm(..., out_dtype=torch.float32)`` (tensor cores). Elsewhere there is
    no such product; upcasting first computes the same thing (half values are exact in float32),
    which is how the tests check this path on the CPU.
    """
    if a.dtype not in HALF_DTYPES:
        return torch.mm(a, b)
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def exact_addmm_(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out += a @ b`` with half operands unrounded (see :func:`exact_mm`); returns ``out``."""
    if a.dtype not in HALF_DTYPES:
        return out.addmm_(a, b)
    if a.is_cuda:
        return torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
    return out.addmm_(a.float(), b.float())


def operand_scale(bound: Tensor, dtype: torch.dtype) -> Tensor | None:
    """For float16 parts: the power of two that puts ``bound`` (the largest entry to expect) near
    ``2**14``, well inside float16's range; None for other dtypes (bfloat16 has float32's range)."""
    if dtype != torch.float16:
        return None
    bound = bound.clamp(min=2.0**-60)  # an all-zero matrix must not get an infinite scale
    mantissa, _ = torch.frexp(bound)
    return mantissa / bound * 2.0**14


def split_operand(g: Tensor, dtype: torch.dtype, scale: Tensor | None) -> list[Tensor]:
    """A float32 matrix as parts for exact-operand products: ``g · scale ≈ Σ parts``.

    For float32 (or float64) ``dtype``: ``[g]``. For half ``dtype``: ``hi`` (``g`` rounded) and
    ``lo`` (the rounding error, rounded), so ``hi + lo`` carries about twice the half format's
    bits (bound in docs/maths.md). ``scale`` (from :func:`operand_scale`, float16 only) is a
    power of two; the caller divides the products by it. ``g`` is overwritten.
    """
    if dtype not in HALF_DTYPES:
        return [g]
    if scale is not None:
        g.mul_(scale)
    hi = g.to(dtype)
    lo = g.sub_(hi).to(dtype)
    return [hi, lo]
