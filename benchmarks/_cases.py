"""One benchmark case: its inputs, the timed forward+backward step, and the size presets."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}

#: CPU defaults: the README's main job, a few minutes on 2 cores. D = 768 is BERT-base's width.
CPU_SIZES = {"d": 768, "grid": {"float32": (16, 256, 2048, 8192)}}
#: GPU sizes of the issue's targets (H100/H200) at D = 1024: the paper's N = 16, bf16 up to
#: N = 262,144 (must fit in 8 GiB), fp32 up to N = 32,768 (compared with the matmul floor).
GPU_SIZES = {"d": 1024, "grid": {"bfloat16": (16, 1024, 8192, 32768, 262144), "float32": (16, 8192, 32768)}}


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    dtype: str
    device: str
    classes: int = 10
    temperature: float = 0.1
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def id(self) -> str:
        return f"{self.dtype}-N{self.n}-D{self.d}"


def make_inputs(case: Case) -> tuple[Tensor, Tensor]:
    """Gaussian features (a leaf with ``requires_grad``) and uniform labels over ``case.classes``."""
    gen = torch.Generator().manual_seed(case.seed)
    features = torch.randn(case.n, case.d, generator=gen).to(device=case.device, dtype=DTYPES[case.dtype])
    labels = torch.randint(0, case.classes, (case.n,), generator=gen).to(case.device)
    return features.requires_grad_(), labels


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd_step(
    fn: Callable[..., Tensor], features: Tensor, labels: Tensor, case: Case
) -> Callable[[], None]:
    """The timed unit: one forward and one backward, finished on the device before it returns."""

    def step() -> None:
        features.grad = None
        loss = fn(features, labels, temperature=case.temperature)
        loss.backward()
        synchronize(case.device)

    return step


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError when malloc fails."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, (RuntimeError, MemoryError)) and (
        "out of memory" in message or "can't allocate memory" in message or isinstance(error, MemoryError)
    )


def environment(device: str) -> dict[str, object]:
    """Device, torch version and threads: recorded with every result (``extra_info``)."""
    dev = torch.device(device)
    info: dict[str, object] = {"torch_version": torch.__version__, "device_type": dev.type}
    if dev.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(dev)
        info["cuda_version"] = torch.version.cuda
        info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    else:
        info["device_name"] = cpu_model()
        info["threads"] = torch.get_num_threads()
        # Other processes on the same cores distort CPU timings: keep the evidence with them.
        info["loadavg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
