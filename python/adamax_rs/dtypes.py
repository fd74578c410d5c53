"""Which element types the optimizer updates, and in which type it keeps their state.

Parameters may be float16, bfloat16 (the ``ml_dtypes`` dtype, when that package is
installed), float32, float64, complex64 or complex128. The Rust core updates complex
parameters as pairs of reals, as torch does (``view_as_real``). The state (``exp_avg``,
``exp_inf``, and the master copy with master weights) is float32 for 16-bit parameters and has
the parameter's own precision otherwise, unless ``state_dtype`` asks for float32, float64,
bfloat16 (moments stored in bfloat16, arithmetic in float32) or ``"8bit"`` (block-wise
quantized moments, see :mod:`adamax_rs._compressed`).
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

__all__ = [
    "BLOCKWISE",
    "StateDtype",
    "bfloat16_dtype",
    "check_flag",
    "check_optional_flag",
    "check_state_dtype",
    "state_dtype_name",
    "describe_supported",
    "is_bfloat16",
    "is_half",
    "is_supported",
    "state_dtype_for",
    "torch_hint",
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


def torch_hint(obj: object) -> str:
    """The end of a message refusing ``obj`` where a numpy array was expected: where a torch
    tensor goes instead (empty for anything else). Does not import torch."""
    if type(obj).__module__.split(".")[0] == "torch":
        return "; for torch tensors use adamax_rs.torch.Adamax"
    return ""


#: The ``state_dtype`` value of 8-bit block-wise state.
BLOCKWISE = "8bit"

#: What :func:`check_state_dtype` returns: ``None`` (the default), a float dtype (float32,
#: float64, ml_dtypes' bfloat16) or :data:`BLOCKWISE`.
StateDtype = Union[np.dtype, str, None]

_ACCEPTED = "None, 'float32', 'float64', 'bfloat16' (or its ml_dtypes dtype) or '8bit'"


def bfloat16_dtype() -> np.dtype:
    """ml_dtypes' bfloat16 dtype; ``ImportError`` with what to install when it is missing."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            "bfloat16 arrays need the ml_dtypes package: pip install ml_dtypes"
        ) from None
    dtype: np.dtype = np.dtype(ml_dtypes.bfloat16)
    return dtype


def check_flag(value: Any, name: str) -> bool:
    """``value`` as a bool: ``True``, ``False`` or a numpy bool; ``TypeError`` naming ``name``
    otherwise (an option such as ``master_weights``)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_optional_flag(value: Any, name: str) -> bool | None:
    """``value`` as a bool, or ``None`` (an option whose default depends on another, such as
    ``stochastic_rounding``); ``TypeError`` naming ``name`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool or None, got {type(value).__name__}")
    return bool(value)


def check_state_dtype(state_dtype: Any) -> StateDtype:
    """``state_dtype`` checked: ``None``, float32, float64, bfloat16 or ``"8bit"``.

    A string or dtype that names anything else is a ``ValueError``; an object that is
    neither (a number, a list) is a ``TypeError``. Both name ``state_dtype``.
    """
    if state_dtype is None:
        return None
    if isinstance(state_dtype, str):
        if state_dtype == BLOCKWISE:
            return BLOCKWISE
        if state_dtype == "bfloat16":
            return bfloat16_dtype()
        if state_dtype in ("float32", "float64"):
            return np.dtype(state_dtype)
        raise ValueError(f"state_dtype must be {_ACCEPTED}, got {state_dtype!r}")
    if not isinstance(state_dtype, (np.dtype, type)):
        raise TypeError(
            f"state_dtype must be {_ACCEPTED}, got a {type(state_dtype).__name__}: {state_dtype!r}"
        )
    try:
        dtype: np.dtype = np.dtype(state_dtype)
    except TypeError:
        raise TypeError(f"state_dtype must be {_ACCEPTED}, got {state_dtype!r}") from None
    if dtype in _STATE or is_bfloat16(dtype):
        return dtype
    raise ValueError(f"state_dtype must be {_ACCEPTED}, got {dtype}")


def state_dtype_name(state_dtype: StateDtype) -> str | None:
    """The name the Rust core takes for a checked ``state_dtype``."""
    if state_dtype is None or isinstance(state_dtype, str):
        return state_dtype
    return str(state_dtype.name)


def state_dtype_for(param_dtype: np.dtype, requested: StateDtype) -> np.dtype:
    """The float dtype of the state arrays of a parameter of ``param_dtype``.

    16-bit parameters default to float32 state, others to their own precision; complex
    parameters get complex state of the chosen real precision (complex64 for bfloat16 and
    8-bit, which have no complex form). For ``"8bit"`` this is the dtype of the parameters
    that keep float state (float32: complex, small or not dense ones).
    """
    if param_dtype.kind == "c":
        wide = requested == np.float64 or (requested is None and param_dtype == np.complex128)
        return np.dtype(np.complex128 if wide else np.complex64)
    if isinstance(requested, str):
        return np.dtype(np.float32)
    if requested is not None:
        return requested
    return np.dtype(np.float32) if is_half(param_dtype) else param_dtype
