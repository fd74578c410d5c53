"""``--plot``: each implementation's time per step relative to adamax_rs, workload by workload."""

from __future__ import annotations

from .._plot import prepare_plot, save_figure
from .report import Rows

__all__ = ["plot"]


def plot(rows: Rows, path: str) -> None:
    """Draw grouped horizontal bars, one group per workload, into ``path``.

    The axis is logarithmic: the ratios run from below 1 (the probe) to a thousand (torch on
    one small tensor). References and rows that did not run are left out.

    Raises
    ------
    adamax_rs._plot.PlotError
        If matplotlib is missing or the file cannot be written.
    """
    plt = prepare_plot(path)
    timed = [(w, [r for r in results if r.seconds and not r.reference]) for w, results in rows]
    timed = [(w, results) for w, results in timed if results]
    names = list(dict.fromkeys(r.implementation for _, results in timed for r in results))
    height = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.55 * len(timed) * max(1, len(names)) * height))
    for i, name in enumerate(names):
        ys, ratios = [], []
        for row, (_, results) in enumerate(timed):
            by_name = {r.implementation: r.median for r in results}
            if name in by_name:
                ys.append(row + (i - (len(names) - 1) / 2) * height)
                ratios.append(by_name[name] / results[0].median)
        ax.barh(ys, ratios, height=height, label=name)
    ax.set_yticks(range(len(timed)))
    ax.set_yticklabels([w.name.split(":")[0] for w, _ in timed], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("time per step / adamax_rs's (log scale; left of the line is faster)")
    ax.set_title("One Adamax step, side by side")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)
    print(f"plot written to {path}")
