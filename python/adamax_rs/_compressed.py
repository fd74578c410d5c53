"""Converting optimizer state between float and compressed forms (bfloat16, 8-bit blocks).

What loading a state dict or checkpoint with another state dtype than the optimizer's uses.
The 8-bit codec is the Rust kernel's own (``_core.quantize_moments`` and
``_core.dequantize_moments``), so a converted state is exactly what a step would have stored.

8-bit state follows the parameter's memory: the codes are laid out like the parameter, and
block ``b`` (its two float32 scales) covers elements ``256 b`` to ``256 b + 255`` in the order
they sit in memory. The helpers here keep to that order for any dense layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _core
from .dtypes import bfloat16_dtype

__all__ = [
    "BLOCK",
    "SCALE_KEYS",
    "block_count",
    "dequantize",
    "memory_order",
    "quantize",
    "to_bfloat16",
]

#: Elements per block of 8-bit state (one float32 scale per block and moment).
BLOCK: int = _core.BLOCK
#: The keys of the block scales in the state of a parameter with 8-bit state.
SCALE_KEYS = ("exp_avg_scale", "exp_inf_scale")


def block_count(size: int) -> int:
    """The number of blocks (and of scales per moment) of 8-bit state of ``size`` elements."""
    return -(-size // BLOCK)


def axis_order(shape: Sequence[int], strides: Sequence[int]) -> tuple[int, ...]:
    """The axes longer than 1, from the slowest to the fastest in memory.

    A block of 8-bit state holds elements that follow each other in memory, so codes can be
    read into a parameter only if both have the same axis order (numpy arrays and torch
    tensors alike: pass ``tensor.shape, tensor.stride()``).
    """
    axes = sorted(range(len(shape)), key=lambda axis: -strides[axis])
    return tuple(axis for axis in axes if shape[axis] > 1)


def memory_order(array: np.ndarray) -> np.ndarray:
    """A flat view of a dense array with positive strides (as ``np.empty_like`` makes), its
    elements in the order they sit in memory."""
    axes = sorted(range(array.ndim), key=lambda axis: -array.strides[axis])
    flat: np.ndarray = array.transpose(axes).reshape(-1)
    if array.size > 1 and not np.shares_memory(flat, array):
        raise ValueError("internal error: state arrays must be dense")  # pragma: no cover
    return flat


def to_bfloat16(values: np.ndarray) -> np.ndarray:
    """``values`` (any float dtype) rounded once to bfloat16, to nearest, ties to even.

    float64 (and any wider float, in either byte order) goes through float32 rounded to odd
    (toward zero, then the last bit set when inexact), which keeps the final rounding to
    bfloat16 correct: a plain float64 -> float32 -> bfloat16 cast rounds twice and can break
    ties the wrong way.
    """
    bfloat16 = bfloat16_dtype()
    if values.dtype.itemsize <= 4:
        # float16, bfloat16 and float32 values are all float32 values: one rounding.
        once: np.ndarray = values.astype(np.float32).astype(bfloat16)
        return once
    # Wider floats in any byte order (``>f8`` from a file, long double): compared in their own
    # dtype, so that no value is rounded on its way to the comparison.
    wide = values.dtype
    narrow = values.astype(np.float32)
    inexact = np.isfinite(narrow) & (narrow.astype(wide) != values)
    # Toward zero: step back where rounding to nearest went outward.
    outward = inexact & (np.abs(narrow.astype(wide)) > np.abs(values))
    narrow = np.where(outward, np.nextafter(narrow, np.float32(0)), narrow)
    bits = narrow.view(np.uint32) | inexact.astype(np.uint32)
    rounded: np.ndarray = bits.view(np.float32).astype(bfloat16)
    return rounded


def quantize(exp_avg: np.ndarray, exp_inf: np.ndarray, like: np.ndarray) -> dict[str, np.ndarray]:
    """8-bit state for a parameter laid out like ``like`` from float moments of its shape.

    Returns ``{"exp_avg": codes, "exp_inf": codes, "exp_avg_scale": ..., "exp_inf_scale":
    ...}``: uint8 codes laid out like ``like`` and float32 scales, encoded as a step with
    ``stochastic_rounding=False`` encodes them (``exp_avg`` truncated toward zero, ``exp_inf``
    rounded up): deterministic, and never below the saved ``exp_inf``. ``ValueError`` when
    ``exp_inf`` has a negative value.
    """
    flat = []
    for values in (exp_avg, exp_inf):
        wide = np.empty_like(like, dtype=np.float64)
        wide[...] = values
        flat.append(np.ascontiguousarray(memory_order(wide)))
    m_codes, m_scales, u_codes, u_scales = _core.quantize_moments(flat[0], flat[1])
    state: dict[str, np.ndarray] = {}
    for key, codes in (("exp_avg", m_codes), ("exp_inf", u_codes)):
        out = np.empty_like(like, dtype=np.uint8)
        memory_order(out)[...] = codes
        state[key] = out
    state["exp_avg_scale"] = m_scales
    state["exp_inf_scale"] = u_scales
    return state


def dequantize(
    exp_avg: np.ndarray,
    exp_inf: np.ndarray,
    exp_avg_scale: np.ndarray,
    exp_inf_scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 moments that 8-bit state stands for (what a step reads), laid out like
    the codes."""
    flat = [np.ascontiguousarray(memory_order(np.array(c, order="K"))) for c in (exp_avg, exp_inf)]
    m, u = _core.dequantize_moments(
        flat[0],
        np.ascontiguousarray(exp_avg_scale, dtype=np.float32),
        flat[1],
        np.ascontiguousarray(exp_inf_scale, dtype=np.float32),
    )
    out = []
    for codes, values in ((exp_avg, m), (exp_inf, u)):
        array = np.empty_like(codes, dtype=np.float32)
        memory_order(array)[...] = values
        out.append(array)
    return out[0], out[1]
