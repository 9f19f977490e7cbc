"""Run a function on W CPU processes joined in a gloo process group (for the distributed tests).

``run_on_ranks(fn, world_size, workdir, *args)`` spawns ``world_size`` processes, each calls
``fn(rank, world_size, workdir, *args)`` inside an initialised gloo group. Rendezvous is a
``file://`` in ``workdir`` (no port to find, no clash between concurrent test runs). A short
collective timeout turns a desynchronised test into a failure instead of a hang, and
``mp.spawn`` kills the remaining ranks when one raises.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)


def _entry(rank: int, fn: Callable[..., None], world_size: int, workdir: str, args: tuple) -> None:
    torch.set_num_threads(1)  # W ranks share CI's 2 cores
    init_file = Path(workdir) / "rendezvous"
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    try:
        fn(rank, world_size, workdir, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[..., None], world_size: int, workdir: Path, *args: object) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    # Children must import this repository's scl_loss and tests, whatever the parent's cwd.
    repo_root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))
    mp.spawn(_entry, args=(fn, world_size, str(workdir), args), nprocs=world_size, join=True)
