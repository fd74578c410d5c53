"""Checked values for the command-line options of the demo and the benchmarks.

Each is an ``argparse`` ``type=``: a bad value is a one-line usage error naming the option,
not a traceback from deep inside the run.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def integer_at_least(smallest: int) -> Callable[[str], int]:
    """An ``int`` option that must be at least ``smallest``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"must be at least {smallest}, got {value}")
        return value

    parse.__name__ = "integer"  # what argparse names in "invalid integer value"
    return parse


def finite_float(
    *, above: float | None = None, at_least: float | None = None, below: float | None = None
) -> Callable[[str], float]:
    """A finite ``float`` option, strictly above ``above``, at least ``at_least``, strictly
    below ``below`` (each bound only when given)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be greater than {above:g}, got {text}")
        if at_least is not None and not value >= at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least:g}, got {text}")
        if below is not None and not value < below:
            raise argparse.ArgumentTypeError(f"must be less than {below:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


#: A random seed: numpy's generators take any non-negative integer.
seed = integer_at_least(0)

#: The most threads a step may use (``adamax_rs.set_num_threads`` refuses more).
MAX_THREADS = 1024


def thread_count(text: str) -> int:
    """A thread count: 0 (all cores) up to :data:`MAX_THREADS`."""
    value = integer_at_least(0)(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value
