"""Which element types the optimizer updates, and in which type it keeps their state.

Parameters may be float16, bfloat16 (the ``ml_dtypes`` dtype, when that package is
installed), float32, float64, complex64 or complex128. The Rust core updates complex
parameters as pairs of reals, as torch does (``view_as_real``). The state (``exp_avg``,
``exp_inf``, and the master copy with master weights) is float32 for 16-bit parameters and has
the parameter's own precision otherwise, unless ``state_dtype`` asks for float32 or float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "check_state_dtype",
    "describe_supported",
    "is_bfloat16",
    "is_half",
    "is_supported",
    "state_dtype_for",
]

_REAL = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)}
_COMPLEX = {np.dtype(np.complex64), np.dtype(np.complex128)}
_STATE = (np.dtype(np.float32), np.dtype(np.float64))


def is_bfloat16(dtype: np.dtype) -> bool:
    """``True`` for ml_dtypes' bfloat16."""
    return dtype.kind == "V" and dtype.name == "bfloat16"


def is_supported(dtype: np.dtype) -> bool:
    """Whether parameters of this dtype can be optimised (native byte order only)."""
    if not dtype.isnative:
        return False
    return dtype in _REAL or dtype in _COMPLEX or is_bfloat16(dtype)


def is_half(dtype: np.dtype) -> bool:
    """``True`` for the 16-bit types (float16, bfloat16)."""
    return dtype == np.float16 or is_bfloat16(dtype)


def describe_supported() -> str:
    """The supported dtypes, for error messages."""
    return "float16, bfloat16 (ml_dtypes), float32, float64, complex64 or complex128"


def check_state_dtype(state_dtype: Any) -> np.dtype | None:
    """``None``, or ``state_dtype`` as float32/float64; anything else is a ``TypeError``."""
    if state_dtype is None:
        return None
    try:
        dtype: np.dtype = np.dtype(state_dtype)
    except TypeError:
        raise TypeError(
            f"state_dtype must be None, float32 or float64, got {state_dtype!r}"
        ) from None
    if dtype not in _STATE:
        raise TypeError(f"state_dtype must be None, float32 or float64, got {dtype}")
    return dtype


def state_dtype_for(param_dtype: np.dtype, requested: np.dtype | None) -> np.dtype:
    """The dtype of the state arrays of a parameter of ``param_dtype``.

    16-bit parameters default to float32 state, others to their own precision; complex
    parameters get complex state of the chosen real precision.
    """
    if param_dtype.kind == "c":
        real = requested if requested is not None else param_dtype.type(0).real.dtype
        return np.dtype(np.complex64 if real == np.float32 else np.complex128)
    if requested is not None:
        return requested
    return np.dtype(np.float32) if is_half(param_dtype) else param_dtype
