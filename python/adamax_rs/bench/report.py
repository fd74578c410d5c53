"""The benchmark's output: the machine, then markdown tables of the results."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

import numpy as np

from .. import _core
from .timing import Result, paired_ratio, per_tensor_overhead
from .workloads import Workload

__all__ = [
    "busy_line",
    "format_time",
    "machine_line",
    "memory_line",
    "print_overhead_table",
    "print_summary",
    "print_table",
    "print_thread_table",
]

Rows = Sequence[tuple[Workload, list[Result]]]


def format_time(seconds: float) -> str:
    """``"2.41 us"``, ``"3.10 ms"`` or ``"1.20 s"``; ``"-"`` for no time."""
    if seconds != seconds:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f", {int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return ""


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, where the system has them."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def machine_line(torch_version: str | None) -> str:
    """CPU, cores, memory, SIMD level, versions, threads and load: what the times depend on."""
    cores = os.cpu_count() or 0
    usable = _usable_cores()
    torch = sys.modules.get("torch")
    torch_threads = f" (threads {torch.get_num_threads()})" if torch is not None else ""
    return (
        f"{_cpu_model()}, {cores} cores ({usable} usable){_memory_gib()}, {platform.system()}; "
        f"adamax_rs {_core.__version__} ({_core.simd_level()}, threads "
        f"{_core.get_num_threads()}), numpy {np.__version__}, "
        f"torch {torch_version or 'not installed'}{torch_threads}, "
        f"Python {platform.python_version()}; load average {load_average()}"
    )


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_line() -> str:
    """A warning when other programs keep the cores busy before the benchmark starts, or ``""``.

    With a core taken, a thread pool loses most: a thread waiting at a barrier spins on the
    core its partner needs. torch's OpenMP rows can then take many times their usual time
    (each parallel region of each tensor waits for the scheduler), adamax_rs's less (a small
    step stays on the calling thread).
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return ""
    cores = _usable_cores()
    if load < cores - 0.5:
        return ""
    return (
        f"note: the machine is busy (load average {load:.2f} on {cores} cores): multi-threaded "
        "rows, torch's OpenMP ones above all, are slowed most; interleaved rounds spread the "
        "noise over all rows, but compare runs with care"
    )


def memory_line() -> str:
    """This process's peak resident memory, where the system tells it."""
    try:
        import resource
    except ImportError:  # Windows
        return ""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux counts KiB, macOS bytes.
    gib = peak / 2**30 if sys.platform == "darwin" else peak / 2**20
    return f"peak memory of the benchmark: {gib:.1f} GiB; load average now {load_average()}"


#: The rows compared with their workload's reference: adamax_rs, and adamax_rs stepping one
#: FlatParameter (on workloads of many tensors).
OVERHEAD_ROWS = ("adamax_rs", "adamax_rs FlatParameter")


def _adamax_rs(results: list[Result]) -> Result:
    return results[0]


def _reference(results: list[Result]) -> Result | None:
    return next((r for r in results if r.reference), None)


