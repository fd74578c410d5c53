"""``python -m adamax_rs.distributed bench``: the time of a sharded step, communication
included, and the state memory per rank.

Run it once alone (one process: the single-process ``adamax_rs.Adamax`` baseline, and
``ShardedAdamax`` on one rank) and once under ``mpiexec -n N``::

    python -m adamax_rs.distributed bench
    mpiexec -n 2 python -m adamax_rs.distributed bench

Every rank steps the same workload; a step's time is the slowest rank's, measured between
two barriers, and the table gives the median over the timed steps. The baseline runs only
when there is one rank, so that no other rank competes with it for the cores.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any, Callable

import numpy as np

from .. import get_num_threads, set_num_threads
from .._cli_values import integer_at_least, thread_count
from ..adamax import Adamax
from ..parameter import Parameter
from ._mpi import communicator
from .gradients import allreduce_gradients
from .sharded_adamax import ShardedAdamax

__all__ = ["WORKLOADS", "add_arguments", "main"]


def _gpt2_small() -> list[tuple[int, ...]]:
    """The 148 parameter shapes of GPT-2 small (124M parameters)."""
    d, vocab, context, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


WORKLOADS: dict[str, list[tuple[int, ...]]] = {
    "16M in 4 tensors": [(4096, 1024)] * 4,
    "GPT-2 small shapes": _gpt2_small(),
}


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _timed(comm: Any, call: Callable[[], Any], warmup: int, steps: int) -> float:
    """The median over ``steps`` calls of the slowest rank's time (after ``warmup`` calls)."""
    from mpi4py import MPI

    for _ in range(warmup):
        call()
    times = []
    for _ in range(steps):
        comm.Barrier()
        started = time.perf_counter()
        call()
        elapsed = np.array([time.perf_counter() - started])
        comm.Allreduce(MPI.IN_PLACE, elapsed, op=MPI.MAX)
        times.append(float(elapsed[0]))
    return statistics.median(times)


def _params(shapes: list[tuple[int, ...]], seed: int) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    params = []
    for shape in shapes:
        p = Parameter(rng.standard_normal(shape, dtype=np.float32))
        p.grad = rng.standard_normal(shape, dtype=np.float32)
        params.append(p)
    return params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options."""
    parser.add_argument(
        "--only", action="append", choices=list(WORKLOADS), help="run only this workload"
    )
    parser.add_argument(
        "--steps", type=integer_at_least(1), default=10, help="timed steps (default 10)"
    )
    parser.add_argument(
        "--warmup", type=integer_at_least(0), default=2, help="untimed steps first (default 2)"
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=0,
        help="adamax_rs threads per rank (default: all cores)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the benchmark on ``MPI.COMM_WORLD``; rank 0 prints a Markdown table."""
    from mpi4py import MPI

    comm = communicator(None)
    rank, ranks = comm.Get_rank(), comm.Get_size()
    if args.threads:
        set_num_threads(args.threads)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(
        f"{ranks} rank(s), {get_num_threads()} adamax_rs thread(s) per rank, "
        f"{MPI.Get_library_version().splitlines()[0].strip()}, median of {args.steps} steps"
    )
    say()
    say(
        "| workload | ranks | optimizer | step (ms) | state per rank | buffers per rank "
        "| pack / reduce-scatter / mean / update / all-gather / unpack (ms) |"
    )
    say("|---|---|---|---|---|---|---|")
    for name in args.only or list(WORKLOADS):
        shapes = WORKLOADS[name]
        elements = sum(int(np.prod(s)) for s in shapes)
        label = f"{name} ({elements / 1e6:.1f}M float32, {len(shapes)} tensors)"
        params = _params(shapes, seed=0)
        if ranks == 1:
            alone = Adamax(params, lr=1e-4)
            seconds = _timed(comm, alone.step, args.warmup, args.steps)
            state = sum(
                v.nbytes for e in alone.state.values() for v in e.values() if hasattr(v, "nbytes")
            )
            say(f"| {label} | 1 | Adamax | {seconds * 1e3:.1f} | {_mib(state)} | - | - |")
            del alone
        else:
            replicated = Adamax(params, lr=1e-4)

            def data_parallel(opt: Adamax = replicated, ps: list[Parameter] = params) -> None:
                allreduce_gradients(ps, comm)
                opt.step()

            seconds = _timed(comm, data_parallel, args.warmup, args.steps)
            state = sum(
                v.nbytes
                for e in replicated.state.values()
                for v in e.values()
                if hasattr(v, "nbytes")
            )
            say(
                f"| {label} | {ranks} | allreduce_gradients + Adamax | {seconds * 1e3:.1f} "
                f"| {_mib(state)} | {_mib(4 * elements)} | - |"
            )
            del replicated
        gc.collect()
        sharded = ShardedAdamax(params, comm, lr=1e-4)
        for _ in range(args.warmup):
            sharded.step()
        sharded._phase_seconds.clear()
        seconds = _timed(comm, sharded.step, 0, args.steps)
        phases = sharded._phase_seconds
        order = ("pack", "reduce_scatter", "mean", "update", "allgather", "unpack")
        split = " / ".join(f"{phases.get(k, 0.0) / args.steps * 1e3:.1f}" for k in order)
        state_bytes = np.empty(ranks, np.int64)
        comm.Allgather(np.array([sharded.local_state_bytes()], np.int64), state_bytes)
        say(
            f"| {label} | {ranks} | ShardedAdamax | {seconds * 1e3:.1f} "
            f"| {', '.join(_mib(int(b)) for b in state_bytes)} "
            f"| {_mib(sharded.local_buffer_bytes())} | {split} (rank 0) |"
        )
        del sharded, params
        gc.collect()
    return 0
