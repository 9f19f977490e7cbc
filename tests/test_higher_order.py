"""Double backward and torch.func on both kernel paths, against the float64 loop reference.

The kernels' fast backward is hand-written; with grad mode on during backward
(``create_graph=True``, ``torch.autograd.functional.hessian``, every ``torch.func`` transform)
it returns the gradient recomputed by differentiable torch ops instead, and forward-mode AD has
a ``jvp``. ``torch.func.vmap`` over the loss raises a clear error (docs/maths.md, "Transforms").
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

from scl_loss import SCLCrossEntropy, SupConLoss, scl_cross_entropy, supcon_loss
from scl_loss.reference import supcon_loss_loop

PATHS = ("dense", "blocked")
TOL = {"rtol": 1e-9, "atol": 1e-11}


@st.composite
def small_problems(draw):
    """Small enough for Hessians of the loop reference; every case the kernels special-case."""
    n = draw(st.integers(1, 6))
    views = draw(st.sampled_from([None, 2]))
    d = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (n, d) if views is None else (n, views, d)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    kind = draw(st.sampled_from(["labels", "mask"] + (["views"] if views else [])))
    kwargs: dict = {
        "temperature": draw(st.sampled_from([0.1, 0.5, 2.0])),
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
        "normalize": draw(st.booleans()),
    }
    labels = None
    if kind == "labels":
        labels = torch.randint(0, max(1, n // 2), (n,), generator=gen)
        if draw(st.booleans()):
            labels[torch.rand(n, generator=gen) < 0.3] = -100
    elif kind == "mask":
        kwargs["mask"] = torch.rand(n, n, generator=gen) < 0.5
    chunk = draw(st.sampled_from([1, 2, 5]))
    return x, labels, kwargs, chunk, seed


def _scalar(fn, labels, kwargs, weights):
    def f(x):
        out = fn(x, labels, **kwargs)
        return (out * weights).sum()

    return f


@pytest.mark.parametrize("path", PATHS)
@given(problem=small_problems())
def test_hessian_vector_product_matches_loop_reference(path, problem):
    x, labels, kwargs, chunk, seed = problem
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(
        x.shape[:-1] if kwargs["reduction"] == "none" else (), generator=gen, dtype=torch.float64
    )
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def hvp(fn, **extra):
        f = _scalar(fn, labels, {**kwargs, **extra}, weights)
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xx), xx, create_graph=True)
        if not g.requires_grad:  # a gradient that is constant (0): no anchor with a positive
            return g.detach(), torch.zeros_like(x)
        (h,) = torch.autograd.grad((g * v).sum(), xx, allow_unused=True, materialize_grads=True)
        return g.detach(), h

    g, h = hvp(supcon_loss, path=path, chunk_size=chunk)
    g_ref, h_ref = hvp(supcon_loss_loop)
    torch.testing.assert_close(g, g_ref, **TOL)
    torch.testing.assert_close(h, h_ref, **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"labels": torch.tensor([0, 0, 1, -100, 1])},
        {
            "mask": torch.tensor(
                [[1, 0, 1, 0, 1], [0, 1, 1, 0, 0], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0], [1, 0, 0, 1, 0]]
            ).bool()
        },
        {"labels": torch.tensor([0, 0, 1, 1, 1]), "normalize": False},
        {"labels": None},  # views only (SimCLR)
    ],
    ids=["labels-ignore", "mask", "unnormalized", "views"],
)
def test_full_hessian_matches_loop_reference(path, kwargs):
    x = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(kwargs)
    labels = kwargs.pop("labels", None)

    def ours(t):
        return supcon_loss(t, labels, path=path, chunk_size=3, temperature=0.5, **kwargs)

    def loop(t):
        return supcon_loss_loop(t, labels, temperature=0.5, **kwargs)

    want = torch.autograd.functional.hessian(loop, x)
    torch.testing.assert_close(torch.autograd.functional.hessian(ours, x), want, **TOL)
    torch.testing.assert_close(hessian(ours)(x), want, **TOL)


def test_default_path_at_300_rows_has_the_dense_hessian():
    """Issue 11's case: on the CPU ``path="auto"`` is blocked from N·V > 256."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 20, (300,), generator=gen)
    v = torch.randn(300, 4, dtype=torch.float64, generator=gen)

    def hvp(**kwargs):
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(supcon_loss(xx, y, **kwargs), xx, create_graph=True)
        return torch.autograd.grad((g * v).sum(), xx)[0]

    torch.testing.assert_close(hvp(), hvp(path="dense"), **TOL)