def print_table(rows: Rows) -> None:
    """One row per workload and implementation: time, GB/s, time relative to adamax_rs, and
    for adamax_rs (and its FlatParameter row) on a workload with a reference, what each tensor
    costs over one tensor."""
    print(
        "| workload | implementation | time per step | GB/s | time / adamax_rs "
        "| per-tensor overhead |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for workload, results in rows:
        ours = _adamax_rs(results)
        reference = _reference(results)
        for r in results:
            if r.note or not r.seconds:
                print(f"| {workload.name} | {r.implementation} | {r.note or '-'} | | | |")
                continue
            overhead = ""
            if r.implementation in OVERHEAD_ROWS and reference is not None and reference.seconds:
                overhead = format_time(per_tensor_overhead(r, reference, workload.tensors))
            print(
                f"| {workload.name} | {r.implementation} | {format_time(r.median)} | "
                f"{r.gb_per_second:.1f} | {r.median / ours.median:.2f}x | {overhead} |"
            )


def overhead_rows(rows: Rows) -> list[tuple[Workload, Result, Result, float, float]]:
    """(workload, row, reference, step / reference, overhead per tensor in seconds) for each
    of :data:`OVERHEAD_ROWS` timed beside a reference."""
    out = []
    for workload, results in rows:
        reference = _reference(results)
        if reference is None or not reference.seconds:
            continue
        for r in results:
            if r.implementation in OVERHEAD_ROWS and r.seconds and not r.note:
                out.append(
                    (
                        workload,
                        r,
                        reference,
                        paired_ratio(r, reference),
                        per_tensor_overhead(r, reference, workload.tensors),
                    )
                )
    return out


def verdict(ratio: float, target: float | None) -> str:
    """``"PASS"`` when ``ratio`` is within ``target``, ``"miss"`` when not, ``""`` for none."""
    if target is None:
        return ""
    return "PASS" if ratio <= target else "miss"


def print_overhead_table(rows: Rows) -> None:
    """adamax_rs's step against its reference, with the targets of issues 10 and 11; the
    FlatParameter rows say so after the workload's name."""
    lines = overhead_rows(rows)
    if not lines:
        return
    print(
        "| workload | tensors | adamax_rs step | reference | reference time "
        "| step / reference | overhead per tensor | target | |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---|")
    for workload, row, reference, ratio, overhead in lines:
        label = workload.name
        if row.implementation != "adamax_rs":
            label += ", " + row.implementation.removeprefix("adamax_rs ")
        target = f"<= {workload.target:g}x" if workload.target is not None else ""
        name = reference.implementation.removeprefix("reference: ")
        print(
            f"| {label} | {workload.tensors:,} | {format_time(row.median)} | {name} | "
            f"{format_time(reference.median)} | {ratio:.2f}x | {format_time(overhead)} | "
            f"{target} | {verdict(ratio, workload.target)} |"
        )


#: Workloads whose tensors have this many elements on average are of large tensors: there the
#: probe is a bandwidth floor, and the front ends' bookkeeping is lost in the arithmetic's noise.
LARGE_TENSOR = 100_000


def print_summary(rows: Rows) -> None:
    """One line per workload: adamax_rs against the probe and the fastest torch rows."""
    for workload, results in rows:
        by_name = {r.implementation: r.median for r in results if r.seconds and not r.note}
        ours = by_name.get("adamax_rs")
        if ours is None:
            continue
        parts = []
        # The probe is a bandwidth floor where tensors are large (100K elements on average);
        # on small ones its time is mostly its own call overhead, no floor for anything.
        if "bandwidth probe" in by_name and workload.elements >= workload.tensors * LARGE_TENSOR:
            parts.append(f"{by_name['bandwidth probe'] / ours:.0%} of the probe's speed")
        adamax = [by_name[k] for k in ("torch for-loop", "torch foreach") if k in by_name]
        if adamax:
            parts.append(f"{min(adamax) / ours:.1f}x faster than the faster torch Adamax")
        if "torch fused Adam" in by_name:
            fused = by_name["torch fused Adam"] / ours
            parts.append(f"torch fused Adam takes {fused:.1f}x as long")
        print(f"- {workload.name}: " + ", ".join([f"adamax_rs {format_time(ours)}", *parts]))
        adapter = _adapter_overhead(workload, results)
        if adapter is not None:
            print(
                f"- {workload.name}: adamax_rs.torch adds {format_time(adapter)} per tensor over "
                f"adamax_rs on numpy (target under {format_time(ADAPTER_TARGET)}: "
                f"{'PASS' if adapter < ADAPTER_TARGET else 'miss'})"
            )


#: The torch front end's bookkeeping per tensor over the numpy front end's (issue 11).
ADAPTER_TARGET = 1e-6


def _adapter_overhead(workload: Workload, results: Sequence[Result]) -> float | None:
    """Seconds per tensor that ``adamax_rs.torch`` takes over ``adamax_rs`` (paired by round),
    on workloads of small tensors (under 100K elements on average), where the difference is
    bookkeeping and not noise on the arithmetic; ``None`` elsewhere, or where either is missing.
    """
    if workload.elements >= workload.tensors * LARGE_TENSOR:
        return None
    timed = {r.implementation: r for r in results if r.seconds and not r.note}
    if "adamax_rs" not in timed or "adamax_rs.torch" not in timed:
        return None
    return per_tensor_overhead(timed["adamax_rs.torch"], timed["adamax_rs"], workload.tensors)


def print_thread_table(workload_tables: Sequence[tuple[Workload, dict[int, list[Result]]]]) -> None:
    """Time and GB/s of each implementation at each thread count; adamax_rs's speed-up over
    the first count."""
    if not workload_tables:
        return
    names = [r.implementation for r in next(iter(workload_tables[0][1].values()))]
    print("| workload | threads | " + " | ".join(names) + " | adamax_rs speed-up |")
    print("|---|---:|" + "---:|" * len(names) + "---:|")
    for workload, table in workload_tables:
        first = None
        for count, results in table.items():
            cells = []
            for r in results:
                if r.note or not r.seconds:
                    cells.append(r.note or "-")
                else:
                    cells.append(f"{format_time(r.median)}, {r.gb_per_second:.1f} GB/s")
            ours = _adamax_rs(results).median
            first = ours if first is None else first
            print(
                f"| {workload.name} | {count} | " + " | ".join(cells) + f" | {first / ours:.2f}x |"
            )
