"""Timing one workload: every implementation and the workload's reference, side by side.

The parameter and gradient arrays are made once per workload and freed when it is done, so
the memory at any time is one workload's (see :mod:`.implementations` for what is shared).
"""

from __future__ import annotations

import functools
import gc
import sys

import numpy as np

from .. import _core
from ..adamax import Adamax
from ..parameter import Parameter
from .implementations import LR, Implementation, Step
from .timing import Entry, Result, time_interleaved
from .workloads import ONE_TENSOR, UFUNC, Workload, make_arrays

__all__ = ["bytes_moved", "set_threads", "time_thread_scaling", "time_workload", "unavailable"]


def unavailable(impl: Implementation, workload: Workload) -> str:
    """Why ``impl`` is not timed on ``workload`` (printed in its row), or ``""``."""
    missing = impl.missing()
    if missing:
        return missing
    if workload.mixed_precision and not impl.mixed_precision:
        return "n/a (keeps 16-bit state)"
    return ""


def bytes_moved(impl: Implementation, workload: Workload) -> int:
    """What one step of ``impl`` reads and writes on ``workload``, for its GB/s."""
    if impl.state_itemsize is None:
        return workload.bytes_moved
    return workload.bytes_moved_with_state(impl.state_itemsize)


def reference_entry(workload: Workload, seed: int) -> Entry | None:
    """The workload's reference, to time beside it: adamax_rs on one tensor of the same
    number of elements, or numpy's ``multiply`` on the one tensor; ``None`` for none."""
    if workload.reference == ONE_TENSOR:
        (p,), (g,) = make_arrays(((workload.elements,),), workload.dtype, seed + 1)
        param = Parameter(p)
        param.grad = g
        name = f"reference: adamax_rs on 1 x {workload.elements:,}"
        result = Result(name, workload.bytes_moved, reference=True)
        return Entry(result, Adamax([param], lr=LR).step)
    if workload.reference == UFUNC:
        (x,), _ = make_arrays(((workload.elements,),), workload.dtype, seed + 1)
        up = 1 / 0.9

        def two_ufunc_calls() -> None:
            # Down then up: repeated one way, x would sink into the denormals, where the
            # ufunc is ten times slower. Two calls a Python call, so the call of this
            # function weighs half as much on each.
            np.multiply(x, 0.9, out=x)
            np.multiply(x, up, out=x)

        name = f"reference: np.multiply(x, 0.9, out=x) on {workload.elements:,}"
        result = Result(name, 2 * x.nbytes, reference=True)
        return Entry(result, two_ufunc_calls, operations=2)
    return None


def time_workload(
    workload: Workload,
    impls: list[Implementation],
    seconds: float,
    seed: int,
    min_rounds: int = 5,
) -> list[Result]:
    """Time each of ``impls`` and the workload's reference on ``workload``.

    Returns one :class:`Result` per implementation, in the order given, with the reference's
    right after the first (adamax_rs): they run next to each other in every round too.
    """
    params, grads = make_arrays(workload.shapes, workload.dtype, seed)
    results: list[Result] = []
    entries: list[Entry] = []
    for impl in (i for i in impls if i.runs_on(workload)):
        result = Result(impl.name, bytes_moved(impl, workload), note=unavailable(impl, workload))
        results.append(result)
        if not result.note:
            entries.append(Entry(result, impl.make(params, grads)))
        if len(results) == 1:
            reference = reference_entry(workload, seed)
            if reference is not None:
                results.append(reference.result)
                entries.append(reference)
    time_interleaved(entries, seconds, min_rounds)
    del params, grads, entries
    gc.collect()  # the next workload may be as large: free this one's arrays first
    return results


def set_threads(count: int) -> None:
    """Threads for adamax_rs, and for torch when it is loaded (0: adamax_rs's default)."""
    _core.set_num_threads(count)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count if count else _core.get_num_threads())


def time_thread_scaling(
    workload: Workload,
    impls: list[Implementation],
    thread_counts: list[int],
    seconds: float,
    seed: int,
    min_rounds: int = 5,
) -> dict[int, list[Result]]:
    """Time ``impls`` on ``workload`` at each thread count, all in the same rounds.

    Each round runs every implementation at every thread count (the count is set before
    each batch), so that the machine's noise touches all counts alike. Returns the results
    by thread count, each list in the order of ``impls``. The thread counts are left as
    they were.
    """
    before = _core.get_num_threads()
    params, grads = make_arrays(workload.shapes, workload.dtype, seed)
    steps: list[tuple[Implementation, Step | None]] = [
        (impl, None if unavailable(impl, workload) else impl.make(params, grads))
        for impl in impls
        if impl.runs_everywhere  # rows timed on some workloads only would leave holes in the table
    ]
    table: dict[int, list[Result]] = {}
    entries: list[Entry] = []
    for count in thread_counts:
        table[count] = []
        for impl, step in steps:
            result = Result(
                impl.name, bytes_moved(impl, workload), note=unavailable(impl, workload)
            )
            table[count].append(result)
            if step is not None:
                entries.append(Entry(result, step, before=functools.partial(set_threads, count)))
    try:
        time_interleaved(entries, seconds, min_rounds)
    finally:
        set_threads(before)
    del params, grads, steps, entries
    gc.collect()
    return table
