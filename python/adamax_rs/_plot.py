"""matplotlib for the ``--plot`` options: optional, checked before the work, loud when it fails.

A command asked for a plot checks with :func:`prepare_plot` before it trains or times
anything, so that a missing matplotlib or an unwritable path stops it at once rather than
after minutes of work; :func:`save_figure` writes the file at the end. Both raise
:class:`PlotError`, which the command line turns into a message and a non-zero exit.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["PlotError", "prepare_plot", "save_figure"]


class PlotError(Exception):
    """An asked-for plot cannot be made (the message says why and what to do)."""


def _format(path: str) -> str:
    """The file format: the extension's, PNG when there is none."""
    return os.path.splitext(path)[1][1:].lower() or "png"


def prepare_plot(path: str, option: str = "--plot") -> Any:
    """Check that a plot can be saved to ``path``; return ``matplotlib.pyplot`` (Agg backend).

    Call it before the long work starts.

    Parameters
    ----------
    path : str
        Where the plot will go; its extension picks the format (PNG without one).
    option : str, default "--plot"
        The command-line option that asked for it, for the messages.

    Returns
    -------
    module
        ``matplotlib.pyplot``, on the file-only Agg backend.

    Raises
    ------
    PlotError
        If matplotlib cannot be imported, the folder does not exist or cannot be written,
        ``path`` is a folder, or matplotlib cannot write the format.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: works without a display
        import matplotlib.pyplot as plt
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as error:
        raise PlotError(
            f"{option} {path}: matplotlib cannot be imported ({error}). Install it with "
            f"`pip install matplotlib` (or `pip install 'adamax_rs[demo]'`), or leave out "
            f"{option}."
        ) from None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise PlotError(f"{option} {path}: that is a folder; give a file name such as plot.png")
    if not os.path.isdir(folder):
        raise PlotError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise PlotError(f"{option} {path}: the folder {folder} is not writable")
    formats = FigureCanvasBase.get_supported_filetypes()
    if _format(path) not in formats:
        raise PlotError(
            f"{option} {path}: matplotlib cannot write .{_format(path)} files; use one of "
            + ", ".join(f".{name}" for name in sorted(formats))
        )
    return plt


def save_figure(figure: Any, path: str, option: str = "--plot") -> None:
    """Write ``figure`` to ``path`` (format from the extension, PNG without one) and close it.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure to save.
    path : str
        The file to write.
    option : str, default "--plot"
        The command-line option that asked for it, for the message.

    Raises
    ------
    PlotError
        If the file cannot be written.
    """
    import matplotlib.pyplot as plt

    try:
        figure.savefig(path, dpi=120, format=_format(path))
    except (OSError, ValueError) as error:
        raise PlotError(f"{option} {path}: the plot could not be written ({error})") from None
    finally:
        plt.close(figure)
