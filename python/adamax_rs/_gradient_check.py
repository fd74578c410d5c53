"""The check that a gradient fits its parameter, for the front ends that read gradients in
Python (``FlatParameter`` when it is built, ``ShardedAdamax`` at each step, and
``allreduce_gradients``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_gradient_fits"]


def check_gradient_fits(where: str, grad: Any, data: np.ndarray) -> np.ndarray:
    """Raise unless ``grad`` is a numpy array of ``data``'s dtype and shape; return it.

    Raises
    ------
    TypeError
        ``grad`` is not an ndarray, or has another dtype (nothing is cast).
    ValueError
        ``grad`` has another shape.
    """
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"{where}: the gradient must be a numpy.ndarray, got {type(grad).__name__}")
    if grad.dtype != data.dtype:
        raise TypeError(
            f"{where}: the gradient has dtype {grad.dtype} but the parameter has dtype {data.dtype}"
        )
    if grad.shape != data.shape:
        raise ValueError(
            f"{where}: the gradient has shape {list(grad.shape)} but the parameter has "
            f"shape {list(data.shape)}"
        )
    return grad
