"""matplotlib for the ``--plot`` options, loaded only when asked for (it is optional)."""

from __future__ import annotations

from typing import Any


def pyplot_or_explain(path: str) -> Any | None:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` after saying why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed (pip install matplotlib); no plot")
        return None
    return plt
