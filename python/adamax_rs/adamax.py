"""`Adamax`: the optimizer class, a torch-style front for the Rust update."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import numpy as np

from . import _core
from ._hyperparameters import HYPERPARAMETER_KEYS, checked_hyperparameters
from .dtypes import check_state_dtype, is_half, real_view, state_dtype_for
from .optimizer import Optimizer, ParamGroup

__all__ = ["Adamax"]


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
    state_dtype : numpy dtype, optional
        The dtype of ``exp_avg`` and ``exp_inf``: ``None`` (the default) means float32 for
        float16/bfloat16 parameters and the parameter's own dtype otherwise; ``np.float32``
        or ``np.float64`` may be asked for any parameter (complex parameters get complex
        state of that precision). The arithmetic runs in float64 when either the parameter
        or the state is float64, in float32 otherwise.
    master_weights : bool, default False
        For float16/bfloat16 parameters, keep a copy in the state dtype (``state["master"]``)
        that is updated every step and rounded into the parameter, so that updates smaller
        than the parameter's precision are not lost. Other parameters are unaffected.

    Attributes
    ----------
    param_groups : list of dict
        Each with the keys ``"params"``, ``"lr"``, ``"beta1"``, ``"beta2"``, ``"eps"``,
        ``"weight_decay"``, ``"maximize"``, ``"eps_inside_max"``,
        ``"decoupled_weight_decay"`` and any extra keys the caller gave. Every value is read
        again at every step.
    state : ParameterState
        For each parameter that has been stepped: ``{"step": int, "exp_avg": ndarray,
        "exp_inf": ndarray}``, the arrays with the parameter's dtype and memory layout.

    Raises
    ------
    ValueError
        For an empty parameter list, a parameter given twice, or a hyperparameter out of
        range (``lr``, ``eps``, ``weight_decay`` negative or not finite; a beta outside
        ``[0, 1)``).
    TypeError
        For a single parameter instead of an iterable, a bare ndarray, an unsupported dtype,
        or a hyperparameter of the wrong type.

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
    ) -> None:
        self.state_dtype = check_state_dtype(state_dtype)
        if not isinstance(master_weights, (bool, np.bool_)):
            raise TypeError(f"master_weights must be a bool, got {type(master_weights).__name__}")
        self.master_weights = bool(master_weights)
        defaults: dict[str, Any] = {"lr": lr, "betas": betas}
        _split_betas(defaults, "")
        defaults.update(
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            eps_inside_max=eps_inside_max,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        checked_hyperparameters(defaults)
        self._plans: dict[int, tuple[Any, ...]] = {}
        super().__init__(params, defaults)

    def _normalize_group(
        self, group: ParamGroup, where: str, *, fill_defaults: bool = True
    ) -> ParamGroup:
        _split_betas(group, where)
        if fill_defaults:
            for key in HYPERPARAMETER_KEYS:
                group.setdefault(key, self.defaults[key])
        checked_hyperparameters(group, where)
        ordered = {key: group[key] for key in HYPERPARAMETER_KEYS}
        ordered.update((key, value) for key, value in group.items() if key not in ordered)
        return ordered

    def _check_state(self, param: Any, state: Mapping[str, Any], where: str) -> dict[str, Any]:
        data = param.data
        master = self.master_weights and is_half(data.dtype)
        arrays = ("exp_avg", "exp_inf") + (("master",) if master else ())
        missing = [key for key in ("step",) + arrays if key not in state]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(map(repr, missing))}")
        step = state["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
            raise TypeError(f"{where}: 'step' must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"{where}: 'step' must be >= 0, got {step}")
        target = state_dtype_for(data.dtype, self.state_dtype)
        kept: dict[str, Any] = {"step": int(step)}
        for key in arrays:
            value = state[key]
            if not isinstance(value, np.ndarray):
                raise TypeError(
                    f"{where}: {key!r} must be a numpy.ndarray, got {type(value).__name__}"
                )
            if value.shape != data.shape:
                raise ValueError(
                    f"{where}: {key!r} has shape {value.shape}, "
                    f"the parameter has shape {data.shape}"
                )
            if value.dtype != target and not np.can_cast(value.dtype, target, "safe"):
                raise TypeError(
                    f"{where}: {key!r} has dtype {value.dtype}, which does not convert exactly "
                    f"to this optimizer's state dtype {target} for the parameter"
                )
            # A fresh array in the parameter's own memory layout, so the step stays on the
            # flat fast path.
            copy = np.empty_like(data, dtype=target)
            copy[...] = value
            kept[key] = copy
        extra = sorted(set(state) - set(kept))
        if extra:
            raise ValueError(f"{where}: unexpected keys {extra}")
        return kept

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single Adamax step over every parameter that has a gradient.

        Parameters
        ----------
        closure : callable, optional
            Called once before the update (typically: zero the gradients, compute the loss,
            set the gradients); its return value is returned. If it raises, nothing is
            updated.

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
            the parameter's index in it. Every check runs before any array is written: after
            an error, all parameters and all state are exactly as before.
        """
        with self._lock:
            loss = closure() if closure is not None else None
            batch = []
            created: list[tuple[Any, dict[str, Any]]] = []
            stepped = []
            for g, group in enumerate(self.param_groups):
                hyper = checked_hyperparameters(group, f"group {g}: ", check_ranges=False)
                params, states, complex_positions = self._group_plan(g, group)
                grads = [p.grad for p in params]
                datas = [p.data for p in params]
                if None in states:
                    states = list(states)
                    for index, (grad, state) in enumerate(zip(grads, states)):
                        if state is None and grad is not None:
                            states[index] = self._new_state(datas[index], g, index)
                            created.append((params[index], states[index]))
                exp_avgs = [state and state["exp_avg"] for state in states]
                exp_infs = [state and state["exp_inf"] for state in states]
                if self.master_weights:
                    masters = [state and state.get("master") for state in states]
                else:
                    masters = [None] * len(states)
                steps = [state["step"] + 1 if state else 0 for state in states]
                if complex_positions:
                    self._as_reals(g, complex_positions, datas, grads, exp_avgs, exp_infs)
                batch.append((datas, grads, exp_avgs, exp_infs, masters, steps, hyper))
                stepped.append((states, grads, steps))
            _core.adamax_step(batch)
            for param, state in created:
                self.state[param] = state
            for states, grads, steps in stepped:
                for state, grad, t in zip(states, grads, steps):
                    if grad is not None:
                        state["step"] = t
            return loss

    @staticmethod
    def _as_reals(g: int, positions: list[int], *lists: list[Any]) -> None:
        """Replace complex arrays by their real views (as torch's ``view_as_real``)."""
        datas, grads = lists[0], lists[1]
        for i in positions:
            data, grad = datas[i], grads[i]
            if grad is None or not isinstance(data, np.ndarray) or data.dtype.kind != "c":
                continue
            if not isinstance(grad, np.ndarray) or grad.dtype != data.dtype:
                got = grad.dtype if isinstance(grad, np.ndarray) else type(grad).__name__
                raise TypeError(
                    f"group {g}, parameter {i}: the gradient has dtype {got} but the "
                    f"parameter has dtype {data.dtype}"
                )
            for values in lists:
                array = values[i]
                if isinstance(array, np.ndarray) and array.dtype.kind == "c":
                    values[i] = real_view(array)

    def _group_plan(self, g: int, group: ParamGroup) -> tuple[list[Any], list[Any], list[int]]:
        """The group's parameters, their state dicts (``None`` where there is none yet), and
        the positions of complex parameters.

        Cached between steps: rebuilt only when the group's parameter list or the state
        mapping changed, so a step does not look up every parameter's state again.
        """
        params = group["params"]
        state = self.state
        cached = self._plans.get(id(group))
        if (
            cached is not None
            and cached[0] is group
            and cached[1] is state
            and cached[2] == state.version
            and cached[3] == params
        ):
            return cached[3], cached[4], cached[5]
        states = []
        for index, param in enumerate(params):
            entry = state.get(param)
            if entry:
                missing = [k for k in ("step", "exp_avg", "exp_inf") if k not in entry]
                if missing:
                    raise ValueError(f"group {g}, parameter {index}: state lacks {missing}")
            states.append(entry or None)
        complex_positions = [
            i
            for i, p in enumerate(params)
            if isinstance(p.data, np.ndarray) and p.data.dtype.kind == "c"
        ]
        if len(self._plans) > 4 * len(self.param_groups):
            self._plans.clear()  # groups were replaced: drop plans of groups that are gone
        self._plans[id(group)] = (
            group,
            state,
            state.version,
            list(params),
            states,
            complex_positions,
        )
        return list(params), states, complex_positions

    def _new_state(self, data: Any, group: int, index: int) -> dict[str, Any]:
        if not isinstance(data, np.ndarray):
            raise TypeError(
                f"group {group}, parameter {index}: .data must be a numpy.ndarray, "
                f"got {type(data).__name__}"
            )
        dtype = state_dtype_for(data.dtype, self.state_dtype)
        state = {
            "step": 0,
            "exp_avg": np.zeros_like(data, dtype=dtype),
            "exp_inf": np.zeros_like(data, dtype=dtype),
        }
        if self.master_weights and is_half(data.dtype):
            state["master"] = data.astype(dtype, order="K")
        return state
