"""From the sum over the ranks to the mean, as numpy's ``sum / N`` computes it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["mean_in_place"]


def mean_in_place(
    values: np.ndarray, ranks: int, complex_runs: Sequence[tuple[int, int]] = ()
) -> None:
    """Divide the flat real buffer ``values`` (a sum over ``ranks`` ranks) by ``ranks``.

    Reals are divided by ``ranks`` in their own type. The ranges in ``complex_runs`` hold
    complex numbers as (re, im) pairs: numpy divides a complex number by a real one as a
    complex division (Smith's method), which multiplies each part by the rounded reciprocal
    ``1 / ranks``; these ranges get exactly that, so that the mean matches a single process
    computing ``sum / N`` on complex gradients (except in the signs of zeros, and infinities).
    """
    if not complex_runs:
        np.divide(values, ranks, out=values)
        return
    reciprocal = values.dtype.type(1) / values.dtype.type(ranks)
    start = 0
    for a, b in complex_runs:
        if start < a:
            np.divide(values[start:a], ranks, out=values[start:a])
        np.multiply(values[a:b], reciprocal, out=values[a:b])
        start = b
    if start < values.size:
        np.divide(values[start:], ranks, out=values[start:])
