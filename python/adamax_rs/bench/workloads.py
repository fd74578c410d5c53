"""The benchmark's workloads: which parameter tensors one step updates, and what to compare with.

A workload is a list of tensor shapes and a dtype. Workloads of many tensors also name a
*reference*, timed side by side with them so that the cost of having many tensors shows:
one tensor of the same total size stepped by adamax_rs, or (for one small tensor) a single
numpy ufunc call on it, the least any Python call on an array can cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .models import MODELS, Shapes

__all__ = [
    "MODEL_WORKLOADS",
    "ONE_TENSOR",
    "UFUNC",
    "WORKLOADS",
    "Workload",
    "make_arrays",
    "model_workload",
]

M = 1 << 20

#: The reference kinds: adamax_rs on one tensor of the same size, or one numpy ufunc call.
ONE_TENSOR = "one tensor"
UFUNC = "ufunc"


@dataclass(frozen=True)
class Workload:
    """The parameter tensors of one benchmark case, and what its step is compared with.

    Parameters
    ----------
    name : str
        As printed in the tables and matched by ``--only``.
    shapes : tuple of tuple of int
        The shape of each parameter tensor.
    dtype : numpy dtype
        The parameters' dtype (the state is float32 for 16-bit parameters).
    mixed_precision : bool
        16-bit parameters with float32 state: only implementations that run that algorithm
        are timed on it.
    reference : str
        ``""`` (none), :data:`ONE_TENSOR` or :data:`UFUNC`.
    target : float or None
        The most the step may take, as a multiple of the reference's time (issues 10, 11).
    model : str or None
        The ``--models`` key of a whole-model workload.
    """

    name: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: Any
    mixed_precision: bool = False
    reference: str = ""
    target: float | None = None
    model: str | None = None

    @property
    def sizes(self) -> list[int]:
        """The number of elements of each tensor."""
        return [math.prod(shape) for shape in self.shapes]

    @property
    def tensors(self) -> int:
        return len(self.shapes)

    @property
    def elements(self) -> int:
        return sum(self.sizes)

    @property
    def state_itemsize(self) -> int:
        return max(4, int(np.dtype(self.dtype).itemsize))

    @property
    def bytes_moved(self) -> int:
        """Read param, grad, exp_avg, exp_inf; write param, exp_avg, exp_inf."""
        return self.bytes_moved_with_state(self.state_itemsize)

    def bytes_moved_with_state(self, state_itemsize: float) -> int:
        """What a step moves when each moment takes ``state_itemsize`` bytes an element."""
        itemsize = int(np.dtype(self.dtype).itemsize)
        return round(self.elements * (3 * itemsize + 4 * state_itemsize))


def _flat(name: str, count: int, size: int, dtype: Any = np.float32, **extra: Any) -> Workload:
    return Workload(name, ((size,),) * count, dtype, **extra)


def model_workload(key: str) -> Workload:
    """The whole-model workload of ``MODELS[key]``: its float32 parameter shapes."""
    title, shapes_of = MODELS[key]
    shapes: Shapes = shapes_of()
    total = sum(math.prod(shape) for _, shape in shapes)
    name = f"{title}: {len(shapes)} tensors, {total / 1e6:.1f}M float32"
    # The target is for GPT-2 small only: a whole model's step within 10% of one tensor.
    target = 1.10 if key == "gpt2-small" else None
    return Workload(
        name,
        tuple(shape for _, shape in shapes),
        np.float32,
        reference=ONE_TENSOR,
        target=target,
        model=key,
    )


#: The workloads of one or a few tensors, in the order they are printed.
WORKLOADS = [
    _flat("1 x 16M float32", 1, 16 * M),
    _flat("1 x 64M float32", 1, 64 * M),
    _flat("1,000 x 1,000 float32", 1000, 1000, reference=ONE_TENSOR, target=1.5),
    _flat("10,000 x 16 float32", 10_000, 16, reference=ONE_TENSOR, target=15.0),
    _flat("1 x 1,000 float32", 1, 1000, reference=UFUNC, target=2.5),
    _flat("1 x 16M float64", 1, 16 * M, np.float64),
    _flat("1 x 16M float16 (float32 state)", 1, 16 * M, np.float16, mixed_precision=True),
]

#: The whole-model workloads, by ``--models`` key.
MODEL_WORKLOADS = {key: model_workload(key) for key in MODELS}


def make_arrays(
    shapes: tuple[tuple[int, ...], ...], dtype: Any, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Parameters and gradients of these shapes, standard normal, each its own array.

    Each tensor is allocated on its own, as a model's would be (not views of one buffer).
    """
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...]) -> np.ndarray:
        # float32 straight from the generator: no float64 copy of a 124M-element model.
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)

    params = [normal(shape) for shape in shapes]
    grads = [normal(shape) for shape in shapes]
    return params, grads
