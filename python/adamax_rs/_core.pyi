"""Type stubs for the Rust extension module ``adamax_rs._core``."""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, final

import numpy as np
from typing_extensions import Self, disjoint_base

__version__: str
__all__ = [
    "BLOCK",
    "BLOCKWISE_MIN_ELEMENTS",
    "FlatMembers",
    "Hyperparameters",
    "Parameter",
    "ParameterState",
    "StateEntry",
    "StepPlan",
    "TorchStepPlan",
    "__version__",
    "adamax_arrays",
    "bandwidth_probe",
    "blockwise_fits",
    "dequantize_moments",
    "get_num_threads",
    "quantize_moments",
    "set_num_threads",
    "simd_level",
]

@disjoint_base
class Parameter:
    """A trainable array: the values in ``data`` and their gradient in ``grad``."""

    grad: np.ndarray | None
    name: Any
    def __new__(cls, data: Any, *, name: Any = None) -> Self: ...
    @property
    def data(self) -> np.ndarray: ...
    @data.setter
    def data(self, value: np.ndarray) -> None: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def size(self) -> int: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __setstate__(self, state: dict[str, Any]) -> None: ...

@final
class StateEntry:
    """One parameter's state: ``step`` and the optimizer's state arrays, like a dict."""

    def __getitem__(self, key: str, /) -> Any: ...
    def __setitem__(self, key: str, value: Any, /) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[str]: ...
    def keys(self) -> list[str]: ...
    def values(self) -> list[Any]: ...
    def items(self) -> list[tuple[str, Any]]: ...
    def get(self, key: str, default: Any = None) -> Any: ...
    def clear(self) -> None: ...
    def copy(self) -> dict[str, Any]: ...
    def update(self, other: Mapping[str, Any] | None = None, **keywords: Any) -> None: ...

@final
class FlatMembers:
    """The members of a FlatParameter and the views of its buffers each holds."""

    def __new__(
        cls,
        members: Sequence[Parameter],
        data_views: Sequence[np.ndarray],
        grad_views: Sequence[np.ndarray],
    ) -> Self: ...
    def bind(self) -> None: ...
    def check(self) -> None: ...
    @property
    def members(self) -> tuple[Parameter, ...]: ...
    def __len__(self) -> int: ...

@final
class ParameterState:
    """The optimizer's state, keyed by parameter identity."""

    def __new__(cls, keys: list[str]) -> Self: ...
    @property
    def state_keys(self) -> list[str]: ...
    @property
    def version(self) -> int: ...
    def __getitem__(self, param: Any, /) -> StateEntry: ...
    def __setitem__(self, param: Any, value: Mapping[str, Any], /) -> None: ...
    def __delitem__(self, param: Any, /) -> None: ...
    def __contains__(self, param: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...
    def get(self, param: Any, default: Any = None) -> StateEntry | None: ...
    def keys(self) -> list[Any]: ...
    def values(self) -> list[StateEntry]: ...
    def items(self) -> list[tuple[Any, StateEntry]]: ...
    def clear(self) -> None: ...

@final
class Hyperparameters:
    """The hyperparameters of an Adamax step, checked for type and range."""

    # The defaults are sentinels at runtime (a left-out option is told apart from one given):
    # weight_decay 0.0, maximize, eps_inside_max and decoupled_weight_decay False,
    # step_size_dtype "float64".
    def __new__(
        cls,
        *,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float = ...,
        maximize: bool = ...,
        eps_inside_max: bool = ...,
        decoupled_weight_decay: bool = ...,
        step_size_dtype: Literal["float64", "float32", "float16", "bfloat16"] = ...,
    ) -> Self: ...
    @property
    def lr(self) -> float: ...
    @property
    def beta1(self) -> float: ...
    @property
    def beta2(self) -> float: ...
    @property
    def eps(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def maximize(self) -> bool: ...
    @property
    def eps_inside_max(self) -> bool: ...
    @property
    def decoupled_weight_decay(self) -> bool: ...
    @property
    def step_size_dtype(self) -> Literal["float64", "float32", "float16", "bfloat16"]: ...

@final
class StepPlan:
    """The cached step of a numpy optimizer."""

    def __new__(
        cls,
        *,
        state_dtype: str | None = None,
        master_weights: bool = False,
        stochastic_rounding: bool | None = None,
    ) -> Self: ...
    @property
    def stochastic_rounding(self) -> bool: ...
    def step(self, param_groups: list[dict[str, Any]], state: ParameterState) -> None: ...

@final
class TorchStepPlan:
    """The cached step of ``adamax_rs.torch.Adamax``."""

    def __new__(
        cls, *, state_dtype: str | None = None, stochastic_rounding: bool | None = None
    ) -> Self: ...
    @property
    def stochastic_rounding(self) -> bool: ...
    def step(
        self,
        param_groups: list[dict[str, Any]],
        state: Mapping[Any, Any],
        hyperparameters: list[Hyperparameters],
    ) -> list[tuple[int, int]] | None: ...

def adamax_arrays(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray | None],
    exp_avgs: Sequence[np.ndarray],
    exp_infs: Sequence[np.ndarray],
    steps: Sequence[int],
    *,
    hyperparameters: Hyperparameters,
    masters: Sequence[np.ndarray | None] | None = None,
    exp_avg_scales: Sequence[np.ndarray | None] | None = None,
    exp_inf_scales: Sequence[np.ndarray | None] | None = None,
    stochastic_rounding: bool = True,
) -> None:
    """One Adamax step in place over lists of arrays."""

def bandwidth_probe(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    exp_avgs: Sequence[np.ndarray],
    exp_infs: Sequence[np.ndarray],
    /,
    *,
    exp_avg_scales: Sequence[np.ndarray | None] | None = None,
    exp_inf_scales: Sequence[np.ndarray | None] | None = None,
) -> None:
    """Move exactly the memory an Adamax step moves, with trivial arithmetic (benchmarks)."""

def set_num_threads(n: int) -> None:
    """Set the number of threads a step may use (at most 1024); 0 restores the default."""

def get_num_threads() -> int:
    """The number of threads a step may use."""

def simd_level() -> str:
    """The vector instruction set in use: "avx512", "avx2" or "baseline"."""

#: Elements per block of 8-bit state.
BLOCK: int
#: Parameters with fewer elements keep float32 state under ``state_dtype="8bit"``.
BLOCKWISE_MIN_ELEMENTS: int

def quantize_moments(
    exp_avg: np.ndarray, exp_inf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 8-bit form of flat float64 moments: (avg codes, avg scales, inf codes, inf scales)."""

def dequantize_moments(
    exp_avg_codes: np.ndarray,
    exp_avg_scales: np.ndarray,
    exp_inf_codes: np.ndarray,
    exp_inf_scales: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 values that 8-bit moments stand for: (exp_avg, exp_inf), flat."""

def blockwise_fits(array: Any) -> bool:
    """Whether an optimizer with state_dtype="8bit" keeps 8-bit state for this parameter."""
