"""Scale safety: with ``normalize=True`` the loss is invariant to the scale of each row, also
where squares or products of the raw values would overflow or underflow (fp32/bf16 rows of
1e19+ or 1e-23-, float64 rows of 1e154+), and the gradient scales as it must.

Rows are rescaled by exact powers of two, so the rescaled input holds the same values at another
scale and the loss must not move beyond rounding (in practice it is bit-identical).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scl_loss import supcon_loss
from scl_loss.reference import supcon_loss_loop

PATHS = ("dense", "blocked")
#: Powers of two far beyond where squares (or the products of two rows) leave each dtype's range.
EXPONENTS = {
    torch.float32: [70, 100, 120, -80, -100, -120],
    torch.bfloat16: [70, 100, 120, -80, -100, -120],
    torch.float64: [520, 800, 1000, -520, -800, -1000],
    torch.float16: [10, -10],
}


def _case(dtype: torch.dtype, kind: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape = (7, 2, 5) if kind == "views" else (7, 5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    kwargs: dict = {}
    if kind == "labels":
        kwargs["labels"] = torch.tensor([0, 0, 1, 1, 1, 2, -100])
    elif kind == "mask":
        kwargs["mask"] = torch.rand(7, 7, generator=gen) < 0.5
    return x, kwargs


def _value_and_grad(x: torch.Tensor, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = supcon_loss(x, **kwargs)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", list(EXPONENTS))
@pytest.mark.parametrize("kind", ["labels", "mask", "views"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_loss_is_scale_invariant_at_extreme_magnitudes(path, dtype, kind, reduction):
    base, kwargs = _case(dtype, kind)
    options = {"path": path, "chunk_size": 3, "temperature": 0.1, "reduction": reduction, **kwargs}
    for exponent in EXPONENTS[dtype]:
        scaled = base * 2.0**exponent
        # Tiny entries of a tiny row may round to subnormals: the rescaled version of `scaled`
        # is `scaled · 2**-exponent` (exact), which is `base` up to those entries.
        want, want_grad = _value_and_grad(scaled * 2.0**-exponent, **options)
        assert bool(scaled.isfinite().all())
        assert bool(want.isfinite().all())
        got, got_grad = _value_and_grad(scaled, **options)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=lambda m, e=exponent: f"2**{e}: {m}")
        # x/|x| is scale invariant, so its gradient scales by 2**-exponent. Where that gradient
        # is subnormal in the input dtype (bf16/fp16 rows of 2**120 / 2**10) it is compared to
        # the subnormals' spacing.
        info = torch.finfo(dtype)
        subnormal_spacing = info.smallest_normal * info.eps * 2.0**exponent
        rtol, atol = {torch.float64: (1e-12, 1e-14), torch.float16: (2e-3, 1e-4)}.get(dtype, (1e-5, 1e-6))
        atol = max(atol, 2 * subnormal_spacing)
        torch.testing.assert_close(
            got_grad.double() * 2.0**exponent,
            want_grad.double(),
            rtol=rtol,
            atol=atol,
            msg=lambda m, e=exponent: f"gradient at 2**{e}: {m}",
        )


@pytest.mark.parametrize("path", PATHS)
@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
def test_rows_of_wildly_different_magnitude(path, seed, dtype):
    """Each row its own power of two, spanning the whole range: equal to the float64 loop
    reference on the unscaled rows (the loss only sees directions)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(8, 6, generator=gen, dtype=torch.float64).to(dtype)
    limit = 120 if dtype != torch.float64 else 1000
    exponents = torch.randint(-limit, limit + 1, (8, 1), generator=gen).to(torch.float64)
    scaled = base * torch.pow(2.0, exponents).to(dtype)
    labels = torch.randint(0, 3, (8,), generator=gen)
    got = supcon_loss(scaled, labels, path=path, chunk_size=3, temperature=0.2)
    want = supcon_loss_loop(base.double(), labels, temperature=0.2)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("path", PATHS)
def test_zero_row_beside_huge_rows(path):
    x = torch.randn(6, 4) * 2.0**110
    x[2] = 0.0
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x.requires_grad_(True)
    loss = supcon_loss(x, y, path=path, chunk_size=4)
    loss.backward()
    unscaled = (x.detach() * 2.0**-110).requires_grad_(True)
    want = supcon_loss_loop(unscaled.double(), y)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    assert bool((x.grad[2] == 0).all())
    assert bool(x.grad.isfinite().all())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("exponent", [100, -100])
def test_double_backward_path_is_scale_safe_too(path, exponent):
    """The differentiable recomputation (create_graph=True) rescales as the kernels do."""
    base, kwargs = _case(torch.float32, "labels")
    options = {"path": path, "chunk_size": 3, **kwargs}
    x = (base * 2.0**exponent).requires_grad_(True)
    (g,) = torch.autograd.grad(supcon_loss(x, **options), x, create_graph=True)
    x0 = base.clone().requires_grad_(True)
    supcon_loss(x0, **options).backward()  # the kernel's own backward, unscaled
    torch.testing.assert_close(g.detach() * 2.0**exponent, x0.grad, rtol=1e-5, atol=1e-6)
