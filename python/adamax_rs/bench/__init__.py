"""`python -m adamax_rs bench`: one optimizer step, timed side by side.

For each workload (a list of parameter tensors: a few sizes and dtypes, and the shapes of
whole models), every implementation in the registry (:mod:`.implementations`) is timed in
interleaved rounds (:mod:`.timing`), so that a noisy neighbour on a shared machine slows them
all alike. Reported (:mod:`.report`): the median time per step, the memory bandwidth that
time implies (a one-pass Adamax moves 7 arrays' worth of bytes: read param, grad, exp_avg,
exp_inf; write param, exp_avg, exp_inf), each time relative to adamax_rs, what each tensor of
a many-tensor workload costs over one tensor of the same size, and the targets of issues 10
and 11. ``--threads 1,2,4`` times chosen workloads at each thread count instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .._cli_values import MAX_THREADS, finite_float, seed
from .implementations import IMPLEMENTATIONS, Implementation, select, unmatched
from .models import MODELS
from .parallel import time_parallel_optimizers
from .report import (
    busy_line,
    machine_line,
    memory_line,
    print_overhead_table,
    print_summary,
    print_table,
    print_thread_table,
)
from .run import set_threads, time_thread_scaling, time_workload
from .timing import Result
from .workloads import MODEL_WORKLOADS, WORKLOADS, Workload

__all__ = ["add_arguments", "choose_workloads", "main"]

M = 1 << 20

#: ``--threads 1,2,4``: the workloads timed unless ``--only`` says otherwise (``--quick``: the
#: first two, with 16M for 64M).
THREAD_WORKLOADS: tuple[str, ...] = ("1 x 64M float32", "1,000 x 1,000 float32")
#: ``--threads 1,2,4``: the implementations timed unless ``--implementations`` says otherwise.
THREAD_IMPLEMENTATIONS = "adamax_rs,adamax_rs.torch,bandwidth probe,torch foreach,torch fused Adam"


def _thread_counts(text: str) -> list[int]:
    """``"4"`` -> [4]; ``"1,2,4"`` -> [1, 2, 4] (a thread-scaling table)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a thread count or a comma-separated list of them, got {text!r}"
        ) from None
    if any(n < 0 for n in counts) or (len(counts) > 1 and 0 in counts):
        raise argparse.ArgumentTypeError(
            f"thread counts must be positive (a single 0: all cores), got {text!r}"
        )
    if any(n > MAX_THREADS for n in counts):
        raise argparse.ArgumentTypeError(
            f"thread counts must be at most {MAX_THREADS}, got {text!r}"
        )
    return counts


def _models(text: str) -> list[str]:
    """``"all"``, ``"none"`` or comma-separated keys of :data:`MODELS`."""
    if text == "all":
        return list(MODELS)
    if text == "none":
        return []
    keys = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [key for key in keys if key not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown model {unknown[0]!r}: choose from {', '.join(MODELS)}, all or none"
        )
    return keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="skip the 64M workload and the whole models, and time for less long",
    )
    parser.add_argument(
        "--seconds",
        type=finite_float(above=0.0),
        default=None,
        help="time per workload (default 3, quick 1); at least 5 rounds are run whatever it is",
    )
    parser.add_argument(
        "--only",
        default="",
        help="run only the workloads whose name contains this text, from all of them "
        "(whole models included, within --models); 'threads' runs the parallel-optimizers line",
    )
    parser.add_argument(
        "--models",
        type=_models,
        default=None,
        metavar="NAMES",
        help=f"whole-model workloads to run: comma-separated from {', '.join(MODELS)}, or all, "
        "or none (default: all, none with --quick; GPT-2 small for --threads N,M)",
    )
    parser.add_argument(
        "--implementations",
        default="",
        metavar="NAMES",
        help="time only the implementations whose name contains one of these comma-separated "
        "texts (adamax_rs is always timed); known: "
        + ", ".join(impl.name for impl in IMPLEMENTATIONS),
    )
    parser.add_argument(
        "--no-numpy", action="store_true", help="leave out the numpy implementation"
    )
    parser.add_argument(
        "--threads",
        type=_thread_counts,
        default=[0],
        metavar="N[,N...]",
        help="one count: threads for adamax_rs and torch (default: all cores); several, such as "
        "1,2,4: a thread-scaling table instead (default workloads: 64M float32, GPT-2 small "
        f"shapes, 1,000 x 1,000; implementations: {THREAD_IMPLEMENTATIONS})",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw each implementation's time relative to adamax_rs, workload by workload",
    )
    parser.add_argument("--seed", type=seed, default=0, help="random seed")


