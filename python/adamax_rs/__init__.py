"""adamax_rs: the Adamax optimizer for numpy arrays, with its update in Rust.

Examples
--------
>>> import numpy as np
>>> from adamax_rs import Adamax, Parameter
>>> w = Parameter(np.random.randn(784, 10).astype(np.float32))
>>> opt = Adamax([w], lr=2e-3)
>>> w.grad = np.ones_like(w.data)
>>> opt.step()
"""

from __future__ import annotations

from . import functional, lr_scheduler
from ._core import __version__, get_num_threads, set_num_threads, simd_level
from .adamax import Adamax
from .checkpoint import (
    load_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
    save_training_checkpoint,
)
from .flat import FlatParameter
from .optimizer import Optimizer, ParameterState, StateEntry
from .parameter import Parameter

__all__ = [
    "Adamax",
    "FlatParameter",
    "Optimizer",
    "Parameter",
    "ParameterState",
    "StateEntry",
    "__version__",
    "functional",
    "get_num_threads",
    "load_checkpoint",
    "load_training_checkpoint",
    "lr_scheduler",
    "save_checkpoint",
    "save_training_checkpoint",
    "set_num_threads",
    "simd_level",
]
