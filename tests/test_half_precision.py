"""Exact half precision: fp16/bf16 features enter the similarity products as the input values
themselves (float32 accumulation; on the CPU by upcasting, which computes the same thing), the
normalisation follows as float32 scales, and the gradient products take a hi+lo split of the
float32 block gradient (docs/maths.md, "Half precision").

Contract, on random problems, against float64 on the *same* half values: the loss within 1e-4
relative, and the gradient's error at most twice that of the float64 gradient rounded to the
input dtype (l2 norms over the whole gradient, plus a float32-size floor).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scl_loss.kernels.blocked as blocked_module
import scl_loss.kernels.dense as dense_module
from scl_loss import supcon_loss
from scl_loss.kernels._rows import split_operand
from scl_loss.reference import supcon_loss_loop

HALF = (torch.bfloat16, torch.float16)
PATHS = ("dense", "blocked")


@st.composite
def half_problems(draw):
    n = draw(st.integers(2, 24))
    views = draw(st.sampled_from([1, 1, 2]))
    d = draw(st.sampled_from([2, 8, 32, 96]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (n, views, d) if views > 1 else (n, d)
    scale = draw(st.sampled_from([1.0, 1e-3, 50.0]))  # half values far from 1 too
    features = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    kind = draw(st.sampled_from(["labels", "labels", "mask"]))
    kwargs: dict = {}
    if kind == "labels":
        labels = torch.randint(0, draw(st.integers(1, max(1, n // 2))), (n,), generator=gen)
        if draw(st.booleans()):
            labels[torch.rand(n, generator=gen) < 0.2] = -100
        kwargs["labels"] = labels
    else:
        kwargs["mask"] = torch.rand(n, n, generator=gen) < 0.4
    kwargs["temperature"] = draw(st.sampled_from([0.01, 0.05, 0.1, 0.5, 1.0]))
    kwargs["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    kwargs["normalize"] = draw(st.sampled_from([True, True, False]))
    return features, kwargs, seed


def _loss_and_grad(fn, x: torch.Tensor, weights_seed: int, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, **kwargs)
    gen = torch.Generator().manual_seed(weights_seed)
    weights = torch.rand(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    (out * weights).sum().backward()
    return out.detach().double(), x.grad


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", HALF)
@given(problem=half_problems())
def test_half_precision_contract(path, dtype, problem):
    features, kwargs, seed = problem
    if not kwargs["normalize"]:
        features = torch.nn.functional.normalize(features, dim=-1)  # logits of a sensible size
    x = features.to(dtype)
    got, got_grad = _loss_and_grad(supcon_loss, x, seed, path=path, chunk_size=5, **kwargs)
    want, want_grad = _loss_and_grad(supcon_loss_loop, x.double(), seed, **kwargs)
    assert got_grad.dtype == dtype
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    _assert_gradient_contract(got_grad, want_grad, _term_scale(x, kwargs["temperature"]))


def _term_scale(x: torch.Tensor, temperature: float) -> float:
    """``(1/τ) ‖1/|x_i|‖₂``: the size of the gradient's softmax and positive parts, which cancel
    where the exact gradient is ~0 (e.g. exactly 0 for a pair of rows that is its own only contrast)."""
    norms = x.double().reshape(-1, x.shape[-1]).norm(dim=1)
    return float((1.0 / norms[norms > 0]).norm()) / temperature


def _assert_gradient_contract(got: torch.Tensor, want: torch.Tensor, term_scale: float) -> None:
    """``‖got − want‖ ≤ 2 ‖round(want) − want‖ + 2**-22 · term_scale``: twice the float64
    gradient's own rounding to the input dtype, plus float32's resolution of the cancelling
    terms (the rounding error of a gradient that is 0 up to rounding is 0)."""
    rounding = float((want.to(got.dtype).double() - want).norm())
    error = float((got.double() - want).norm())
    floor = 2.0**-22 * term_scale
    assert error <= 2 * rounding + floor, (
        f"gradient error {error:.3g}; rounding {rounding:.3g}, floor {floor:.3g}"
    )


def test_products_take_the_half_values_themselves(monkeypatch):
    """Every product of the forward and the gradient gets half operands (no rounded normalised
    vectors), and the forward operands are the input rows up to exact powers of two."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    for module in (dense_module, blocked_module):
        for name in ("exact_mm", "exact_addmm_"):
            real = getattr(module, name, None)
            if real is None:
                continue

            def spy(*args, _real=real):
                a, b = args[-2], args[-1]
                calls.append((a, b))
                return _real(*args)

            monkeypatch.setattr(module, name, spy)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(20, 16, generator=gen) * 1e25).to(torch.bfloat16).requires_grad_(True)
    y = torch.randint(0, 3, (20,), generator=gen)
    for path in PATHS:
        calls.clear()
        supcon_loss(x, y, path=path, chunk_size=7).backward()
        assert calls, "no product went through the exact half-precision path"
        assert all(a.dtype == torch.bfloat16 and b.dtype == torch.bfloat16 for a, b in calls)
        operands = calls[0][1].T.float()  # the forward product's right factor: all rows
        ratio = operands / x.detach().float()
        row_ratio = ratio[:, :1]
        assert bool((ratio == row_ratio).all()), "not one factor per row"
        mantissa, _ = torch.frexp(row_ratio)
        assert bool((mantissa == 0.5).all()), "rows rescaled by something other than a power of two"