# --- torch.func ---------------------------------------------------------------------------------


def _problem():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 3, dtype=torch.float64, generator=gen)
    y = torch.tensor([0, 0, 1, 2, 1, -100])
    v = torch.randn(6, 2, 3, dtype=torch.float64, generator=gen)
    return x, y, v


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_func_grad_jacrev_jvp_hessian_scalar(path, reduction):
    x, y, v = _problem()

    def ours(t):
        return supcon_loss(t, y, path=path, chunk_size=4, reduction=reduction)

    def loop(t):
        return supcon_loss_loop(t, y, reduction=reduction)

    xx = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(loop(xx), xx)
    torch.testing.assert_close(grad(ours)(x), want, **TOL)
    torch.testing.assert_close(jacrev(ours)(x), want, **TOL)
    value, tangent = jvp(ours, (x,), (v,))
    torch.testing.assert_close(value, loop(x), **TOL)
    torch.testing.assert_close(tangent, (want * v).sum(), **TOL)
    torch.testing.assert_close(hessian(ours)(x), torch.autograd.functional.hessian(loop, x), **TOL)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, v)
        out = torch.autograd.forward_ad.unpack_dual(ours(dual))
    torch.testing.assert_close(out.tangent, (want * v).sum(), **TOL)


@pytest.mark.parametrize("path", PATHS)
def test_func_jacobians_of_per_anchor_losses(path):
    x, y, v = _problem()

    def ours(t):
        return supcon_loss(t, y, path=path, chunk_size=4, reduction="none")

    want = torch.autograd.functional.jacobian(lambda t: supcon_loss_loop(t, y, reduction="none"), x)
    torch.testing.assert_close(jacrev(ours)(x), want, **TOL)
    torch.testing.assert_close(jacfwd(ours)(x), want, **TOL)
    torch.testing.assert_close(jvp(ours, (x,), (v,))[1], (want * v).sum(dim=(-3, -2, -1)), **TOL)


@pytest.mark.parametrize("path", PATHS)
def test_func_grad_through_the_modules_and_scl_cross_entropy(path):
    x, y, _ = _problem()
    y = torch.tensor([0, 0, 1, 2, 1, 2])
    logits = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    criterion = SCLCrossEntropy(0.5, 0.3, path=path, chunk_size=4)

    def ce_scl(lg, t):
        return criterion(lg, t, y)

    got = grad(ce_scl, argnums=(0, 1))(logits, x)
    lg, xx = logits.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref = 0.5 * torch.nn.functional.cross_entropy(lg, y) + 0.5 * supcon_loss_loop(xx, y, temperature=0.3)
    want = torch.autograd.grad(ref, (lg, xx))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    module_grad = grad(lambda t: SupConLoss(0.3, path=path, chunk_size=4)(t, y))(x)
    functional_grad = grad(
        lambda t: scl_cross_entropy(logits, t, y, lambda_=1.0, tau=0.3, path=path, chunk_size=4)
    )(x)
    torch.testing.assert_close(module_grad, functional_grad, **TOL)


@pytest.mark.parametrize("path", PATHS)
def test_vmap_over_the_loss_raises_a_clear_error(path):
    x = torch.randn(3, 6, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(NotImplementedError, match=r"does not support torch\.func\.vmap"):
        vmap(lambda t: supcon_loss(t, y, path=path))(x)


@pytest.mark.parametrize("path", PATHS)
def test_first_order_backward_is_unchanged_by_the_double_backward_path(path):
    """The recomputation serves create_graph only: plain backward keeps the fast gradient, and both agree."""
    x, y, _ = _problem()
    a = x.clone().requires_grad_(True)
    supcon_loss(a, y, path=path, chunk_size=4).backward()
    b = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(supcon_loss(b, y, path=path, chunk_size=4), b, create_graph=True)
    assert g.requires_grad
    torch.testing.assert_close(g.detach(), a.grad, **TOL)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointed_loss_has_the_same_gradient(path, use_reentrant):
    x, y, _ = _problem()
    layer = torch.nn.Linear(3, 3, dtype=torch.float64)

    def loss_of(inputs):
        return supcon_loss(layer(inputs), y, path=path, chunk_size=4)

    loss_of(x).backward()
    want = layer.weight.grad.clone()
    layer.zero_grad()
    torch.utils.checkpoint.checkpoint(
        loss_of, x.clone().requires_grad_(True), use_reentrant=use_reentrant
    ).backward()
    torch.testing.assert_close(layer.weight.grad, want, **TOL)
