"""The modules are thin wrappers: same numbers as the functions, state in the right places."""

from __future__ import annotations

import torch

from scl_loss import SupConLoss
from scl_loss.functional import supcon_loss


def test_supcon_module_is_the_function():
    x = torch.randn(10, 2, 6)
    labels = torch.randint(0, 3, (10,))
    labels[0] = -1
    mask = torch.rand(10, 10) < 0.4
    criterion = SupConLoss(0.2, normalize=False, reduction="none", ignore_index=-1)
    assert torch.equal(
        criterion(x, labels),
        supcon_loss(x, labels, temperature=0.2, normalize=False, reduction="none", ignore_index=-1),
    )
    assert torch.equal(
        criterion(x, mask=mask), supcon_loss(x, mask=mask, temperature=0.2, normalize=False, reduction="none")
    )
    assert torch.equal(SupConLoss()(x), supcon_loss(x))  # SimCLR: views are the positives
    assert "temperature=0.2" in repr(criterion)
    assert list(criterion.parameters()) == []
