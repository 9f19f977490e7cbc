"""scl_loss: supervised contrastive fine-tuning loss (Gunel et al. 2020) for PyTorch.

>>> from scl_loss import SCLCrossEntropy
>>> criterion = SCLCrossEntropy(0.9, 0.3)   # (1 − λ)·CE + λ·SCL with λ = 0.9, τ = 0.3
"""

from scl_loss import functional, reference
from scl_loss.cached import cached_backward
from scl_loss.functional import SCLComponents, scl_cross_entropy, supcon_loss
from scl_loss.losses import SCLCrossEntropy, SupConLoss
from scl_loss.memory import MemoryQueue

__all__ = [
    "MemoryQueue",
    "SCLComponents",
    "SCLCrossEntropy",
    "SupConLoss",
    "cached_backward",
    "functional",
    "reference",
    "scl_cross_entropy",
    "supcon_loss",
]

__version__ = "0.1.0"
