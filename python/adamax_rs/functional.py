"""The stateless form: one Adamax step over lists of arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _compressed, _core
from .dtypes import (
    BLOCKWISE,
    check_flag,
    check_optional_flag,
    check_state_dtype,
    describe_supported,
    is_half,
    is_supported,
    state_dtype_for,
    torch_hint,
)

__all__ = ["adamax", "new_state"]


def new_state(
    param: np.ndarray, *, state_dtype: Any = None, master_weights: bool = False
) -> dict[str, np.ndarray]:
    """Fresh (zero) state for ``param``, as :class:`adamax_rs.Adamax` would make it.

    Parameters
    ----------
    param : numpy.ndarray
        The parameter; the state arrays get its shape and memory layout.
    state_dtype : numpy dtype or str, optional
        As in :class:`adamax_rs.Adamax`: ``None``, float32, float64, ``"bfloat16"`` or
        ``"8bit"``.
    master_weights : bool, default False
        Add a ``"master"`` copy of a float16/bfloat16 parameter (float32, or float64 with
        float64 state).

    Returns
    -------
    dict
        ``{"exp_avg": ..., "exp_inf": ...}``, with ``"exp_avg_scale"`` and
        ``"exp_inf_scale"`` for 8-bit state (which parameters under 4096 elements, complex
        or non-dense ones do not get: they get float32 state), and ``"master"`` when asked.
        Pass them to :func:`adamax` as ``exp_avgs``, ``exp_infs``, ``exp_avg_scales``,
        ``exp_inf_scales`` and ``masters``.

    Raises
    ------
    TypeError
        If ``param`` is not a numpy array of a supported dtype (native byte order),
        ``master_weights`` is not a bool, or ``state_dtype`` is not a dtype or a string.
    ValueError
        If ``state_dtype`` names an unsupported type.
    """
    if not isinstance(param, np.ndarray):
        raise TypeError(
            f"param must be a numpy.ndarray, got {type(param).__name__}{torch_hint(param)}"
        )
    if not is_supported(param.dtype):
        raise TypeError(
            f"param has dtype {param.dtype}, which is not supported ({describe_supported()})"
        )
    master_weights = check_flag(master_weights, "master_weights")
    requested = check_state_dtype(state_dtype)
    state: dict[str, np.ndarray] = {}
    if requested == BLOCKWISE and _core.blockwise_fits(param):
        state["exp_avg"] = np.zeros_like(param, dtype=np.uint8)
        state["exp_inf"] = np.zeros_like(param, dtype=np.uint8)
        blocks = _compressed.block_count(param.size)
        state["exp_avg_scale"] = np.zeros(blocks, np.float32)
        state["exp_inf_scale"] = np.zeros(blocks, np.float32)
        target = np.dtype(np.float32)
    else:
        target = state_dtype_for(param.dtype, requested)
        state["exp_avg"] = np.zeros_like(param, dtype=target)
        state["exp_inf"] = np.zeros_like(param, dtype=target)
    if master_weights and is_half(param.dtype):
        wide = np.float64 if target == np.float64 else np.float32
        state["master"] = param.astype(wide, order="K")
    return state


def adamax(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray | None],
    exp_avgs: Sequence[np.ndarray],
    exp_infs: Sequence[np.ndarray],
    steps: Sequence[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    maximize: bool = False,
    eps_inside_max: bool = False,
    decoupled_weight_decay: bool = False,
    masters: Sequence[np.ndarray | None] | None = None,
    exp_avg_scales: Sequence[np.ndarray | None] | None = None,
    exp_inf_scales: Sequence[np.ndarray | None] | None = None,
    stochastic_rounding: bool | None = None,
) -> None:
    """Apply one Adamax step in place to each array of ``params``.

    This is the computation behind :meth:`adamax_rs.Adamax.step`, without the bookkeeping: the
    caller owns the state arrays and the step counts. Both run through the same checks and the
    same engine in the Rust core.

    Parameters
    ----------
    params : sequence of numpy.ndarray
        float16, bfloat16, float32, float64, complex64 or complex128 arrays, updated in place.
    grads : sequence of numpy.ndarray or None
        One gradient per parameter, same shape and dtype; ``None`` skips that parameter.
    exp_avgs, exp_infs : sequence of numpy.ndarray
        The first moment and the infinity norm of each parameter (zeros before the first step),
        same shape, float32 or float64 (complex64 or complex128 for complex parameters); the
        arithmetic runs in float64 if either the parameter or its state is float64. Also
        bfloat16 (rounded after float32 arithmetic, see ``stochastic_rounding``), or uint8
        codes of 8-bit state, laid out like the parameter, with their scales in
        ``exp_avg_scales`` and ``exp_inf_scales``. :func:`new_state` makes them. Updated in place.
    steps : sequence of int
        The step number ``t`` (``>= 1``) to use for each array's bias correction.
    lr, beta1, beta2, eps, weight_decay : float
        The hyperparameters (see :class:`adamax_rs.Adamax`).
    maximize, eps_inside_max, decoupled_weight_decay : bool
        The options (see :class:`adamax_rs.Adamax`).
    masters : sequence of numpy.ndarray or None, optional
        Master copies of the parameters in the state dtype: each is updated and rounded into its
        parameter (``None`` entries, or no list, for none).
    exp_avg_scales, exp_inf_scales : sequence of numpy.ndarray or None, optional
        The float32 block scales of 8-bit state (one per 256 elements, in the parameter's
        memory order), updated in place; ``None`` entries for parameters with float state.
        Give both lists or neither.
    stochastic_rounding : bool or None, default None
        Round bfloat16 and 8-bit state stochastically (``True``, and ``None``, the default),
        or bfloat16 to nearest even and 8-bit in fixed directions (``False``): see
        :class:`adamax_rs.Adamax`. float32 and float64 state are unaffected.

    Raises
    ------
    TypeError, ValueError
        As :meth:`adamax_rs.Adamax.step`; nothing is written when anything is wrong.
    """
    hyperparameters = _core.Hyperparameters(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        maximize=maximize,
        eps_inside_max=eps_inside_max,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    _core.adamax_arrays(
        params,
        grads,
        exp_avgs,
        exp_infs,
        steps,
        hyperparameters=hyperparameters,
        masters=masters,
        exp_avg_scales=exp_avg_scales,
        exp_inf_scales=exp_inf_scales,
        # None: stochastically, as True (it leaves float32 and float64 state as they are).
        stochastic_rounding=check_optional_flag(stochastic_rounding, "stochastic_rounding")
        is not False,
    )
