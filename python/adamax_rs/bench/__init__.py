"""`python -m adamax_rs bench`: one optimizer step, timed side by side.

For each workload (a list of parameter tensors), every implementation gets its own copy of
the same parameters and gradients, and is timed in interleaved rounds so that a noisy
neighbour on a shared machine slows them all alike. Reported: the median time per step, the
memory bandwidth that time implies (a one-pass Adamax moves 7 arrays' worth of bytes: read
param, grad, exp_avg, exp_inf; write param, exp_avg, exp_inf), and each time relative to
adamax_rs.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import _core
from .._plot import pyplot_or_explain
from ..adamax import Adamax
from ..numpy_adamax import NumpyAdamax
from ..parameter import Parameter

M = 1 << 20


@dataclass
class Workload:
    """Parameter sizes and dtype of one benchmark case."""

    name: str
    sizes: list[int]
    dtype: type
    #: Only adamax_rs and the probe (the others keep 16-bit state: not the same algorithm).
    ours_only: bool = False

    @property
    def elements(self) -> int:
        return sum(self.sizes)

    @property
    def state_itemsize(self) -> int:
        return max(4, np.dtype(self.dtype).itemsize)

    @property
    def bytes_moved(self) -> int:
        """Read param, grad, exp_avg, exp_inf; write param, exp_avg, exp_inf."""
        return self.elements * (3 * np.dtype(self.dtype).itemsize + 4 * self.state_itemsize)


WORKLOADS = [
    Workload("1 x 16M float32", [16 * M], np.float32),
    Workload("1 x 64M float32", [64 * M], np.float32),
    Workload("1,000 x 1,000 float32", [1000] * 1000, np.float32),
    Workload("10,000 x 16 float32", [16] * 10_000, np.float32),
    Workload("1 x 1,000 float32", [1000], np.float32),
    Workload("1 x 16M float64", [16 * M], np.float64),
    Workload("1 x 16M float16 (float32 state)", [16 * M], np.float16, ours_only=True),
]


@dataclass
class Result:
    """The step times of one implementation on one workload."""

    implementation: str
    seconds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


def _arrays(workload: Workload, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    params: list[np.ndarray] = [
        rng.standard_normal(n, dtype=np.float64).astype(workload.dtype) for n in workload.sizes
    ]
    grads: list[np.ndarray] = [
        rng.standard_normal(n, dtype=np.float64).astype(workload.dtype) for n in workload.sizes
    ]
    return params, grads


def _with_grads(params: list[np.ndarray], grads: list[np.ndarray]) -> list[Parameter]:
    out = []
    for p, g in zip(params, grads):
        param = Parameter(p.copy())
        param.grad = g
        out.append(param)
    return out


def _adamax_rs(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], Any]:
    return Adamax(_with_grads(params, grads), lr=1e-3).step


def _numpy(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], Any]:
    return NumpyAdamax(_with_grads(params, grads), lr=1e-3).step


def _probe(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], Any]:
    datas = [p.copy() for p in params]
    state = np.float32 if params[0].dtype.itemsize < 4 else params[0].dtype
    exp_avgs = [np.zeros_like(p, dtype=state) for p in params]
    exp_infs = [np.zeros_like(p, dtype=state) for p in params]

    def step() -> None:
        _core.bandwidth_probe(datas, grads, exp_avgs, exp_infs)

    return step


def _torch(foreach: bool) -> Callable[[list[np.ndarray], list[np.ndarray]], Callable[[], Any]]:
    def make(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], Any]:
        import torch

        tensors = []
        for p, g in zip(params, grads):
            t = torch.nn.Parameter(torch.from_numpy(p.copy()))
            t.grad = torch.from_numpy(g)
            tensors.append(t)
        step: Callable[[], Any] = torch.optim.Adamax(tensors, lr=1e-3, foreach=foreach).step
        return step

    return make


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def implementations(include_numpy: bool) -> list[tuple[str, Callable[..., Any] | None, str]]:
    """(name, factory or None, note) for each implementation to time."""
    out: list[tuple[str, Callable[..., Any] | None, str]] = [
        ("adamax_rs", _adamax_rs, ""),
        ("bandwidth probe", _probe, ""),
    ]
    if include_numpy:
        out.append(("numpy by hand", _numpy, ""))
    if _torch_version() is None:
        out.append(("torch for-loop", None, "not installed"))
        out.append(("torch foreach", None, "not installed"))
    else:
        out.append(("torch for-loop", _torch(False), ""))
        out.append(("torch foreach", _torch(True), ""))
    return out


def time_workload(
    workload: Workload,
    impls: list[tuple[str, Callable[..., Any] | None, str]],
    seconds: float,
    seed: int,
) -> list[Result]:
    """Time every implementation on ``workload`` in interleaved rounds."""
    params, grads = _arrays(workload, seed)
    if workload.ours_only:
        ours = ("adamax_rs", "bandwidth probe")
        impls = [(n, f, note) if n in ours else (n, None, "n/a") for n, f, note in impls]
    results = [Result(name, note=note) for name, _, note in impls]
    steps = []
    for _name, factory, _ in impls:
        step = factory(params, grads) if factory is not None else None
        if step is not None:
            step()  # creates the state
            step()
        steps.append(step)
    # Rounds of about 50 ms per implementation, until each has had its share of `seconds`.
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 3 or (time.perf_counter() < deadline and rounds < 200):
        for result, step in zip(results, steps):
            if step is None:
                continue
            started = time.perf_counter()
            calls = 0
            while True:
                step()
                calls += 1
                elapsed = time.perf_counter() - started
                if elapsed > 0.05 or calls >= 1000:
                    break
            result.seconds.append(elapsed / calls)
        rounds += 1
    del steps
    gc.collect()
    return results


def time_parallel_optimizers(count: int, elements: int, steps: int) -> tuple[float, float]:
    """Seconds for ``count`` optimizers to take ``steps`` steps each: one after another, then
    each on its own Python thread. Each step is small enough to stay on its calling thread
    (no pool), so any speed-up comes from the optimizers running at the same time."""
    import threading

    def make() -> Callable[[], Any]:
        p = Parameter(np.ones(elements, np.float32))
        p.grad = np.full(elements, 0.5, np.float32)
        return Adamax([p]).step

    def run(step: Callable[[], Any]) -> None:
        for _ in range(steps):
            step()

    optimizers = [make() for _ in range(count)]
    for step in optimizers:
        step()
    started = time.perf_counter()
    for step in optimizers:
        run(step)
    serial = time.perf_counter() - started
    workers = [threading.Thread(target=run, args=(step,)) for step in optimizers]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return serial, time.perf_counter() - started


def _format_time(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


def print_table(rows: list[tuple[Workload, list[Result]]]) -> None:
    """The results as a markdown table, then the headline ratios."""
    print("| workload | implementation | time per step | GB/s | time / adamax_rs |")  # noqa: E501
    print("|---|---|---:|---:|---:|")
    for workload, results in rows:
        ours = results[0].median
        for r in results:
            if r.note:
                print(f"| {workload.name} | {r.implementation} | {r.note} | | |")
                continue
            gbps = workload.bytes_moved / r.median / 1e9
            print(
                f"| {workload.name} | {r.implementation} | {_format_time(r.median)} | "
                f"{gbps:.1f} | {r.median / ours:.2f}x |"
            )
    print()
    for workload, results in rows:
        by_name = {r.implementation: r.median for r in results if not r.note}
        ours = by_name["adamax_rs"]
        parts = [f"{by_name['bandwidth probe'] / ours:.0%} of the probe's speed"]
        torch_times = [by_name[k] for k in ("torch for-loop", "torch foreach") if k in by_name]
        if torch_times:
            parts.append(f"{min(torch_times) / ours:.1f}x faster than the faster torch")
        if len(workload.sizes) > 1:
            parts.append(f"{ours / len(workload.sizes) * 1e6:.2f} us per parameter (whole step)")
        print(f"- {workload.name}: adamax_rs {_format_time(ours)}, " + ", ".join(parts))


def plot(rows: list[tuple[Workload, list[Result]]], path: str) -> None:
    """Time per step against total elements, one line per implementation."""
    plt = pyplot_or_explain(path)
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = [r.implementation for r in rows[0][1]]
    for name in names:
        points = sorted(
            (w.elements, r.median * 1e3)
            for w, results in rows
            for r in results
            if r.implementation == name and not r.note and w.dtype == np.float32
        )
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    for w, results in rows:
        if w.dtype == np.float32:
            ax.annotate(
                w.name,
                (w.elements, results[0].median * 1e3),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, -10),
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("total float32 elements in the step")
    ax.set_ylabel("time per step (ms)")
    ax.set_title("One Adamax step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options."""
    parser.add_argument(
        "--quick", action="store_true", help="skip the 64M workload and time for less long"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="time per workload (default 3, quick 1)"
    )
    parser.add_argument(
        "--only", default="", help="run only workloads whose name contains this text"
    )
    parser.add_argument(
        "--no-numpy", action="store_true", help="leave out the numpy implementation"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="threads for adamax_rs and torch (default: all)"
    )
    parser.add_argument("--plot", metavar="FILE.png", help="draw time per step against size")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the process exit code."""
    if args.threads:
        _core.set_num_threads(args.threads)
    threads = _core.get_num_threads()
    torch_version = _torch_version()
    if torch_version is not None:
        import torch

        torch.set_num_threads(threads)
    print(
        f"adamax_rs {_core.__version__} ({_core.simd_level()}), numpy {np.__version__}, "
        f"torch {torch_version or 'not installed'}; {threads} threads; "
        f"{platform.machine()} {platform.processor() or platform.platform()}"
    )
    workloads = [w for w in WORKLOADS if args.only in w.name]
    if args.quick:
        workloads = [w for w in workloads if w.elements < 64 * M]
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 3.0)
    impls = implementations(not args.no_numpy)
    rows = []
    for workload in workloads:
        print(f"  timing {workload.name} ...", flush=True)
        rows.append((workload, time_workload(workload, impls, seconds, args.seed)))
    print()
    if rows:
        print_table(rows)
    if not args.only or "threads" in args.only:
        count = max(2, threads)
        serial, threaded = time_parallel_optimizers(count, 140_000, 200 if not args.quick else 50)
        print(
            f"- {count} optimizers x 140K float32, each on its own thread: "
            f"{serial * 1e3:.0f} ms one after another, {threaded * 1e3:.0f} ms on threads "
            f"({serial / threaded:.2f}x)"
        )
    if args.plot:
        plot(rows, args.plot)
    return 0
