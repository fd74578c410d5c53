"""The optimizers the benchmark times, as a registry: one entry per row of the tables.

Each entry builds, from a workload's parameter and gradient arrays, a function that takes one
optimizer step. All entries step the *same* parameter arrays in turn (each has its own state),
which keeps a whole model's memory at one copy of the parameters and gradients plus each
optimizer's state; an Adamax step moves a parameter by at most ``lr``, so the values stay in
the normal range whatever order the steps come in. The bandwidth probe adds the gradient to
its arrays and so gets a copy of the parameters of its own.

To add a row, add an :class:`Implementation` to :data:`IMPLEMENTATIONS`; ``requires`` names
the modules it needs, and the tables say "not installed" (or "not available" for a part of
adamax_rs that this build lacks) when one is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import _core
from ..adamax import Adamax
from ..flat import FlatParameter
from ..numpy_adamax import NumpyAdamax
from ..parameter import Parameter
from .workloads import Workload

__all__ = ["IMPLEMENTATIONS", "Implementation", "Step", "select"]

#: One optimizer step.
Step = Callable[[], Any]
#: Builds an optimizer over ``(params, grads)`` and returns its step.
Factory = Callable[[list[np.ndarray], list[np.ndarray]], Step]

LR = 1e-3
#: The one workload the compressed-state rows are timed on (issue 12's comparison).
COMPRESSED_STATE_WORKLOAD = "1 x 16M float32"


@dataclass(frozen=True)
class Implementation:
    """One row of the benchmark tables.

    Parameters
    ----------
    name : str
        As printed, and as ``--implementations`` matches it.
    make : callable
        ``make(params, grads)`` builds the optimizer and returns its step.
    requires : tuple of str
        Modules that must be importable for the row to run.
    mixed_precision : bool
        Whether it steps 16-bit parameters with float32 state (the algorithm adamax_rs runs
        for them); only such rows are timed on the float16 workload.
    description : str
        What the row is, for ``--help`` and the docs.
    workloads : tuple of str
        The names of the only workloads it is timed on; empty for all. The compressed-state
        rows run on one workload: what they change is bytes per element, not overhead.
    state_itemsize : float or None
        Bytes of optimizer state per element and moment, for its GB/s, where the row keeps a
        state narrower than the workload's (8-bit codes with a float32 scale per 256: 1 +
        4/256); ``None`` for the workload's own.
    many_tensors_only : bool
        Timed only on workloads of more than one tensor (what it changes is the cost of
        having many).
    """

    name: str
    make: Factory
    requires: tuple[str, ...] = ()
    mixed_precision: bool = False
    description: str = ""
    workloads: tuple[str, ...] = ()
    state_itemsize: float | None = None
    many_tensors_only: bool = False

    def runs_on(self, workload: Workload) -> bool:
        """Whether the row is timed on ``workload``."""
        if self.many_tensors_only and workload.tensors < 2:
            return False
        return not self.workloads or workload.name in self.workloads

    @property
    def runs_everywhere(self) -> bool:
        """Whether the row is timed on every workload."""
        return not self.workloads and not self.many_tensors_only

    def missing(self) -> str:
        """Why the row cannot run here (``"torch not installed"``, ...), or ``""``."""
        for module in self.requires:
            if _find_spec(module) is None:
                if module.startswith("adamax_rs."):
                    return "not available"
                return f"{module.split('.')[0]} not installed"
        return ""


def _find_spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except ImportError:  # the parent package is missing
        return None


def _parameters(params: list[np.ndarray], grads: list[np.ndarray]) -> list[Parameter]:
    out = []
    for p, g in zip(params, grads):
        param = Parameter(p)  # wraps the array, no copy
        param.grad = g
        out.append(param)
    return out


def _adamax_rs(params: list[np.ndarray], grads: list[np.ndarray]) -> Step:
    return Adamax(_parameters(params, grads), lr=LR).step


def _adamax_rs_flat(params: list[np.ndarray], grads: list[np.ndarray]) -> Step:
    # FlatParameter copies the values and gradients into its own buffers.
    return Adamax([FlatParameter(_parameters(params, grads))], lr=LR).step


def _adamax_rs_state(state_dtype: str, **options: Any) -> Factory:
    def make(params: list[np.ndarray], grads: list[np.ndarray]) -> Step:
        return Adamax(_parameters(params, grads), lr=LR, state_dtype=state_dtype, **options).step

    return make


def _numpy(params: list[np.ndarray], grads: list[np.ndarray]) -> Step:
    return NumpyAdamax(_parameters(params, grads), lr=LR).step


def _probe(params: list[np.ndarray], grads: list[np.ndarray]) -> Step:
    datas = [p.copy() for p in params]
    state = np.float32 if params[0].dtype.itemsize < 4 else params[0].dtype
    exp_avgs = [np.zeros_like(p, dtype=state) for p in params]
    exp_infs = [np.zeros_like(p, dtype=state) for p in params]

    def step() -> None:
        _core.bandwidth_probe(datas, grads, exp_avgs, exp_infs)

    return step


def _torch_optimizer(build: Callable[[list[Any]], Any]) -> Factory:
    """A factory for a torch-style optimizer class: torch tensors on the same memory."""

    def make(params: list[np.ndarray], grads: list[np.ndarray]) -> Step:
        import torch

        tensors = []
        for p, g in zip(params, grads):
            t = torch.nn.Parameter(torch.from_numpy(p))
            t.grad = torch.from_numpy(g)
            tensors.append(t)
        step: Step = build(tensors).step
        return step

    return make


def _torch_adamax(foreach: bool) -> Callable[[list[Any]], Any]:
    def build(tensors: list[Any]) -> Any:
        import torch

        return torch.optim.Adamax(tensors, lr=LR, foreach=foreach)

    return build


def _torch_fused_adam(tensors: list[Any]) -> Any:
    import torch

    return torch.optim.Adam(tensors, lr=LR, fused=True)


def _adamax_rs_torch(tensors: list[Any]) -> Any:
    # The torch front of adamax_rs takes torch.optim.Adamax's arguments, and state_dtype:
    # float32 state for 16-bit parameters, as adamax_rs.Adamax keeps it.
    import torch

    module = importlib.import_module("adamax_rs.torch")
    half = tensors[0].dtype in (torch.float16, torch.bfloat16)
    return module.Adamax(tensors, lr=LR, state_dtype=torch.float32 if half else None)


#: Every row, in the order the tables print them; adamax_rs comes first (the ratios' base).
IMPLEMENTATIONS = [
    Implementation(
        "adamax_rs", _adamax_rs, mixed_precision=True, description="adamax_rs.Adamax on numpy"
    ),
    Implementation(
        "bandwidth probe",
        _probe,
        mixed_precision=True,
        description="the same reads and writes with trivial arithmetic: the floor",
    ),
    Implementation(
        "adamax_rs.torch",
        _torch_optimizer(_adamax_rs_torch),
        requires=("torch", "adamax_rs.torch"),
        mixed_precision=True,
        description="adamax_rs.torch.Adamax: adamax_rs stepping torch tensors",
    ),
    Implementation(
        "adamax_rs FlatParameter",
        _adamax_rs_flat,
        description="adamax_rs.Adamax over one FlatParameter holding every tensor",
        many_tensors_only=True,
    ),
    Implementation(
        "adamax_rs bfloat16 state",
        _adamax_rs_state("bfloat16"),
        description="adamax_rs.Adamax(state_dtype='bfloat16'): half the state's bytes, "
        "rounded stochastically (the default)",
        workloads=(COMPRESSED_STATE_WORKLOAD,),
        state_itemsize=2,
    ),
    Implementation(
        "adamax_rs bfloat16 state, rounded to nearest",
        _adamax_rs_state("bfloat16", stochastic_rounding=False),
        description="adamax_rs.Adamax(state_dtype='bfloat16', stochastic_rounding=False)",
        workloads=(COMPRESSED_STATE_WORKLOAD,),
        state_itemsize=2,
    ),
    Implementation(
        "adamax_rs 8-bit state",
        _adamax_rs_state("8bit"),
        description="adamax_rs.Adamax(state_dtype='8bit'): blockwise 8-bit moments, "
        "rounded stochastically (the default)",
        workloads=(COMPRESSED_STATE_WORKLOAD,),
        state_itemsize=1 + 4 / 256,
    ),
    Implementation(
        "adamax_rs 8-bit state, directed rounding",
        _adamax_rs_state("8bit", stochastic_rounding=False),
        description="adamax_rs.Adamax(state_dtype='8bit', stochastic_rounding=False)",
        workloads=(COMPRESSED_STATE_WORKLOAD,),
        state_itemsize=1 + 4 / 256,
    ),
    Implementation(
        "numpy by hand", _numpy, description="the same formula, one numpy ufunc per operation"
    ),
    Implementation(
        "torch for-loop",
        _torch_optimizer(_torch_adamax(foreach=False)),
        requires=("torch",),
        description="torch.optim.Adamax(foreach=False)",
    ),
    Implementation(
        "torch foreach",
        _torch_optimizer(_torch_adamax(foreach=True)),
        requires=("torch",),
        description="torch.optim.Adamax(foreach=True)",
    ),
    Implementation(
        "torch fused Adam",
        _torch_optimizer(_torch_fused_adam),
        requires=("torch",),
        description="torch.optim.Adam(fused=True): another one-pass optimizer, 28 bytes an element",
    ),
]


def _wanted(names: str) -> list[str]:
    """The comma-separated ``names``, stripped, empty ones left out."""
    return [n.strip() for n in names.split(",") if n.strip()]


def unmatched(names: str) -> list[str]:
    """Those of the comma-separated ``names`` that no row's name contains (by :func:`select`'s
    rule)."""
    return [w for w in _wanted(names) if not any(w in impl.name for impl in IMPLEMENTATIONS)]


def select(names: str = "", include_numpy: bool = True) -> list[Implementation]:
    """The registry's rows whose name contains one of the comma-separated ``names`` (all when
    empty), adamax_rs always first: the tables give every time relative to it."""
    wanted = _wanted(names)
    chosen = [
        impl
        for impl in IMPLEMENTATIONS
        if (not wanted or impl.name == "adamax_rs" or any(w in impl.name for w in wanted))
        and (include_numpy or impl.name != "numpy by hand")
    ]
    return chosen
