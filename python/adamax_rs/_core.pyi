"""Type stubs for the Rust extension module ``adamax_rs._core``."""

from collections.abc import Sequence

import numpy as np

__version__: str

_Hyperparameters = tuple[float, float, float, float, float, bool, bool, bool]
_Group = tuple[
    Sequence[np.ndarray],
    Sequence[np.ndarray | None],
    Sequence[np.ndarray | None],
    Sequence[np.ndarray | None],
    Sequence[np.ndarray | None],
    Sequence[int],
    _Hyperparameters,
]

def adamax_step(groups: Sequence[_Group], /) -> None:
    """One Adamax step over every group, in place. Hyperparameters are
    ``(lr, beta1, beta2, eps, weight_decay, maximize, eps_inside_max, decoupled_weight_decay)``."""

def check_hyperparameters(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float
) -> None:
    """Raise ValueError naming the first hyperparameter out of range."""

def set_num_threads(n: int) -> None:
    """Set the number of threads a step may use; 0 restores the default."""

def get_num_threads() -> int:
    """The number of threads a step may use."""

def simd_level() -> str:
    """The vector instruction set in use: "avx512", "avx2" or "baseline"."""

def bandwidth_probe(groups: Sequence[_Group], /) -> None:
    """Move exactly the memory an Adamax step moves, with trivial arithmetic (benchmarks)."""
