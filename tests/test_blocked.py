"""The blocked path: exactness against the float64 loop reference, sliced problems against the
dense kernel, gradcheck of the hand-written backward, the memory bound, and the path choice."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from scl_loss import SCLCrossEntropy, SupConLoss, scl_cross_entropy, supcon_loss
from scl_loss._problem import ContrastProblem, build_problem
from scl_loss.kernels import (
    CPU_DENSE_MAX_ELEMENTS,
    DENSE_MAX_ELEMENTS,
    choose_path,
    default_chunk_size,
    resolve_path,
)
from scl_loss.kernels.blocked import CHUNK_BUDGET_BYTES, blocked_supcon
from scl_loss.kernels.dense import dense_supcon
from scl_loss.reference import supcon_loss_loop

REDUCTIONS = ("mean", "sum", "none")


def assert_close_rel(
    actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str, term_scale: float = 1.0
) -> None:
    """Elementwise ``|a − e| ≤ rel · max(1, max|e|, term_scale)``: relative to the tensor's scale,
    or to the size of the terms that cancel into it (see :func:`assert_grad_close`)."""
    expected = expected.to(actual.dtype)
    scale = max(1.0, float(expected.abs().max()) if expected.numel() else 0.0, term_scale)
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=rel * scale, msg=lambda m: f"{what}: {m}")


def assert_grad_close(
    actual: torch.Tensor, expected: torch.Tensor, rel: float, term_scale: float = 1.0
) -> None:
    """Gradients: ours finite everywhere, compared where the loop reference is finite. At a
    zero vector the reference's ``sqrt`` normalisation has a NaN gradient; the library's
    normalisation gives such a row exactly zero gradient, which is asserted instead.

    ``term_scale``: the size of the terms that cancel into the gradient. The blocked path
    adds the softmax part and the positive part of ``∂L/∂z`` (each of size ``~1/τ``, times
    ``1/|x|`` through the normalisation) separately, so where they cancel (e.g. a pair that
    is its own only contrast) float32 leaves ``eps·term_scale``, not 0.
    """
    assert bool(actual.isfinite().all()), "non-finite gradient"
    finite = expected.isfinite()
    assert bool((actual[~finite] == 0).all()), "a zero row must get zero gradient"
    scale = max(1.0, float(expected[finite].abs().max()) if finite.any() else 0.0, term_scale)
    torch.testing.assert_close(
        actual[finite],
        expected[finite].to(actual.dtype),
        rtol=0.0,
        atol=rel * scale,
        msg=lambda m: f"gradient: {m}",
    )


def value_and_grad(fn, features: torch.Tensor, grad_output_seed: int, **kwargs):
    """The loss and d(Σ g ⊙ loss)/d features, with a random ``g`` for ``reduction="none"``."""
    x = features.detach().clone().requires_grad_(True)
    out = fn(x, **kwargs)
    # Drawn in float64 whatever the output dtype, so float32 and float64 runs get the same g.
    gen = torch.Generator().manual_seed(grad_output_seed)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    (out * g).sum().backward()
    return out.detach(), x.grad


@st.composite
def supcon_cases(draw):
    """Features, labels or mask, and options covering the cases the blocked path special-cases."""
    n = draw(st.integers(1, 12))
    views = draw(st.sampled_from([1, 1, 2, 3]))
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (n, views, dim) if views > 1 else (n, dim)
    features = torch.randn(shape, generator=gen, dtype=torch.float64)
    if draw(st.booleans()):  # a zero vector: normalisation must keep its gradient finite
        features[0] = 0.0
    kind = draw(st.sampled_from(["labels", "labels", "mask", "simclr"] if views > 1 else ["labels", "mask"]))
    labels = mask = None
    if kind == "labels":
        num_classes = draw(st.integers(1, n + 1))  # 1: a single class; n+1: mostly singletons
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        if draw(st.booleans()):
            labels[torch.rand(n, generator=gen) < 0.3] = -100
    elif kind == "mask":
        mask = torch.rand(n, n, generator=gen) < draw(st.floats(0.0, 1.0))  # asymmetric
    temperature = draw(st.sampled_from([0.01, 0.07, 0.3, 1.0, 10.0]))
    chunk = draw(st.sampled_from([1, 2, 3, 7, n * views + 5, None]))
    reduction = draw(st.sampled_from(REDUCTIONS))
    return features, labels, mask, temperature, chunk, reduction, seed


@given(case=supcon_cases())
def test_blocked_matches_loop_reference_float64(case):
    features, labels, mask, temperature, chunk, reduction, seed = case
    common = {"labels": labels, "mask": mask, "temperature": temperature, "reduction": reduction}
    got, got_grad = value_and_grad(supcon_loss, features, seed, path="blocked", chunk_size=chunk, **common)
    want, want_grad = value_and_grad(supcon_loss_loop, features, seed, **common)
    assert got.dtype == torch.float64
    assert_close_rel(got, want, 1e-10, "loss")
    assert_grad_close(got_grad, want_grad, 1e-10)


@given(case=supcon_cases())
def test_blocked_matches_loop_reference_float32(case):
    features, labels, mask, temperature, chunk, reduction, seed = case
    # With D = 1 every gradient is exactly 0 (x/|x| is locally constant), reached by a
    # cancellation of terms of size |∂L/∂z|/|x|: float32 cannot resolve that to 1e-5 of 1.
    assume(features.shape[-1] >= 2)
    features = features.float()
    common = {"labels": labels, "mask": mask, "temperature": temperature, "reduction": reduction}
    got, got_grad = value_and_grad(supcon_loss, features, seed, path="blocked", chunk_size=chunk, **common)
    want, want_grad = value_and_grad(supcon_loss_loop, features.double(), seed, **common)
    assert got.dtype == torch.float32
    # Any float32 logit carries an absolute error ~eps·|ℓ| ≤ eps/τ (τ = 0.01: logits near 100),
    # and a per-anchor loss is a difference of such terms (exactly 0 for a pair of rows): the
    # loss is compared relative to 1/τ per summed anchor.
    anchors = features.shape[0] * (features.shape[1] if features.dim() == 3 else 1)
    logit_scale = (anchors if reduction == "sum" else 1) / temperature
    assert_close_rel(got, want, 1e-5, "loss", term_scale=logit_scale)
    norms = features.reshape(-1, features.shape[-1]).norm(dim=1)
    smallest = float(norms[norms > 0].min()) if bool((norms > 0).any()) else 1.0
    assert_grad_close(got_grad, want_grad.float(), 1e-5, term_scale=1.0 / (temperature * smallest))


# --- problems the public API never builds: anchors a slice of the contrasts ------------------


def sliced_problem(
    z: torch.Tensor, start: int, count: int, kind: str, views: int, seed: int
) -> ContrastProblem:
    gen = torch.Generator().manual_seed(seed)
    m = z.shape[0]
    valid = torch.rand(m, generator=gen) > 0.2
    groups = pos_mask = None
    if kind == "groups":
        groups = torch.randint(0, 4, (m,), generator=gen)
    else:  # untiled [A/V, M/V] example mask, expanded per block by mask_rows
        pos_mask = torch.rand(count // views, m // views, generator=gen) < 0.4
    return ContrastProblem(
        contrasts=z,
        anchor_start=start,
        num_anchors=count,
        groups=groups,
        pos_mask=pos_mask,
        valid=valid,
        temperature=0.2,
        mask_views=views if kind == "mask" else 1,
    )


@pytest.mark.parametrize("kind", ["groups", "mask"])
@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_anchor_slice_matches_dense_kernel(kind, views, reduction, chunk):
    m, start, count = 24, 6, 12  # anchors are rows 6..17 of 24 contrasts
    z0 = torch.randn(m, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    g = torch.randn(count, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    results = []
    for run in ("blocked", "dense"):
        z = z0.clone().requires_grad_(True)
        p = sliced_problem(z, start, count, kind, views, seed=3)
        if run == "blocked":
            out, npos = blocked_supcon(p, reduction, chunk)
        else:
            out, npos = dense_supcon(p, reduction)
        ((out * g).sum() if reduction == "none" else out).backward()
        results.append((out.detach(), npos, z.grad))
    (out_b, npos_b, grad_b), (out_d, npos_d, grad_d) = results
    assert bool((npos_d > 0).any()), "the case should have positives"
    torch.testing.assert_close(npos_b, npos_d)
    assert_close_rel(out_b, out_d, 1e-12, "loss")
    assert_close_rel(grad_b, grad_d, 1e-12, "gradient")
    # Contrast-only rows (outside the anchor slice) receive gradient through the column term.
    assert float(grad_b[:start].abs().sum()) > 0


@given(
    views=st.sampled_from([1, 2, 3]),
    examples=st.integers(1, 8),
    data=st.data(),
    kind=st.sampled_from(["groups", "mask"]),
    reduction=st.sampled_from(REDUCTIONS),
    chunk=st.sampled_from([1, 2, 5, 100, None]),
    seed=st.integers(0, 2**31 - 1),
)
def test_drawn_anchor_slices_match_dense_kernel(views, examples, data, kind, reduction, chunk, seed):
    """Anchors any whole-example slice of the contrasts (the layout gathering and queues build)."""
    m = examples * views
    first = data.draw(st.integers(0, examples - 1), label="first anchor example")
    count = data.draw(st.integers(1, examples - first), label="anchor examples") * views
    start = first * views
    z0 = torch.randn(m, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    g = torch.randn(count, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    results = []
    for run in ("blocked", "dense"):
        z = z0.clone().requires_grad_(True)
        p = sliced_problem(z, start, count, kind, views, seed=seed)
        if run == "blocked":
            out, npos = blocked_supcon(p, reduction, chunk)
        else:
            out, npos = dense_supcon(p, reduction)
        ((out * g).sum() if reduction == "none" else out).backward()
        results.append((out.detach(), npos, z.grad))
    (out_b, npos_b, grad_b), (out_d, npos_d, grad_d) = results
    torch.testing.assert_close(npos_b, npos_d)
    assert_close_rel(out_b, out_d, 1e-12, "loss")
    assert_grad_close(grad_b, grad_d, 1e-12)


@pytest.mark.parametrize("kind", ["groups", "mask"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_blocked_function(kind, reduction):
    z = torch.randn(10, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z.requires_grad_(True)

    def f(z):
        return blocked_supcon(
            sliced_problem(z, 2, 6, kind, 2 if kind == "mask" else 1, seed=5), reduction, 4
        )[0]

    assert torch.autograd.gradcheck(f, (z,))


# --- edge cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_positive_anywhere_is_graph_connected_zero(reduction):
    x = torch.randn(6, 4, requires_grad=True)
    loss = supcon_loss(x, torch.arange(6), reduction=reduction, path="blocked", chunk_size=4)
    assert bool((loss == 0).all())
    loss.sum().backward()
    assert x.grad is not None
    assert bool((x.grad == 0).all())


@pytest.mark.parametrize("labels", [[-100] * 5, [0, -100, -100, -100, -100], [0, 0, -100, -100, -100]])
def test_ignored_rows_and_lone_anchor_stay_finite(labels):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels)
    got = supcon_loss(x, y, path="blocked", chunk_size=2)
    want = supcon_loss_loop(x, y)
    got.backward()
    assert bool(x.grad.isfinite().all())
    assert_close_rel(got.detach(), want.detach(), 1e-12, "loss")


def test_no_gradient_buffer_without_grad():
    x = torch.randn(20, 8)
    y = torch.randint(0, 3, (20,))
    with torch.no_grad():
        a = supcon_loss(x.requires_grad_(True), y, path="blocked", chunk_size=6)
    b = supcon_loss(x.detach(), y, path="blocked", chunk_size=6)
    assert a.grad_fn is None
    assert b.grad_fn is None
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, supcon_loss(x.detach(), y, path="dense"))


# --- memory: no N×N tensor on the blocked path ---------------------------------------------------


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def largest_tensor(fn) -> int:
    with LargestTensor() as rec:
        fn()
    return rec.largest


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["labels", "mask"])
def test_blocked_path_allocates_no_square_tensor(reduction, kind):
    n, views, dim, chunk = 200, 2, 8, 16
    m = n * views
    x = torch.randn(n, views, dim, requires_grad=True)
    y = torch.randint(0, 10, (n,))
    y[:5] = -100
    # A bool user mask is the user's own [N, N] input; only its (N·V)² tiling is forbidden.
    mask = torch.rand(n, n) < 0.1
    extra = {"labels": y} if kind == "labels" else {"mask": mask}

    def run(path: str) -> None:
        loss = supcon_loss(x, reduction=reduction, path=path, chunk_size=chunk, **extra)
        loss.sum().backward()

    dense_largest = largest_tensor(lambda: run("dense"))
    assert dense_largest >= m * m, "the recorder must see the dense path's [M, M] matrices"
    blocked_largest = largest_tensor(lambda: run("blocked"))
    allowed = max(chunk * m, m * dim, n * n if kind == "mask" else 0)
    assert blocked_largest <= allowed, f"blocked path made a tensor of {blocked_largest} elements"


# --- path choice and arguments -------------------------------------------------------------------


def test_auto_rule():
    assert choose_path(16, 16) == "dense"  # the paper's batch
    assert choose_path(2048, 2048) == "dense"
    assert DENSE_MAX_ELEMENTS < 2049 * 2048
    assert choose_path(2049, 2048) == "blocked"
    assert choose_path(32768, 32768) == "blocked"
    assert choose_path(256, 256, on_cpu=True) == "dense"
    assert choose_path(257, 256, on_cpu=True) == "blocked"
    assert CPU_DENSE_MAX_ELEMENTS == 256 * 256
    small = build_problem(
        torch.randn(16, 4),
        torch.zeros(16, dtype=torch.long),
        None,
        temperature=0.1,
        normalize=True,
        ignore_index=-100,
    )
    assert resolve_path(small, "auto") == "dense"
    assert resolve_path(small, "blocked") == "blocked"
    large = ContrastProblem(
        torch.zeros(4096, 1),
        0,
        4096,
        torch.zeros(4096, dtype=torch.long),
        None,
        torch.ones(4096, dtype=torch.bool),
        0.1,
    )
    assert resolve_path(large, "auto") == "blocked"


def test_auto_dispatch_calls_the_chosen_kernel(monkeypatch):
    import scl_loss.kernels as kernels

    calls = []
    monkeypatch.setattr(
        kernels, "blocked_supcon", lambda *a, **k: calls.append("blocked") or (torch.zeros(()), None)
    )
    monkeypatch.setattr(
        kernels, "choose_path", lambda a, m, on_cpu=False: "blocked" if a * m > 100 else "dense"
    )
    supcon_loss(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    assert calls == []
    supcon_loss(torch.randn(11, 4), torch.randint(0, 2, (11,)))
    assert calls == ["blocked"]


def test_default_chunk_size():
    assert default_chunk_size(32768, 32768) == 2048
    assert default_chunk_size(10, 10) == 10
    assert default_chunk_size(10**6, 10**8) == 1  # the budget cannot hold a row: one at a time
    c = default_chunk_size(10**6, 3 * 10**5)
    assert c % 8 == 0
    assert c * 3 * 10**5 * 4 <= CHUNK_BUDGET_BYTES


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"path": "fast"}, ValueError, "path"),
        ({"path": None}, ValueError, "path"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": -3}, ValueError, "chunk_size"),
        ({"chunk_size": 2.0}, TypeError, "chunk_size"),
        ({"chunk_size": True}, TypeError, "chunk_size"),
    ],
)
def test_bad_path_or_chunk_size(kwargs, error, match):
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(error, match=match):
        supcon_loss(x, y, **kwargs)
    with pytest.raises(error, match=match):
        SupConLoss(**kwargs)
    with pytest.raises(error, match=match):
        scl_cross_entropy(torch.randn(4, 2), x, y, lambda_=0.5, tau=0.3, **kwargs)
    with pytest.raises(error, match=match):
        SCLCrossEntropy(0.5, 0.3, **kwargs)


def test_modules_pass_path_and_chunk_size_through(monkeypatch):
    import scl_loss.kernels as kernels

    seen = []
    real = kernels.blocked_supcon
    monkeypatch.setattr(kernels, "blocked_supcon", lambda p, r, c=None: seen.append(c) or real(p, r, c))
    x = torch.randn(9, 2, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 2, 2, 0, 3, -100])
    logits = torch.randn(9, 4, dtype=torch.float64)
    want_supcon = SupConLoss(0.2, path="dense")(x, y)
    torch.testing.assert_close(SupConLoss(0.2, path="blocked", chunk_size=5)(x, y), want_supcon)
    want = SCLCrossEntropy(0.7, 0.2, path="dense")(logits, x, y)
    torch.testing.assert_close(SCLCrossEntropy(0.7, 0.2, path="blocked", chunk_size=4)(logits, x, y), want)
    assert seen == [5, 4]


# --- CUDA (skipped without a device) ------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_blocked_on_cuda_matches_loop_reference(reduction, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(48, 2, 64, generator=gen, dtype=torch.float64), dim=-1)
    x = x.to(dtype).double()  # the rounded inputs: what is left is the kernel's own error
    y = torch.randint(0, 6, (48,), generator=gen)
    y[:3] = -100
    want, want_grad = value_and_grad(supcon_loss_loop, x, 0, labels=y, temperature=0.1, reduction=reduction)

    def on_cuda(features, **kwargs):
        out = supcon_loss(
            features.to("cuda", dtype), y.cuda(), temperature=0.1, reduction=reduction, **kwargs
        )
        return out.cpu()

    got, got_grad = value_and_grad(on_cuda, x, 0, path="blocked", chunk_size=40)
    assert got.dtype == torch.float32
    assert_close_rel(got.double(), want, 1e-5, "loss", term_scale=10.0 * (96 if reduction == "sum" else 1))
    # The gradient comes back in the input dtype: its rounding bounds the agreement.
    grad_rel = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    assert_grad_close(got_grad, want_grad, grad_rel, term_scale=10.0)
