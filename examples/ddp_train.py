"""Fine-tune with (1 − λ)·CE + λ·SCL under DistributedDataParallel, contrasting across all ranks.

    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py            # 2 processes
    torchrun --standalone --nproc-per-node 2 examples/ddp_train.py --queue 256
    python examples/ddp_train.py                                              # 1 process

Runs on CPU (gloo) or one GPU per process (nccl). The data is synthetic (Gaussian classes),
so the script needs nothing but torch and scl_loss.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from scl_loss import MemoryQueue, SCLCrossEntropy


class Classifier(nn.Module):
    """An encoder whose output Φ feeds both the SCL term and a linear classifier."""

    def __init__(self, in_dim: int, dim: int, classes: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return self.head(features), features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--queue", type=int, default=0, help="MemoryQueue capacity (0: no queue)")
    args = parser.parse_args()

    distributed = "RANK" in os.environ  # set by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if distributed else 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    # Synthetic data, identical on every rank (same seed); the sampler gives each rank its share.
    torch.manual_seed(0)
    classes, in_dim, dim = 4, 20, 32
    centers = torch.randn(classes, in_dim) * 2
    labels = torch.randint(0, classes, (1024,))
    inputs = centers[labels] + torch.randn(1024, in_dim) * 3
    dataset = TensorDataset(inputs, labels)
    sampler = DistributedSampler(dataset, shuffle=True) if distributed else None
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None)

    model = Classifier(in_dim, dim, classes).to(device)  # same seed: same initial weights everywhere
    if distributed:
        model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    # gather_distributed=True: each rank's anchors see the whole global batch (W × batch size),
    # with exact gradients; without torchrun it is the ordinary single-process loss.
    queue = MemoryQueue(args.queue, dim, device=device) if args.queue else None
    criterion = SCLCrossEntropy(lambda_=0.9, tau=0.3, gather_distributed=True, queue=queue)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        total, steps = 0.0, 0
        for x, y in loader:
            logits, features = model(x.to(device))
            loss = criterion(logits, features, y.to(device))  # the global-batch loss on every rank
            optimizer.zero_grad()
            loss.backward()  # DDP averages; the loss is scaled so the average is exact
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        if rank == 0:
            print(f"epoch {epoch}: mean loss {total / steps:.4f}", flush=True)

    model.eval()
    with torch.no_grad():
        logits, _ = model(inputs.to(device))
        accuracy = (logits.argmax(1).cpu() == labels).float().mean().item()
    if rank == 0:
        print(f"train accuracy {accuracy:.3f}", flush=True)
    if distributed:
        # Free DDP (it holds the process group) while every rank is still connected, then tear
        # down together: a gloo group freed after its peer has exited can block at exit.
        del model
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
