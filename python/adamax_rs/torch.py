"""``adamax_rs.torch.Adamax``: a drop-in ``torch.optim.Optimizer`` whose update runs in Rust.

Swap ``torch.optim.Adamax`` for ``adamax_rs.torch.Adamax`` in a CPU training script: same
constructor, same ``param_groups`` keys, same ``state`` (``step``, ``exp_avg``, ``exp_inf``),
state dicts that load into each other, and the same numbers (``eps_inside_max=True``, the
default here, computes torch's formula in torch's order of operations). The update is the Rust
engine's, in place on the tensors' memory (read through DLPack, never copied), in one pass,
on all cores for large steps, with the GIL released.

torch is an optional dependency: ``pip install "adamax_rs[torch]"``. ``import adamax_rs`` never
imports it; importing this module does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch.optim import Optimizer

from . import _compressed, _core
from ._fork import track
from .dtypes import BLOCKWISE, check_optional_flag

__all__ = ["Adamax"]

#: The element types of the parameters this optimizer updates.
SUPPORTED_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)

#: The state dtypes asked for by name, and what they stand for.
_STATE_DTYPE_NAMES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    BLOCKWISE: BLOCKWISE,
}
_ACCEPTED = (
    "None, torch.float32, torch.float64, torch.bfloat16 (or their names 'float32', 'float64', "
    "'bfloat16') or '8bit'"
)
#: The keys of a parameter's state tensors that a state dict may hold.
_STATE_TENSOR_KEYS = ("exp_avg", "exp_inf") + _compressed.SCALE_KEYS


def _check_state_dtype(state_dtype: Any) -> torch.dtype | str | None:
    """``state_dtype`` as a torch dtype or ``"8bit"`` (``None`` stays); ``ValueError`` for a
    name or dtype of anything else, ``TypeError`` for any other object."""
    if state_dtype is None:
        return None
    if isinstance(state_dtype, str):
        if state_dtype in _STATE_DTYPE_NAMES:
            return _STATE_DTYPE_NAMES[state_dtype]
        raise ValueError(f"state_dtype must be {_ACCEPTED}, got {state_dtype!r}")
    if not isinstance(state_dtype, torch.dtype):
        raise TypeError(
            f"state_dtype must be {_ACCEPTED}, got a {type(state_dtype).__name__}: {state_dtype!r}"
        )
    if state_dtype not in (torch.float32, torch.float64, torch.bfloat16):
        raise ValueError(f"state_dtype must be {_ACCEPTED}, got {state_dtype}")
    return state_dtype


def _core_name(state_dtype: torch.dtype | str | None) -> str | None:
    """The name the Rust core takes for a checked state dtype."""
    if state_dtype is None or isinstance(state_dtype, str):
        return state_dtype
    return str(state_dtype).replace("torch.", "")


_StepSizeDtype = Literal["float64", "float32", "float16", "bfloat16"]
#: The type torch's for-loop divides a tensor lr of each dtype by the bias correction in.
_STEP_SIZE_DTYPES: dict[torch.dtype, _StepSizeDtype] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as a numpy array laid out as the tensor (bfloat16 as float32)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def _scalar(value: Any) -> Any:
    """A 1-element tensor as a Python number (torch allows tensor ``lr`` and betas)."""
    return value.item() if isinstance(value, torch.Tensor) else value


def _check_tensor(param: torch.Tensor, where: str) -> None:
    if param.is_sparse:
        raise ValueError(f"{where}: sparse parameters are not supported")
    if param.device.type != "cpu":
        raise ValueError(
            f"{where} is on {param.device}; adamax_rs.torch.Adamax updates tensors on the CPU "
            "only (use torch.optim.Adamax for tensors on other devices)"
        )
    if param.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{where} has dtype {param.dtype}, which is not supported (float16, bfloat16, "
            "float32, float64, complex64 or complex128)"
        )


def _refuse_unsupported(group: Mapping[str, Any], where: str) -> None:
    if group.get("differentiable"):
        raise ValueError(
            f"{where}differentiable=True is not supported: adamax_rs updates the tensors' memory "
            "outside autograd; use torch.optim.Adamax(differentiable=True)"
        )
    if group.get("capturable"):
        raise ValueError(
            f"{where}capturable=True is not supported: it is for CUDA graph capture, and "
            "adamax_rs.torch.Adamax updates CPU tensors; use torch.optim.Adamax(capturable=True)"
        )


class Adamax(Optimizer):
    r"""The Adamax optimizer for torch CPU tensors, with the update in Rust.

    A drop-in replacement for :class:`torch.optim.Adamax`: the same signature, defaults,
    ``param_groups`` keys and state, plus four options of adamax_rs (``eps_inside_max``,
    ``decoupled_weight_decay``, ``state_dtype``, ``stochastic_rounding``). With the defaults
    it gives torch's numbers bit for bit::

        g = -grad if maximize else grad
        g = g + weight_decay * param                    (coupled; fused as torch's add)
        m = lerp(m, g, 1 - beta1)                       (torch's lerp, fused)
        u = max(beta2 * u, |g| + eps)
        param = param - lr / (1 - beta1**t) * m / u

    Parameters
    ----------
    params : iterable of torch.Tensor or iterable of dict
        Parameters (CPU tensors of a floating-point or complex dtype), or parameter groups.
    lr : float or torch.Tensor, default 2e-3
        Learning rate (a 1-element tensor is read at each step).
    betas : tuple of float, default (0.9, 0.999)
        Decay rates of the first moment and of the infinity norm, each in ``[0, 1)``.
    eps : float, default 1e-8
        Added inside the max (or, with ``eps_inside_max=False``, to the denominator).
    weight_decay : float, default 0
        L2 penalty (or AdamW-style decay with ``decoupled_weight_decay``).
    foreach : bool, optional
        Accepted for compatibility; it has no effect (there is one implementation).
    maximize : bool, default False
        Maximise the objective instead of minimising it.
    differentiable : bool, default False
        Must be False: the update runs outside autograd.
    capturable : bool, default False
        Must be False: CUDA graph capture does not apply to CPU tensors.
    eps_inside_max : bool, default True
        torch's formula (eps inside the max, in torch's order of operations). ``False`` gives
        the Adamax paper's and lucid's formula (``m / (u + eps)``), as ``adamax_rs.Adamax``.
    decoupled_weight_decay : bool, default False
        Decay the parameter directly (``param *= 1 - lr * weight_decay``).
    state_dtype : torch.dtype or str, optional
        The dtype of ``exp_avg`` and ``exp_inf``: ``None`` (the default) means float32 for
        float16/bfloat16 parameters and the parameter's own dtype otherwise; ``torch.float32``
        or ``torch.float64`` may be asked for (complex parameters get complex state of that
        precision). ``torch.optim.Adamax`` keeps 16-bit state for 16-bit parameters.
        ``torch.bfloat16`` (or ``"bfloat16"``): bfloat16 moments, float32 arithmetic, rounded
        as ``stochastic_rounding`` says. ``"8bit"``:
        block-wise quantized moments (uint8 codes and float32 scales
        ``state[p]["exp_avg_scale"]``, ``state[p]["exp_inf_scale"]``, one per 256
        elements), float32 arithmetic; parameters under 4096 elements, complex and
        non-dense ones keep float32 state. As in :class:`adamax_rs.Adamax`, whose
        documentation and docs/compressed_state.md say more. State dicts with 8-bit state
        load only into this class (``torch.optim.Adamax`` would read the codes as numbers).
    stochastic_rounding : bool or None, default None
        How bfloat16 and 8-bit state are rounded. ``None`` (the default) is ``True`` with
        those state dtypes and ``False`` otherwise (``True`` with any other is a
        ``ValueError``). ``True``: stochastically, right on average, so that ``exp_inf`` keeps
        decaying at ``beta2 = 0.999`` and the state trains as float32 state does; with 8-bit
        state within Adamax's bound. ``False``: bfloat16 to nearest even; 8-bit ``exp_avg``
        truncated toward zero and ``exp_inf`` rounded up. As in :class:`adamax_rs.Adamax`;
        the attribute ``stochastic_rounding`` holds the resolved bool.

    Raises
    ------
    ValueError
        For a hyperparameter out of range (torch's messages), a parameter not on the CPU,
        ``differentiable=True``, ``capturable=True``, an unknown ``state_dtype``, or
        ``stochastic_rounding=True`` without bfloat16 or 8-bit state.
    TypeError
        For a bare tensor instead of an iterable, a parameter of an unsupported dtype, or a
        ``stochastic_rounding`` that is neither a bool nor ``None``.

    Examples
    --------
    >>> import torch
    >>> from adamax_rs.torch import Adamax
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = Adamax(model.parameters(), lr=1e-2)
    >>> model(torch.ones(3, 4)).sum().backward()
    >>> opt.step()
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        eps_inside_max: bool = True,
        decoupled_weight_decay: bool = False,
        state_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool | None = None,
    ) -> None:
        # torch.optim.Adamax's checks, in its order and with its messages.
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        state_dtype = _check_state_dtype(state_dtype)
        rounding = check_optional_flag(stochastic_rounding, "stochastic_rounding")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
            "eps_inside_max": eps_inside_max,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        _refuse_unsupported(defaults, "")
        self._plan = _core.TorchStepPlan(
            state_dtype=_core_name(state_dtype), stochastic_rounding=rounding
        )
        self.state_dtype = state_dtype
        #: Whether the state is rounded stochastically (``None`` resolved by the state dtype).
        self.stochastic_rounding: bool = self._plan.stochastic_rounding
        self._lock = threading.RLock()
        super().__init__(params, defaults)
        track(self)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group, refusing parameters this optimizer cannot update."""
        params = param_group.get("params") if isinstance(param_group, Mapping) else None
        # A set is left to torch, which refuses it: its order, and so the state dict's, would
        # change from run to run.
        if isinstance(params, Iterable) and not isinstance(params, (torch.Tensor, set)):
            params = list(params)
            param_group = {**param_group, "params": params}
            for index, param in enumerate(params):
                if isinstance(param, torch.Tensor):
                    _check_tensor(param, f"param group {len(self.param_groups)}, parameter {index}")
        if isinstance(param_group, Mapping):
            _refuse_unsupported(param_group, f"param group {len(self.param_groups)}: ")
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        # torch's keeps only defaults, state and param_groups; the state options are needed too.
        state: dict[str, Any] = super().__getstate__()
        state["state_dtype"] = self.state_dtype
        state["stochastic_rounding"] = self.stochastic_rounding
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state_dtype = state.pop("state_dtype", None)
        stochastic_rounding = state.pop("stochastic_rounding", None)
        super().__setstate__(state)
        if "_plan" not in self.__dict__:
            # Unpickled or deep-copied (load_state_dict comes here too, with the plan in place):
            # the plan and the lock are not copied, so make them.
            self.state_dtype = state_dtype
            self._plan = _core.TorchStepPlan(
                state_dtype=_core_name(state_dtype), stochastic_rounding=stochastic_rounding
            )
            self.stochastic_rounding = self._plan.stochastic_rounding
            self._lock = threading.RLock()
            track(self)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("differentiable", False)
            group.setdefault("capturable", False)
            group.setdefault("eps_inside_max", True)
            group.setdefault("decoupled_weight_decay", False)
        for param_state in self.state.values():
            if len(param_state) != 0 and not torch.is_tensor(param_state.get("step")):
                param_state["step"] = torch.tensor(
                    float(param_state["step"]), dtype=_scalar_dtype()
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of ``torch.optim.Adamax``.

        torch's loader casts every floating-point state value to its parameter's dtype; the
        state then gets this optimizer's state form back from the saved values (so float32
        state saved for a bfloat16 parameter is not rounded through bfloat16, and 8-bit
        codes and scales stay as saved). Saved state of another form converts: float state
        into 8-bit is quantized as a step with ``stochastic_rounding=False`` would
        (``exp_avg`` truncated toward zero, ``exp_inf`` rounded up), 8-bit into float takes
        the values the codes stand for, and float into bfloat16 rounds to nearest even.
        That is checked and computed after the load pre-hooks, from the state dict they
        leave, before torch changes anything
        (a state that does not fit is a ``ValueError`` naming the parameter), and put in
        place before the post-hooks.
        """
        converted: list[dict[torch.Tensor, dict[str, torch.Tensor]]] = []

        def convert_what_is_loaded(optimizer: Optimizer, state_dict: Any) -> None:
            converted.append(self._convert_saved_state(state_dict))

        def restore_state(optimizer: Optimizer) -> None:
            for param, tensors in converted[-1].items():
                entry = self.state[param]
                for key in _compressed.SCALE_KEYS:
                    entry.pop(key, None)
                entry.update(tensors)
            # torch's loader keeps the `step` tensors it is given: the source optimizer's own
            # (o2.load_state_dict(o1.state_dict())), or one tensor for several parameters.
            # Each parameter gets a count of its own, which its steps alone write.
            for entry in self.state.values():
                step = entry.get("step")
                if isinstance(step, torch.Tensor):
                    entry["step"] = step.clone()

        with self._lock:
            # Registered last among the pre-hooks and first among the post-hooks.
            before = self.register_load_state_dict_pre_hook(convert_what_is_loaded)
            after = self.register_load_state_dict_post_hook(restore_state, prepend=True)
            try:
                super().load_state_dict(state_dict)
            finally:
                before.remove()
                after.remove()

    def _convert_saved_state(
        self, state_dict: Mapping[str, Any]
    ) -> dict[torch.Tensor, dict[str, torch.Tensor]]:
        """The state tensors of each parameter in ``state_dict``, in this optimizer's form."""
        saved_state = state_dict.get("state", {})
        saved_groups = state_dict.get("param_groups", [])
        if not isinstance(saved_state, Mapping) or not isinstance(saved_groups, list):
            return {}  # torch's own load reports it
        indices = [
            i for group in saved_groups if isinstance(group, Mapping) for i in group["params"]
        ]
        params = [p for group in self.param_groups for p in group["params"]]
        converted: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for index, param in zip(indices, params):
            saved = saved_state.get(index)
            if not isinstance(saved, Mapping) or not saved:
                continue
            tensors = {
                key: saved[key]
                for key in _STATE_TENSOR_KEYS
                if isinstance(saved.get(key), torch.Tensor)
            }
            if "exp_avg" not in tensors or "exp_inf" not in tensors:
                continue  # the step reports what is missing
            try:
                converted[param] = self._state_in_my_form(param, tensors)
            except (TypeError, ValueError) as error:
                kind = TypeError if isinstance(error, TypeError) else ValueError
                raise kind(f"state of parameter {index}: {error}") from None
        return converted

    def _state_in_my_form(
        self, param: torch.Tensor, saved: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """A parameter's saved ``exp_avg``, ``exp_inf`` (and scales) in this optimizer's form."""
        for key, value in saved.items():
            if value.is_meta:
                raise ValueError(f"{key!r} is on the meta device, which holds no values")
            if value.is_complex() and not param.is_complex():
                raise TypeError(f"{key!r} is complex ({value.dtype}), the parameter is real")
        for key in ("exp_avg", "exp_inf"):
            if saved[key].shape != param.shape:
                raise ValueError(
                    f"{key!r} has shape {tuple(saved[key].shape)}, the parameter has shape "
                    f"{tuple(param.shape)}"
                )
        codes = saved["exp_avg"].dtype == torch.uint8
        if codes != all(key in saved for key in _compressed.SCALE_KEYS) or (
            codes != (saved["exp_inf"].dtype == torch.uint8)
        ):
            raise ValueError(
                "8-bit state has uint8 'exp_avg' and 'exp_inf' codes and both "
                "'exp_avg_scale' and 'exp_inf_scale', and other state none of these"
            )
        like = torch.empty_like(param, dtype=torch.uint8, memory_format=torch.preserve_format)
        form = self._state_dtype_for(param)
        if codes:
            # The blocks follow the memory order of the parameter the state was made for, and
            # the codes were laid out like it. Codes laid out otherwise than this parameter mean
            # either that the parameter's layout changed since (model.to(memory_format=...)) or
            # that the codes were re-laid out (made contiguous to be written somewhere): the
            # blocks could follow either order, and the wrong one scrambles the state silently.
            for key in ("exp_avg", "exp_inf"):
                stored = saved[key]
                if _compressed.axis_order(stored.shape, stored.stride()) != (
                    _compressed.axis_order(like.shape, like.stride())
                ):
                    raise ValueError(
                        f"{key!r} (8-bit codes) has another memory layout (strides "
                        f"{tuple(stored.stride())}) than the parameter (strides "
                        f"{tuple(like.stride())}), so which elements each block of "
                        f"{_compressed.BLOCK} holds is ambiguous: load it into a parameter "
                        "laid out as the one it was saved from, and keep the codes laid out "
                        "as saved (torch.save does)"
                    )
            blocks = _compressed.block_count(param.numel())
            for key in _compressed.SCALE_KEYS:
                scale = saved[key]
                if scale.dtype != torch.float32 or tuple(scale.shape) != (blocks,):
                    raise ValueError(
                        f"{key!r} must be float32 of shape ({blocks},) (one scale per block of "
                        f"{_compressed.BLOCK}), got {scale.dtype} of shape {tuple(scale.shape)}"
                    )
                if bool((scale < 0).any()):
                    raise ValueError(f"{key!r} has negative scales")
            if form is None:
                out = {"exp_avg": like.copy_(saved["exp_avg"]), "exp_inf": torch.empty_like(like)}
                out["exp_inf"].copy_(saved["exp_inf"])
                for key in _compressed.SCALE_KEYS:
                    out[key] = saved[key].detach().to("cpu", copy=True).contiguous()
                return out
            m, u = _compressed.dequantize(
                _as_numpy(saved["exp_avg"]),
                _as_numpy(saved["exp_inf"]),
                _as_numpy(saved["exp_avg_scale"]),
                _as_numpy(saved["exp_inf_scale"]),
            )
            values = {"exp_avg": torch.from_numpy(m), "exp_inf": torch.from_numpy(u)}
        else:
            values = {key: saved[key].detach().cpu() for key in ("exp_avg", "exp_inf")}
        if form is None:
            if bool((values["exp_inf"] < 0).any()):
                raise ValueError("'exp_inf' has negative values")
            quantized = _compressed.quantize(
                _as_numpy(values["exp_avg"]).astype(np.float64),
                _as_numpy(values["exp_inf"]).astype(np.float64),
                _as_numpy(like),
            )
            return {key: torch.from_numpy(value) for key, value in quantized.items()}
        out = {}
        for key, value in values.items():
            target = torch.empty_like(param, dtype=form, memory_format=torch.preserve_format)
            if form == torch.bfloat16 and value.dtype == torch.float64:
                # torch rounds float64 to bfloat16 through float32 (twice): once, here.
                rounded = _compressed.to_bfloat16(value.numpy())
                value = torch.from_numpy(rounded.view(np.int16)).view(torch.bfloat16)
            target.copy_(value)
            out[key] = target
        return out

    def _state_dtype_for(self, param: torch.Tensor) -> torch.dtype | None:
        """The dtype of ``param``'s state, ``None`` for 8-bit (uint8 codes and scales)."""
        if param.is_complex():
            double = self.state_dtype == torch.float64 or (
                self.state_dtype is None and param.dtype == torch.complex128
            )
            return torch.complex128 if double else torch.complex64
        if self.state_dtype == BLOCKWISE:
            return None if _core.blockwise_fits(param) else torch.float32
        if isinstance(self.state_dtype, torch.dtype):
            return self.state_dtype
        if param.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return param.dtype

    def _hyperparameters(self, group: Mapping[str, Any], g: int) -> _core.Hyperparameters:
        where = f"group {g}: "
        _refuse_unsupported(group, where)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
            raise TypeError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError(f"{where}Tensor lr must be 1-element")
        # torch's for-loop (its default on the CPU) divides a tensor lr by the bias correction
        # in the tensor's type (float16 and bfloat16 through float32); its foreach path (taken
        # when foreach is truthy) reads lr.item() and divides in float64.
        step_size_dtype: _StepSizeDtype = "float64"
        if isinstance(lr, torch.Tensor) and not group.get("foreach"):
            step_size_dtype = _STEP_SIZE_DTYPES.get(lr.dtype, "float64")
        try:
            return _core.Hyperparameters(
                step_size_dtype=step_size_dtype,
                lr=_scalar(lr),
                beta1=_scalar(betas[0]),
                beta2=_scalar(betas[1]),
                eps=_scalar(group["eps"]),
                weight_decay=_scalar(group["weight_decay"]),
                maximize=group["maximize"],
                eps_inside_max=group.get("eps_inside_max", True),
                decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            )
        except (TypeError, ValueError) as error:
            raise type(error)(f"{where}{error}") from None

    def _create_state(self, missing: list[tuple[int, int]], created: list[torch.Tensor]) -> None:
        """Create the state of the ``missing`` parameters, listing each in ``created`` (so that
        the caller can take it all back when one is refused, or on KeyboardInterrupt)."""
        for g, index in missing:
            param = self.param_groups[g]["params"][index]
            _check_tensor(param, f"group {g}, parameter {index}")
            form = self._state_dtype_for(param)
            dtype = torch.uint8 if form is None else form
            entry = {
                "step": torch.tensor(0.0, dtype=_scalar_dtype()),
                "exp_avg": torch.zeros_like(
                    param, dtype=dtype, memory_format=torch.preserve_format
                ),
                "exp_inf": torch.zeros_like(
                    param, dtype=dtype, memory_format=torch.preserve_format
                ),
            }
            if form is None:
                blocks = _compressed.block_count(param.numel())
                for key in _compressed.SCALE_KEYS:
                    entry[key] = torch.zeros(blocks, dtype=torch.float32)
            # Listed first and stored whole: an interrupt between two statements leaves no
            # entry that is partial or not listed.
            created.append(param)
            self.state[param] = entry

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single Adamax step over every parameter that has a gradient.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss; called once, with grad enabled,
            before the update.

        Returns
        -------
        object
            What ``closure`` returned, or ``None``.

        Raises
        ------
        RuntimeError
            For a sparse gradient (torch's message).
        TypeError, ValueError
            For anything that does not fit (a gradient of the wrong shape or dtype, a tensor
            not on the CPU, a hyperparameter out of range), naming the group and parameter;
            nothing has changed then. The update and the step counts are committed together,
            so an interrupt lands before the step or after it, never inside.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self._lock:
            hyperparameters = [self._hyperparameters(g, i) for i, g in enumerate(self.param_groups)]
            missing = self._plan.step(self.param_groups, self.state, hyperparameters)
            if missing:
                created: list[torch.Tensor] = []
                try:
                    self._create_state(missing, created)
                    missing = self._plan.step(self.param_groups, self.state, hyperparameters)
                except BaseException:
                    # Take back the new state unless the step was committed (its count moved):
                    # the plan can still raise after the update, if torch refuses to bump the
                    # parameters' version counters (the C call it makes last).
                    for param in created:
                        entry = self.state.get(param)
                        if entry is None or _never_stepped(entry):
                            self.state.pop(param, None)
                    raise
                if missing:
                    raise RuntimeError("adamax_rs internal error: state missing after creation")
        return loss


def _never_stepped(entry: Mapping[str, Any]) -> bool:
    step = entry.get("step")
    return not isinstance(step, torch.Tensor) or step.numel() != 1 or step.item() == 0


def _scalar_dtype() -> torch.dtype:
    """The dtype of ``step`` tensors, as torch's optimizers choose it."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
