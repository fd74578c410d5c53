"""``--plot``: time per step against the number of elements, one line per implementation."""

from __future__ import annotations

import numpy as np

from .._plot import prepare_plot, save_figure
from .report import Rows

__all__ = ["plot"]


def plot(rows: Rows, path: str) -> None:
    """Draw the float32 workloads' median times into ``path``.

    Raises
    ------
    adamax_rs._plot.PlotError
        If matplotlib is missing or the file cannot be written.
    """
    plt = prepare_plot(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    float32 = [(w, results) for w, results in rows if w.dtype == np.float32]
    names = dict.fromkeys(r.implementation for _, results in float32 for r in results)
    for name in names:
        points = sorted(
            (w.elements, r.median * 1e3)
            for w, results in float32
            for r in results
            if r.implementation == name and r.seconds and not r.reference
        )
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    for w, results in float32:
        if results[0].seconds:
            ax.annotate(
                w.name.split(":")[0],
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    print(f"plot written to {path}")
