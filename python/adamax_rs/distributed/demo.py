"""``mpiexec -n 2 python -m adamax_rs demo --distributed``: the demo, data-parallel.

Every rank builds the same model and data from the seed; each global batch is cut into one
equal slice per rank; each rank computes the gradient of its slice, and
:class:`ShardedAdamax` averages them and updates the parameters, each rank keeping 1/N of the
optimizer state. The mean of the slices' mean gradients is the gradient of the global batch,
so the losses are those of one process training on the same global batches (up to the
rounding of the sums in a different order), which rank 0 then checks by training once
alone.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ..adamax import Adamax
from ..demo import MLP, train, two_spirals
from ..lr_scheduler import CosineAnnealingLR
from ._mpi import communicator
from .gradients import broadcast_parameters
from .sharded_adamax import ShardedAdamax

__all__ = ["main"]


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def main(args: argparse.Namespace) -> int:
    """Run the data-parallel demo on ``MPI.COMM_WORLD``; returns the exit code."""
    comm = communicator(None)
    rank, ranks = comm.Get_rank(), comm.Get_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.batch_size % ranks:
        say(f"--batch-size {args.batch_size} must be a multiple of the {ranks} ranks")
        return 2
    local = args.batch_size // ranks
    say(
        f"Training a {args.layers}x{args.hidden} MLP on {args.samples} points of two spirals, "
        f"data-parallel on {ranks} ranks (global batch {args.batch_size} = {ranks} x {local}), "
        f"with adamax_rs.distributed.ShardedAdamax(lr={args.lr}) and a cosine schedule, "
        f"{args.epochs} epochs"
    )
    rng = np.random.default_rng(args.seed)
    x, y = two_spirals(args.samples, args.noise, rng)
    model = MLP([2] + [args.hidden] * args.layers + [2], rng)
    broadcast_parameters(model.params, comm)  # the same seed gives the same values; be sure
    optimizer = ShardedAdamax(model.params, comm, lr=args.lr)
    scheduler = CosineAnnealingLR(optimizer, args.epochs)
    batches = max(1, len(x) // args.batch_size)
    losses: list[float] = []
    step_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x))
        total = 0.0
        for b in range(batches):
            index = order[b * args.batch_size : (b + 1) * args.batch_size]
            mine = index[rank * local : (rank + 1) * local]
            loss, _ = model.loss_and_grads(x[mine], y[mine])
            total += loss
            started = time.perf_counter()
            optimizer.step()
            step_seconds += time.perf_counter() - started
        # The epoch's loss: the mean over batches of the global batch's mean loss.
        summed = np.array([total])
        comm.Allreduce(summed.copy(), summed)
        losses.append(float(summed[0]) / (ranks * batches))
        scheduler.step()
        if not args.quiet and (epoch == 1 or epoch % args.every == 0 or epoch == args.epochs):
            say(f"  epoch {epoch:4d}   loss {losses[-1]:.4f}", flush=True)
    state = np.empty(ranks, np.int64)
    comm.Allgather(np.array([optimizer.local_state_bytes()], np.int64), state)
    if rank != 0:
        return 0 if len(losses) == 1 or losses[-1] < losses[0] else 1
    _, accuracy = model.loss_and_grads(x, y)
    steps = batches * args.epochs
    print(
        f"final: loss {losses[-1]:.4f}, accuracy {accuracy:.1%}, optimizer step "
        f"{step_seconds / steps * 1e6:.1f} us (communication included) over {steps} steps"
    )
    print(
        f"optimizer state per rank: {', '.join(_kib(int(n)) for n in state)} "
        f"(one process keeps {_kib(int(state.sum()))})"
    )
    if not args.no_compare:
        schedulers: dict[int, CosineAnnealingLR] = {}

        def cosine(opt: Any, epoch: int) -> None:
            schedulers.setdefault(id(opt), CosineAnnealingLR(opt, args.epochs)).step()

        alone = train(lambda ps: Adamax(ps, lr=args.lr), args, cosine)
        difference = float(np.max(np.abs(np.array(alone["losses"]) - np.array(losses))))
        print(
            f"one process on the same global batches: final loss {alone['losses'][-1]:.4f}; "
            f"largest loss difference from one process: {difference:.2e}"
        )
    if len(losses) > 1 and not losses[-1] < losses[0]:
        print("the loss did not fall: something is wrong")
        return 1
    return 0
