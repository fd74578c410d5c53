"""Several optimizers stepping at once, each on its own Python thread."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..adamax import Adamax
from ..parameter import Parameter
from .implementations import Step

__all__ = ["time_parallel_optimizers"]


def time_parallel_optimizers(count: int, elements: int, steps: int) -> tuple[float, float]:
    """Seconds for ``count`` optimizers to take ``steps`` steps each: one after another, then
    each on its own Python thread.

    Each step is small enough to stay on its calling thread (no pool), so any speed-up comes
    from the optimizers running at the same time: the step releases the GIL.
    """

    def make() -> Step:
        p = Parameter(np.ones(elements, np.float32))
        p.grad = np.full(elements, 0.5, np.float32)
        return Adamax([p]).step

    def run(step: Step) -> None:
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
