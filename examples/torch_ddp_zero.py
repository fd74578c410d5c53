"""Data-parallel training with ZeRO-1 sharding and adamax_rs's Adamax, on CPUs.

Each process holds the whole model (DistributedDataParallel averages the gradients), but the
optimizer state is sharded: ``ZeroRedundancyOptimizer`` gives each rank a slice of the
parameters, which it updates with ``adamax_rs.torch.Adamax``, then broadcasts. At the end the
state is gathered on rank 0 and saved as one checkpoint that a single process can load.

Run it on two processes of this machine::

    torchrun --nproc-per-node 2 examples/torch_ddp_zero.py --steps 200 --checkpoint zero.pt

It needs torch (``pip install "adamax_rs[torch]"``); the processes talk over gloo. The
checkpoint loads into one process, with no ZeRO::

    checkpoint = torch.load("zero.pt", weights_only=True)
    model = make_model()
    model.load_state_dict(checkpoint["model"])
    optimizer = adamax_rs.torch.Adamax(model.parameters())
    optimizer.load_state_dict(checkpoint["optimizer"])
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import adamax_rs.torch


def make_model() -> nn.Module:
    """The same initial weights on every rank (DDP would broadcast rank 0's anyway)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )


def batch(step: int, rank: int, world_size: int, size: int = 32) -> tuple[torch.Tensor, ...]:
    """This rank's share of step ``step``'s data: a smooth function of 8 inputs."""
    generator = torch.Generator().manual_seed(step * world_size + rank)
    x = torch.randn(size, 8, generator=generator)
    y = (x[:, :4].sin().sum(1) + x[:, 4] * x[:, 5] - x[:, 6:].square().sum(1) / 4).unsqueeze(1)
    return x, y


def validation_loss(model: nn.Module, data: tuple[torch.Tensor, ...]) -> float:
    x, y = data
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 0.01)")
    parser.add_argument("--print-every", type=int, default=50, help="loss report interval")
    parser.add_argument(
        "--checkpoint", help="save the model and the gathered optimizer state here (rank 0)"
    )
    return parser.parse_args(argv)


def train(args: argparse.Namespace, rank: int, world_size: int) -> None:
    """Train with DDP and ZeRO, print the losses, and save a gathered checkpoint if asked."""
    model = DistributedDataParallel(make_model())
    optimizer = ZeroRedundancyOptimizer(
        model.parameters(),
        optimizer_class=adamax_rs.torch.Adamax,  # instead of torch.optim.Adamax
        lr=args.lr,
    )
    shard = sum(p.numel() for group in optimizer.optim.param_groups for p in group["params"])
    total = sum(p.numel() for p in model.parameters())
    print(f"rank {rank}: updates {shard} of {total} parameters", flush=True)
    held_out = batch(-1, 0, 1, size=512)  # the same data on every rank, never trained on
    start_loss = validation_loss(model.module, held_out)  # the plain model: no collectives
    for step in range(1, args.steps + 1):
        x, y = batch(step, rank, world_size)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()  # DDP averages the gradients over the ranks
        optimizer.step()  # each rank updates its shard, then the shards are broadcast
        if rank == 0 and (step % args.print_every == 0 or step == args.steps):
            print(f"step {step}: loss {loss.item():.4f}", flush=True)

    if rank == 0:
        end_loss = validation_loss(model.module, held_out)
        print(f"held-out loss: {start_loss:.4f} before, {end_loss:.4f} after", flush=True)

    # Gather the sharded state on rank 0 (every rank takes part), then save it there.
    optimizer.consolidate_state_dict(to=0)
    if rank == 0 and args.checkpoint:
        torch.save(
            {"model": model.module.state_dict(), "optimizer": optimizer.state_dict()},
            args.checkpoint,
        )
        print(f"saved {args.checkpoint}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for each process.
    dist.init_process_group("gloo")
    try:
        train(args, dist.get_rank(), dist.get_world_size())
        # DDP and ZeRO hold the process group until they are freed, when train returns. With
        # every rank past that point, destroy it here: destroyed while Python shuts down, with
        # them still alive, gloo can abort ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if "RANK" not in os.environ:
        raise SystemExit("run it with torchrun: torchrun --nproc-per-node 2 " + __file__)
    main()