def choose_workloads(args: argparse.Namespace, thread_table: bool = False) -> list[Workload]:
    """The workloads that ``args`` ask for, in the order they are printed."""
    if args.models is not None:
        models = args.models
    elif args.quick:
        models = []
    else:
        models = ["gpt2-small"] if thread_table else list(MODELS)
    model_workloads = [MODEL_WORKLOADS[key] for key in models]
    if args.only:
        everything = WORKLOADS + [
            MODEL_WORKLOADS[key] for key in (MODELS if args.models is None else args.models)
        ]
        return [w for w in everything if args.only in w.name]
    if thread_table:
        names = THREAD_WORKLOADS
        if args.quick:
            names = tuple(n.replace("64M", "16M") for n in names)
        chosen = [w for w in WORKLOADS if w.name in names]
        return chosen[:1] + model_workloads + chosen[1:]
    small = [w for w in WORKLOADS if w.elements < 64 * M] if args.quick else WORKLOADS
    return small + model_workloads


def _import_torch_if_used(impls: list[Implementation]) -> str | None:
    """torch's version when installed; imported now when a row uses it, so that the thread
    count applies to it too."""
    if importlib.util.find_spec("torch") is None:
        return None
    if any("torch" in impl.requires for impl in impls):
        import torch

        return str(torch.__version__)
    from importlib.metadata import version

    return version("torch")


def _usage_error(message: str) -> int:
    """Print a usage error as argparse does; its exit code."""
    print(f"python -m adamax_rs bench: error: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the process exit code."""
    thread_table = len(args.threads) > 1
    names = args.implementations or (THREAD_IMPLEMENTATIONS if thread_table else "")
    unknown = unmatched(names)
    if unknown:
        known = ", ".join(impl.name for impl in IMPLEMENTATIONS)
        return _usage_error(
            f"--implementations: no implementation's name contains {unknown[0]!r} (known: {known})"
        )
    workloads = choose_workloads(args, thread_table)
    # `--only threads` alone times the parallel-optimizers line, which the thread table has not.
    if not workloads and (thread_table or "threads" not in args.only):
        return _usage_error(
            f"--only {args.only!r} matches no workload (names are printed in the tables, for "
            "example '10,000 x 16'; see --models too)"
        )
    impls = select(names, include_numpy=not args.no_numpy)
    torch_version = _import_torch_if_used(impls)
    if not thread_table:
        set_threads(args.threads[0])
    print(machine_line(torch_version))
    busy = busy_line()
    if busy:
        print(busy)
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 3.0)
    if thread_table:
        tables = []
        for workload in workloads:
            print(f"  timing {workload.name} at {args.threads} threads ...", flush=True)
            tables.append(
                (workload, time_thread_scaling(workload, impls, args.threads, seconds, args.seed))
            )
        print()
        print_thread_table(tables)
        print()
        print(memory_line())
        return 0
    rows: list[tuple[Workload, list[Result]]] = []
    for workload in workloads:
        print(f"  timing {workload.name} ...", flush=True)
        rows.append((workload, time_workload(workload, impls, seconds, args.seed)))
    print()
    if rows:
        print_table(rows)
        print()
        print_overhead_table(rows)
        print()
        print_summary(rows)
    if not args.only or "threads" in args.only:
        from .. import _core

        count = max(2, _core.get_num_threads())
        serial, threaded = time_parallel_optimizers(count, 140_000, 50 if args.quick else 200)
        print(
            f"- {count} optimizers x 140K float32, each on its own thread: "
            f"{serial * 1e3:.0f} ms one after another, {threaded * 1e3:.0f} ms on threads "
            f"({serial / threaded:.2f}x)"
        )
    print()
    print(memory_line())
    if args.plot:
        from .plot import plot

        plot(rows, args.plot)
    return 0
