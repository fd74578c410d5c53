"""Timing in interleaved rounds, and the arithmetic on the times.

Everything timed on one workload (each implementation, its reference, each thread count) is
warmed up, then timed in rounds: in each round every entry runs for about the same short
time, one after another. A neighbour on a shared machine that slows one round slows every
entry in it alike, and the median over rounds discards the worst rounds. Because the entries
of one round ran side by side, ratios between two of them are taken round by round (paired),
then their median.

Before each batch of steps the benchmark pauses for :data:`SETTLE_SECONDS`: worker threads
spin for a while after their work (torch's OpenMP threads for a few milliseconds after each
parallel region), and on a machine with few cores a spinning thread left over from one entry
would slow the next one.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from .implementations import Step

__all__ = ["Entry", "Result", "paired_ratio", "per_tensor_overhead", "time_interleaved"]

#: The pause before each batch, long enough for spinning worker threads to go to sleep.
SETTLE_SECONDS = 0.01


@dataclass
class Result:
    """The step times of one row: one per round, in seconds per step.

    Parameters
    ----------
    implementation : str
        The row's name.
    bytes_moved : int
        The memory one step reads and writes, for the GB/s column.
    note : str
        Why the row was not timed (``"torch not installed"``, ...); empty when it was.
    reference : bool
        Whether the row is a workload's reference (one tensor, one ufunc call).
    """

    implementation: str
    bytes_moved: int = 0
    note: str = ""
    reference: bool = False
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def gb_per_second(self) -> float:
        return self.bytes_moved / self.median / 1e9


@dataclass
class Entry:
    """One thing to time: its step, what to do before each batch of steps, its result.

    ``operations`` is how many of the things being compared one call of ``step`` does (the
    ufunc reference makes two ufunc calls per call); times are per operation.
    """

    result: Result
    step: Step
    before: Callable[[], object] | None = None
    operations: int = 1
    calls: int = 1


def _batch(entry: Entry, calls: int) -> float:
    """Seconds for ``calls`` steps, the garbage collector off as timeit has it."""
    if entry.before is not None:
        entry.before()
    time.sleep(SETTLE_SECONDS)
    step = entry.step
    collecting = gc.isenabled()
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(calls):
            step()
        return time.perf_counter() - started
    finally:
        if collecting:
            gc.enable()


def _calibrate(entry: Entry, round_seconds: float) -> None:
    """Warm up (the first step makes the state), then pick how many steps fill a round."""
    _batch(entry, 2)
    calls = 1
    while True:
        elapsed = _batch(entry, calls)
        if elapsed >= round_seconds / 4 or calls >= 100_000:
            break
        calls *= 4
    entry.calls = max(1, min(100_000, round(calls * round_seconds / max(elapsed, 1e-9))))


def time_interleaved(
    entries: list[Entry],
    seconds: float,
    min_rounds: int = 5,
    max_rounds: int = 200,
    round_seconds: float | None = None,
) -> None:
    """Time ``entries`` in interleaved rounds; each result gets one time per round.

    Parameters
    ----------
    entries : list of Entry
        What to time, in the order each round runs them.
    seconds : float
        Rounds go on until this much time has passed (at least ``min_rounds`` rounds, at
        most ``max_rounds``).
    round_seconds : float, optional
        About how long each entry runs in a round (at least one step): by default 50 ms,
        less when ``seconds`` is under a second (a smoke test's budget).
    """
    if round_seconds is None:
        round_seconds = min(0.05, seconds / 20)
    for entry in entries:
        _calibrate(entry, round_seconds)
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < deadline and rounds < max_rounds):
        for entry in entries:
            elapsed = _batch(entry, entry.calls)
            entry.result.seconds.append(elapsed / (entry.calls * entry.operations))
        rounds += 1


def paired_ratio(many: Result, one: Result) -> float:
    """The median over rounds of ``many``'s time over ``one``'s in the same round."""
    return statistics.median(m / o for m, o in zip(many.seconds, one.seconds))


def per_tensor_overhead(many: Result, one: Result, tensors: int) -> float:
    """Seconds each tensor adds: the median over rounds of (``many`` - ``one``) / ``tensors``.

    ``many`` steps ``tensors`` tensors; ``one`` the same number of elements in one tensor.
    """
    return statistics.median(m - o for m, o in zip(many.seconds, one.seconds)) / tensors