@pytest.mark.parametrize(("dtype", "bits"), [(torch.bfloat16, 16), (torch.float16, 22)])
def test_hi_lo_split_carries_twice_the_bits(dtype, bits):
    gen = torch.Generator().manual_seed(0)
    g = torch.rand(64, 300, generator=gen) * torch.exp(torch.randn(64, 300, generator=gen) * 3)
    scale = torch.tensor(2.0**-5) if dtype == torch.float16 else None
    hi, lo = split_operand(g.clone(), dtype, scale)
    recovered = hi.float() + lo.float()
    if scale is not None:
        recovered = recovered / scale
    # float16 parts also lose what falls below its subnormals (2**-24 after scaling).
    floor = 2.0**-25 / float(scale) if scale is not None else 0.0
    assert bool(((recovered - g).abs() <= 2.0**-bits * g.abs() + floor).all())
    assert float((hi.float() - (g * (scale if scale is not None else 1))).abs().max()) > 0, (
        "hi alone is exact?"
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", HALF)
def test_clustered_features_where_the_gradient_parts_cancel(path, dtype):
    """Features close to their class centre: the softmax and positive parts of the gradient nearly
    cancel. Both paths form ``π − q`` in float32 before splitting it, so the cancellation costs
    no half-precision bits (computing the two parts apart, the blocked path once gave 10-50x the
    rounding error here with the block gradient rounded to bf16)."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 4, (64,), generator=gen)
        centres = torch.randn(4, 32, generator=gen, dtype=torch.float64) * 3
        x = (centres[y] + 0.01 * torch.randn(64, 32, generator=gen, dtype=torch.float64)).to(dtype)
        got, got_grad = _loss_and_grad(supcon_loss, x, seed, labels=y, path=path, chunk_size=20)
        want, want_grad = _loss_and_grad(supcon_loss, x.double(), seed, labels=y, path="dense")
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        _assert_gradient_contract(got_grad, want_grad, _term_scale(x, 0.1))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_products_match_the_cpu_emulation(path, dtype):
    """torch.mm(..., out_dtype=torch.float32) on the card computes what the CPU's upcast does."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=gen).to(dtype)
    y = torch.randint(0, 8, (300,), generator=gen)
    cpu, cpu_grad = _loss_and_grad(supcon_loss, x, 0, labels=y, path=path, chunk_size=64)

    def on_cuda(features, **kwargs):
        return supcon_loss(features.cuda(), kwargs.pop("labels").cuda(), **kwargs).cpu()

    gpu, gpu_grad = _loss_and_grad(on_cuda, x, 0, labels=y, path=path, chunk_size=64)
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gpu_grad.double(), cpu_grad.double(), rtol=2e-2, atol=1e-3)
