"""The stateless form: one Adamax step over lists of arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _core

__all__ = ["adamax"]


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
        arithmetic runs in float64 if either the parameter or its state is float64. Updated in
        place.
    steps : sequence of int
        The step number ``t`` (``>= 1``) to use for each array's bias correction.
    lr, beta1, beta2, eps, weight_decay : float
        The hyperparameters (see :class:`adamax_rs.Adamax`).
    maximize, eps_inside_max, decoupled_weight_decay : bool
        The options (see :class:`adamax_rs.Adamax`).
    masters : sequence of numpy.ndarray or None, optional
        Master copies of the parameters in the state dtype: each is updated and rounded into its
        parameter (``None`` entries, or no list, for none).

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
        params, grads, exp_avgs, exp_infs, steps, hyperparameters=hyperparameters, masters=masters
    )
