"""``python -m scl_loss``: a self-check on a batch shaped like the paper's fine-tuning step.

Computes SupCon and ``SCLCrossEntropy`` on a RoBERTa-large-shaped batch (16 × 1024 [CLS]
embeddings, 2 classes) and on a larger multi-view batch, compares values and gradients with
the float64 loop reference, and exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from scl_loss import SCLCrossEntropy
from scl_loss.functional import supcon_loss
from scl_loss.reference import supcon_loss_loop


def _compare(name: str, features: torch.Tensor, labels: torch.Tensor, tau: float) -> bool:
    x = features.clone().requires_grad_(True)
    supcon_loss(x, labels, temperature=tau).backward()  # warm-up: first calls pay one-off costs
    x.grad = None
    start = time.perf_counter()
    loss = supcon_loss(x, labels, temperature=tau)
    loss.backward()
    elapsed = time.perf_counter() - start
    x_ref = features.double().clone().requires_grad_(True)
    ref = supcon_loss_loop(x_ref, labels, temperature=tau)
    ref.backward()
    value_err = abs(float(loss.detach()) - float(ref.detach())) / max(abs(float(ref.detach())), 1e-30)
    grad_err = float((x.grad.double() - x_ref.grad).abs().max() / x_ref.grad.abs().max().clamp(min=1e-30))
    ok = value_err <= 1e-5 and grad_err <= 1e-4
    print(
        f"{name:<38} loss {float(loss.detach()):.6f}  reference {float(ref.detach()):.6f}  "
        f"rel.err {value_err:.1e}  grad rel.err {grad_err:.1e}  fwd+bwd {elapsed * 1e3:.1f} ms  "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scl_loss", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"scl_loss self-check: torch {torch.__version__}, float32 kernel vs float64 loop reference")
    cls = torch.randn(16, 1024, generator=gen)  # [CLS] states of a batch of 16, hidden size 1024
    labels = torch.randint(0, 2, (16,), generator=gen)
    ok = _compare("paper batch 16×1024, τ=0.3", cls, labels, 0.3)
    views = torch.randn(24, 2, 128, generator=gen)
    ok &= _compare("two views 24×2×128, 6 classes, τ=0.07", views, torch.arange(24) % 6, 0.07)
    singletons = torch.arange(16)
    singletons[:4] = 0
    ok &= _compare("mostly singleton classes, τ=0.1", cls, singletons, 0.1)

    logits = torch.randn(16, 2, generator=gen)
    parts = SCLCrossEntropy(0.9, 0.3, return_components=True)(logits, cls, labels)
    print(
        f"SCLCrossEntropy(0.9, 0.3): loss {float(parts.loss):.6f} = 0.1·CE {float(parts.ce):.6f}"
        f" + 0.9·SCL {float(parts.scl):.6f}"
    )
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
