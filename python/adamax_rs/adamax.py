"""`Adamax`: the optimizer class, a torch-style front for the Rust update."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from . import _compressed, _core
from .dtypes import (
    BLOCKWISE,
    check_flag,
    check_optional_flag,
    check_state_dtype,
    is_bfloat16,
    is_half,
    state_dtype_for,
    state_dtype_name,
)
from .optimizer import Optimizer, ParamGroup

__all__ = ["Adamax", "HYPERPARAMETER_KEYS", "MAX_STEP", "check_hyperparameters"]

#: Every hyperparameter key of an Adamax group, in the order groups list them.
HYPERPARAMETER_KEYS = (
    "lr",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "maximize",
    "eps_inside_max",
    "decoupled_weight_decay",
)

#: The largest step count a parameter's state may hold (a float64 counts exactly up to it).
MAX_STEP = 2**53


def check_hyperparameters(values: Mapping[str, Any], where: str = "") -> _core.Hyperparameters:
    """The hyperparameters in ``values`` (a group dict), checked by the same code as a step.

    Raises ``ValueError`` for a missing key or a value out of range, ``TypeError`` for a value
    of the wrong type; ``where`` prefixes every message, for example ``"param group 1: "``.
    """
    missing = [key for key in HYPERPARAMETER_KEYS if key not in values]
    if missing:
        raise ValueError(f"{where}missing hyperparameter {missing[0]!r}")
    try:
        return _core.Hyperparameters(**{key: values[key] for key in HYPERPARAMETER_KEYS})
    except (TypeError, ValueError) as error:
        raise type(error)(f"{where}{error}") from None


def _split_betas(group: ParamGroup, where: str) -> None:
    """Replace a ``"betas": (b1, b2)`` entry by ``"beta1"`` and ``"beta2"``."""
    if "betas" not in group:
        return
    betas = group.pop("betas")
    if "beta1" in group or "beta2" in group:
        raise ValueError(f"{where}give either 'betas' or 'beta1'/'beta2', not both")
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
    group["beta1"], group["beta2"] = betas


class Adamax(Optimizer):
    r"""The Adamax optimizer (Kingma & Ba, 2015), a variant of Adam based on the infinity norm.

    For each parameter with a gradient, at its step ``t`` (counted per parameter)::

        g     = -grad if maximize else grad
        g     = g + weight_decay * param                 (coupled, the default)
        param = param * (1 - lr * weight_decay)          (with decoupled_weight_decay)
        m     = beta1 * m + (1 - beta1) * g              (torch's fused lerp with eps_inside_max)
        u     = max(beta2 * u, |g|)                      (|g| + eps with eps_inside_max)
        param = param - lr / (1 - beta1**t) * m / (u + eps)   (m / u with eps_inside_max)

    The update runs in Rust, in place on the parameters' own arrays, in one pass over memory,
    on all cores for large parameters, with the GIL released.

    Parameters
    ----------
    params : iterable of Parameter or iterable of dict
        Parameters to optimise, or parameter-group dicts (which may give ``"betas"`` or
        ``"beta1"``/``"beta2"``, and any hyperparameter below).
    lr : float, default 0.002
        Learning rate.
    betas : tuple of float, default (0.9, 0.999)
        Decay rates of the first moment and of the infinity norm, each in ``[0, 1)``.
    eps : float, default 1e-8
        Added to the denominator for numerical stability.
    weight_decay : float, default 0
        L2 penalty added to the gradient (or AdamW-style decay, see
        ``decoupled_weight_decay``).
    maximize : bool, default False
        Maximise the objective instead of minimising it.
    eps_inside_max : bool, default False
        Use ``torch.optim.Adamax``'s formula, eps inside the max (``u = max(beta2 * u,
        |g| + eps)``, ``param -= s * m / u``, as torch and optax do), computed in the order
        of torch's CPU kernels so that the results are torch's to the bit. The default is
        the formula of the Adamax paper, lucid and Keras (eps in the denominator).
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (``param *= 1 - lr * weight_decay``) instead of adding
        the L2 gradient.
    state_dtype : numpy dtype or str, optional
        How ``exp_avg`` and ``exp_inf`` are stored:

        - ``None`` (the default): float32 for float16/bfloat16 parameters, the parameter's
          own dtype otherwise.
        - ``np.float32`` / ``"float32"``, ``np.float64`` / ``"float64"``: that dtype for
          every parameter (complex parameters get complex state of that precision). The
          arithmetic runs in float64 when the parameter or the state is float64, in float32
          otherwise.
        - ``"bfloat16"`` (or ml_dtypes' ``bfloat16``): bfloat16 moments, half the memory of
          float32 state; the arithmetic runs in float32 and the new moments are rounded
          stochastically (by default, see ``stochastic_rounding``) or to nearest (ties to
          even). Needs ml_dtypes.
        - ``"8bit"``: block-wise quantized moments, one byte per element each plus a
          float32 scale per block of 256 elements and moment (``state["exp_avg_scale"]``,
          ``state["exp_inf_scale"]``); the arithmetic runs in float32. Both moments are
          rounded stochastically between their neighbouring codes (by default), or
          ``exp_avg`` truncated toward zero and ``exp_inf`` rounded up; either way no step is
          larger than the float32 bound ``lr / (1 - beta1**t)``. Parameters with fewer than
          4096 elements (and complex or non-dense ones) keep float32 state.

        See docs/compressed_state.md for what each costs and saves.
    master_weights : bool, default False
        For float16/bfloat16 parameters, keep a copy in the state dtype (``state["master"]``;
        float32 with bfloat16 or 8-bit state) that is updated every step and rounded into the
        parameter, so that updates smaller than the parameter's precision are not lost. Other
        parameters are unaffected.
    stochastic_rounding : bool or None, default None
        How bfloat16 and 8-bit state are rounded. ``None`` (the default) is ``True`` with
        those state dtypes and ``False`` otherwise; ``True`` with any other state dtype is a
        ``ValueError``.

        - ``True``: round each new moment to the value above or below at random, with the
          probabilities that make the stored value right on average. With 8-bit state both
          moments are rounded this way between their two neighbouring codes (in the codes'
          normal range; smaller values keep the directed rounding), never past Adamax's bound
          on ``|exp_avg| / exp_inf``. The random bits are a hash of each new value, its
          gradient and the step number, so a run gives the same bits on any number of
          threads and after a resume.
        - ``False``: bfloat16 state is rounded to nearest, ties to even; 8-bit ``exp_avg`` is
          truncated toward zero and ``exp_inf`` rounded up. Both train worse than float32
          state at the default ``beta2``: to nearest, ``exp_inf`` cannot decay by a factor
          ``beta2`` above ``1 - 2**-9`` (``beta2 * u`` rounds back to ``u``), and directed
          8-bit codes shrink the steps. docs/compressed_state.md has the figures.

        Complex parameters (whose state is complex64) are unaffected. Like ``state_dtype``,
        it is not saved in state dicts: pass it again to the optimizer that resumes. The
        attribute ``stochastic_rounding`` holds the resolved bool.

    Attributes
    ----------
    param_groups : list of dict
        Each with the keys ``"params"``, ``"lr"``, ``"beta1"``, ``"beta2"``, ``"eps"``,
        ``"weight_decay"``, ``"maximize"``, ``"eps_inside_max"``,
        ``"decoupled_weight_decay"`` and any extra keys the caller gave. Every value is read
        again at every step.
    state : ParameterState
        For each parameter that has been stepped: ``{"step": int, "exp_avg": ndarray,
        "exp_inf": ndarray}``, the arrays of the state dtype in the parameter's memory
        layout (with 8-bit state: uint8 codes, and the float32 block scales
        ``"exp_avg_scale"`` and ``"exp_inf_scale"``).

    Notes
    -----
    ``load_state_dict`` (and ``load_checkpoint``) converts saved state to this optimizer's
    state dtype where the conversion is well defined:

    - float state into 8-bit: quantized with the step's directed codec (``exp_avg``
      truncated toward zero, ``exp_inf`` rounded up, as with ``stochastic_rounding=False``),
      so that a conversion is deterministic and never underestimates ``exp_inf``;
    - 8-bit state into float: the values the codes and scales stand for (exact in float32
      and float64; rounded to nearest even in bfloat16);
    - any float state into bfloat16: rounded to nearest, ties to even, once;
    - otherwise the saved dtype must convert exactly (bfloat16 or float32 into float32 or
      float64, ...): float64 state does not load into float32 state.

    Raises
    ------
    ValueError
        For an empty parameter list, a parameter given twice, a hyperparameter out of range
        (``lr``, ``eps``, ``weight_decay`` negative or not finite; a beta outside ``[0, 1)``),
        an unknown ``state_dtype``, or ``stochastic_rounding=True`` without bfloat16 or 8-bit
        state.
    TypeError
        For a single parameter instead of an iterable, a bare ndarray, an unsupported dtype,
        a hyperparameter of the wrong type, a ``master_weights`` that is not a bool, or a
        ``stochastic_rounding`` that is neither a bool nor ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> from adamax_rs import Adamax, Parameter
    >>> w = Parameter(np.ones(3, dtype=np.float32))
    >>> opt = Adamax([w], lr=0.1)
    >>> w.grad = np.array([1.0, -1.0, 0.0], dtype=np.float32)
    >>> opt.step()
    >>> w.data
    array([0.9, 1.1, 1. ], dtype=float32)
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.002,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-08,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        eps_inside_max: bool = False,
        decoupled_weight_decay: bool = False,
        state_dtype: Any = None,
        master_weights: bool = False,
        stochastic_rounding: bool | None = None,
    ) -> None:
        self.state_dtype = check_state_dtype(state_dtype)
        self.master_weights = check_flag(master_weights, "master_weights")
        rounding = check_optional_flag(stochastic_rounding, "stochastic_rounding")
        defaults: dict[str, Any] = {"lr": lr, "betas": betas}
        _split_betas(defaults, "")
        defaults.update(
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            eps_inside_max=eps_inside_max,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        check_hyperparameters(defaults)
        self._plan = _core.StepPlan(
            state_dtype=state_dtype_name(self.state_dtype),
            master_weights=self.master_weights,
            stochastic_rounding=rounding,
        )
        #: Whether the state is rounded stochastically (``None`` resolved by the state dtype).
        self.stochastic_rounding: bool = self._plan.stochastic_rounding
        super().__init__(params, defaults)

    def state_keys(self) -> tuple[str, ...]:
        """The arrays of each parameter's state: ``exp_avg``, ``exp_inf``, ``master`` with
        master weights, and the block scales ``exp_avg_scale``, ``exp_inf_scale`` with 8-bit
        state."""
        return (
            ("exp_avg", "exp_inf")
            + (("master",) if self.master_weights else ())
            + (_compressed.SCALE_KEYS if self.state_dtype == BLOCKWISE else ())
        )

    def _keeps_blockwise(self, data: np.ndarray) -> bool:
        """Whether a parameter whose data is ``data`` has 8-bit state in this optimizer."""
        return self.state_dtype == BLOCKWISE and _core.blockwise_fits(data)

    def _normalize_group(
        self, group: ParamGroup, where: str, *, fill_defaults: bool = True
    ) -> ParamGroup:
        _split_betas(group, where)
        if fill_defaults:
            for key in HYPERPARAMETER_KEYS:
                group.setdefault(key, self.defaults[key])
        check_hyperparameters(group, where)
        ordered = {key: group[key] for key in HYPERPARAMETER_KEYS}
        ordered.update((key, value) for key, value in group.items() if key not in ordered)
        return ordered

    def _check_state(self, param: Any, state: Mapping[str, Any], where: str) -> dict[str, Any]:
        # Each value read once: what is checked below is what is kept (a Mapping may give
        # another value at each read).
        state = dict(state)
        data = param.data
        master = self.master_weights and is_half(data.dtype)
        blockwise = self._keeps_blockwise(data)
        saved_codes = isinstance(state.get("exp_avg"), np.ndarray) and state["exp_avg"].dtype == (
            np.uint8
        )
        arrays = ("exp_avg", "exp_inf") + (("master",) if master else ())
        scales = _compressed.SCALE_KEYS if saved_codes else ()
        missing = [key for key in ("step",) + arrays + scales if key not in state]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(map(repr, missing))}")
        step = state["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
            raise TypeError(f"{where}: 'step' must be an int, got {type(step).__name__}")
        step = int(step)
        if not 0 <= step <= MAX_STEP:
            raise ValueError(f"{where}: 'step' must be between 0 and 2**53, got {step}")
        extra = sorted(set(state) - {"step", *arrays, *scales})
        if extra:
            raise ValueError(f"{where}: unexpected keys {extra}")
        for key in arrays + scales:
            value = state[key]
            if not isinstance(value, np.ndarray):
                raise TypeError(
                    f"{where}: {key!r} must be a numpy.ndarray, got {type(value).__name__}"
                )
        kept: dict[str, Any] = {"step": step}
        moments = {key: state[key] for key in ("exp_avg", "exp_inf")}
        if saved_codes:
            moments = self._saved_codes(data, state, where)
            if blockwise:
                kept.update(moments)
                moments = {}
            else:
                exp_avg, exp_inf = _compressed.dequantize(**moments)
                moments = {"exp_avg": exp_avg, "exp_inf": exp_inf}
        elif blockwise:
            self._check_float_moments(data, moments, np.dtype(np.float64), where, exact=False)
            if np.any(moments["exp_inf"] < 0):
                raise ValueError(f"{where}: 'exp_inf' has negative values")
            kept.update(_compressed.quantize(moments["exp_avg"], moments["exp_inf"], data))
            moments = {}
        target = state_dtype_for(data.dtype, self.state_dtype)
        if moments:
            kept.update(self._check_float_moments(data, moments, target, where))
        if master:
            master_dtype = np.dtype(np.float64 if target == np.float64 else np.float32)
            kept.update(
                self._check_float_moments(data, {"master": state["master"]}, master_dtype, where)
            )
        return kept

    @staticmethod
    def _saved_codes(data: np.ndarray, state: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Saved 8-bit state (codes and scales), checked and copied into ``data``'s layout."""
        blocks = _compressed.block_count(data.size)
        if data.dtype.kind == "c":
            raise ValueError(f"{where}: 8-bit state (uint8 codes) is for real parameters only")
        codes: dict[str, Any] = {}
        for key in ("exp_avg", "exp_inf"):
            value = state[key]
            if value.dtype != np.uint8:
                raise TypeError(
                    f"{where}: {key!r} has dtype {value.dtype}; with uint8 'exp_avg' codes "
                    "(8-bit state) it must be uint8 too"
                )
            if value.shape != data.shape:
                raise ValueError(
                    f"{where}: {key!r} has shape {value.shape}, "
                    f"the parameter has shape {data.shape}"
                )
            # Codes whose strides are all 0 (one value broadcast, or a checkpoint's stand-in)
            # are the same in every order.
            if any(value.strides) and _compressed.axis_order(
                value.shape, value.strides
            ) != _compressed.axis_order(data.shape, data.strides):
                raise ValueError(
                    f"{where}: {key!r} (8-bit codes) has another memory layout (strides "
                    f"{value.strides}) than the parameter (strides {data.strides}), so which "
                    f"elements each block of {_compressed.BLOCK} holds is ambiguous: load it "
                    "into a parameter laid out as the one it was saved from, and keep the codes "
                    "laid out as saved"
                )
            copy = np.empty_like(data, dtype=np.uint8)
            copy[...] = value
            codes[key] = copy
        for key in _compressed.SCALE_KEYS:
            value = state[key]
            if value.dtype != np.float32:
                raise TypeError(f"{where}: {key!r} has dtype {value.dtype}, it must be float32")
            if value.shape != (blocks,):
                raise ValueError(
                    f"{where}: {key!r} has shape {value.shape}; 8-bit state of "
                    f"{data.size} elements has one scale per block of {_compressed.BLOCK}: "
                    f"({blocks},)"
                )
            if np.any(value < 0):
                raise ValueError(f"{where}: {key!r} has negative scales")
            codes[key] = np.array(value, dtype=np.float32, order="C")
        return codes

    @staticmethod
    def _check_float_moments(
        data: np.ndarray,
        arrays: Mapping[str, np.ndarray],
        target: np.dtype,
        where: str,
        *,
        exact: bool = True,
    ) -> dict[str, np.ndarray]:
        """Float state arrays checked and converted to ``target`` in ``data``'s layout.

        Conversions must be exact, except into bfloat16 (rounded to nearest even) and, with
        ``exact=False``, into the float64 that 8-bit quantization reads.
        """
        kept: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            if value.shape != data.shape:
                raise ValueError(
                    f"{where}: {key!r} has shape {value.shape}, "
                    f"the parameter has shape {data.shape}"
                )
            floating = value.dtype.kind in "fc" or is_bfloat16(value.dtype)
            rounded = is_bfloat16(target) or not exact
            fits = value.dtype == target or (
                floating
                and (
                    np.can_cast(value.dtype, target, "safe")
                    or (rounded and (value.dtype.kind == "c") == (target.kind == "c"))
                )
            )
            if not fits:
                raise TypeError(
                    f"{where}: {key!r} has dtype {value.dtype}, which does not convert exactly "
                    f"to this optimizer's state dtype {target} for the parameter"
                )
            # A fresh array in the parameter's own memory layout, so the step stays on the
            # flat fast path.
            copy = np.empty_like(data, dtype=target)
            if is_bfloat16(target) and value.dtype != target:
                copy[...] = _compressed.to_bfloat16(np.asarray(value))
            else:
                copy[...] = value
            kept[key] = copy
        return kept

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single Adamax step over every parameter that has a gradient.

        Parameters
        ----------
        closure : callable, optional
            Called once before the update (typically: zero the gradients, compute the loss, set
            the gradients); its return value is returned. If it raises, nothing is updated.

        Returns
        -------
        object
            What ``closure`` returned, or ``None``.

        Raises
        ------
        TypeError
            A gradient or state array with the wrong dtype, or a hyperparameter of the wrong
            type.
        ValueError
            A gradient with the wrong shape, a read-only parameter, a gradient sharing memory
            with its parameter, or a hyperparameter out of range. Messages name the group and
            the parameter's index in it. Every check runs before any array is written: after an
            error, all parameters and all state are exactly as before. The update and the
            step counts are committed together, so an interrupt (Ctrl-C) lands before the step
            or after it, never inside.
        """
        with self._lock:
            loss = closure() if closure is not None else None
            self._plan.step(self.param_groups, self.state)
            return loss
