"""`Parameter`: a trainable numpy array and its gradient."""

from __future__ import annotations

from typing import Any

import numpy as np

from .dtypes import is_bfloat16

__all__ = ["Parameter"]


def _as_float_array(data: Any) -> np.ndarray:
    """Return ``data`` as a floating-point (or complex) ndarray; such an ndarray is not copied."""
    array = data if isinstance(data, np.ndarray) else np.asarray(data)
    if array.dtype.kind not in "fc" and not is_bfloat16(array.dtype):
        raise TypeError(
            f"Parameter data must be a floating-point or complex array, got dtype "
            f"{array.dtype}; convert it explicitly (for example "
            "np.asarray(data, dtype=np.float32)) rather than have it cast silently"
        )
    return array


class Parameter:
    """A trainable array: the values in ``data`` and their gradient in ``grad``.

    Parameters
    ----------
    data : array_like
        The initial values. A floating-point ``numpy.ndarray`` is kept as it is, not copied,
        so the optimizer updates the caller's array in place (float16, bfloat16, float32,
        float64, complex64 and complex128 are optimised). Anything else is converted with
        ``numpy.asarray``; integer, boolean and non-numeric data raise ``TypeError``.
    name : str, optional
        A label shown in ``repr`` and useful in logs.

    Attributes
    ----------
    data : numpy.ndarray
        The values, updated in place by :meth:`Optimizer.step`.
    grad : numpy.ndarray or None
        The gradient of the loss with respect to ``data`` (same shape and dtype), or ``None``
        when this parameter has no gradient this step (the optimizer then skips it).
    name : str or None
        The label given at construction.

    Notes
    -----
    Parameters compare and hash by identity, like ``torch.nn.Parameter``: the optimizer keys
    its state by the parameter object.

    Examples
    --------
    >>> import numpy as np
    >>> w = Parameter(np.zeros((3, 2), dtype=np.float32), name="w")
    >>> w.grad = np.ones_like(w.data)
    """

    __slots__ = ("data", "grad", "name", "__weakref__")

    def __init__(self, data: Any, *, name: str | None = None) -> None:
        self.data: np.ndarray = _as_float_array(data)
        self.grad: np.ndarray | None = None
        self.name = name

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``data``."""
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        """The dtype of ``data``."""
        return self.data.dtype

    @property
    def size(self) -> int:
        """The number of elements of ``data``."""
        return int(self.data.size)

    def __repr__(self) -> str:
        label = f"name={self.name!r}, " if self.name is not None else ""
        grad = "None" if self.grad is None else "set"
        return f"Parameter({label}shape={self.data.shape}, dtype={self.data.dtype}, grad={grad})"
