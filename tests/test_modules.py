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


def test_reprs_show_every_option_that_is_not_the_default():
    from scl_loss import MemoryQueue, SCLCrossEntropy

    assert repr(SupConLoss()) == "SupConLoss(temperature=0.1)"
    assert repr(SCLCrossEntropy(0.9, 0.3)) == "SCLCrossEntropy(lambda_=0.9, tau=0.3)"
    supcon = SupConLoss(
        0.2,
        normalize=False,
        reduction="sum",
        ignore_index=-1,
        path="blocked",
        chunk_size=64,
        gather_distributed=True,
        queue=MemoryQueue(8, 4),
    )
    text = repr(supcon)
    for option in (
        "temperature=0.2",
        "normalize=False",
        "reduction='sum'",
        "ignore_index=-1",
        "path='blocked'",
        "chunk_size=64",
        "gather_distributed=True",
        "(queue): MemoryQueue(capacity=8, dim=4, dtype=torch.float32, filled=0)",
    ):
        assert option in text, (option, text)
    scl = SCLCrossEntropy(
        0.5,
        0.1,
        scl_reduction="sum",
        ignore_index=7,
        label_smoothing=0.1,
        weight=torch.tensor([1.0, 2.0]),
        return_components=True,
        path="dense",
        chunk_size=3,
    )
    text = repr(scl)
    for option in (
        "lambda_=0.5",
        "tau=0.1",
        "scl_reduction='sum'",
        "ignore_index=7",
        "label_smoothing=0.1",
        "weight=tensor([1., 2.])",
        "return_components=True",
        "path='dense'",
        "chunk_size=3",
    ):
        assert option in text, (option, text)
    long_weight = repr(SCLCrossEntropy(0.5, 0.1, weight=torch.ones(100)))
    assert "weight=tensor(shape=(100,), dtype=torch.float32)" in long_weight
