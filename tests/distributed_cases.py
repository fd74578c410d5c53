"""Training problems shared by the MPI worker (tests/distributed_worker.py) and the tests.

Each problem fixes the parameter groups, their initial values, every rank's gradient at every
step and the learning rate of every step, all from seeds, so that the test process can
replay the same training in one process. Gradients are small integers times 1/16: every sum
over up to 4 ranks is exact in every dtype used here, so the mean gradient does not depend
on the order in which MPI adds them.
"""

from __future__ import annotations

import numpy as np

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dev dependency
    BFLOAT16 = None

STEPS = 5

# (shape, dtype, memory order) per parameter, per group; then the group's hyperparameters.
PROBLEMS = {
    # float32 and complex64 share a bucket; sizes chosen so that every rank count splits
    # some parameter, including the Fortran-ordered one, and a group boundary.
    "float32": {
        "options": {"lr": 0.01},
        "groups": [
            ([((13, 7), np.float32, "F"), ((5,), np.float32, "C"), ((0,), np.float32, "C")], {}),
            (
                [((3, 4, 5), np.float32, "C"), ((9,), np.complex64, "C"), ((1,), np.float32, "C")],
                {"eps_inside_max": True, "weight_decay": 0.1},
            ),
            (
                [((40,), np.float32, "C"), ((6, 6), np.float32, "C")],
                {"decoupled_weight_decay": True, "weight_decay": 0.05, "maximize": True},
            ),
        ],
    },
    # Several element types (one bucket each) and master weights for the 16-bit ones.
    "mixed": {
        "options": {"lr": 0.02, "master_weights": True},
        "groups": [
            ([((17,), np.float64, "C"), ((8, 3), np.float16, "F")], {}),
            ([((31,), "bfloat16", "C"), ((4, 4), np.float32, "C")], {"eps_inside_max": True}),
        ],
    },
    # float64 state for float32 and complex64 parameters.
    "state64": {
        "options": {"lr": 0.005, "state_dtype": np.float64},
        "groups": [([((23,), np.float32, "C"), ((6,), np.complex64, "C")], {})],
    },
    # bfloat16 state, rounded stochastically by default: the random bits come from the values,
    # so a shard rounds as the whole parameter would.
    "bfloat16": {
        "options": {"lr": 0.01, "state_dtype": "bfloat16"},
        "groups": [
            ([((13, 7), np.float32, "F"), ((50,), np.float32, "C")], {}),
            ([((31,), "bfloat16", "C")], {"eps_inside_max": True}),
        ],
    },
    # ... and rounded to nearest.
    "bfloat16-nearest": {
        "options": {"lr": 0.01, "state_dtype": "bfloat16", "stochastic_rounding": False},
        "groups": [([((13, 7), np.float32, "F"), ((50,), "bfloat16", "C")], {})],
    },
}


def dtype_of(name) -> np.dtype:
    if name == "bfloat16":
        if BFLOAT16 is None:
            raise RuntimeError("ml_dtypes is needed for bfloat16")
        return BFLOAT16
    return np.dtype(name)


def specs(problem: str):
    """``[(group index, shape, dtype, order)]`` in flattened order."""
    out = []
    for g, (params, _) in enumerate(PROBLEMS[problem]["groups"]):
        for shape, dtype, order in params:
            out.append((g, shape, dtype_of(dtype), order))
    return out


def initial_values(problem: str) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    values = []
    for _, shape, dtype, order in specs(problem):
        if dtype.kind == "c":
            data = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        else:
            data = rng.standard_normal(shape)
        values.append(np.array(data, dtype=dtype, order=order))
    return values


def gradient(problem: str, rank: int, step: int, number: int) -> np.ndarray | None:
    """Rank ``rank``'s gradient of parameter ``number`` at ``step``; ``None`` (on every rank)
    for some parameters at some steps."""
    if (number + step) % 4 == 3:
        return None
    _, shape, dtype, order = specs(problem)[number]
    rng = np.random.default_rng([rank, step, number, len(problem)])
    k = rng.integers(-31, 32, size=shape)
    if dtype.kind == "c":
        k = k + 1j * rng.integers(-31, 32, size=shape)
    # Gradients in other layouts than their parameter's: the other memory order, or strided.
    if (number + step) % 3 == 0:
        order = "C" if order == "F" else "F"
    grad = np.array(k / 16.0, dtype=dtype, order=order)
    if (number + step) % 5 == 1 and grad.ndim == 1:
        strided = np.zeros(2 * grad.size, dtype)
        strided[::2] = grad
        grad = strided[::2]
    return grad


def mean_gradient(problem: str, ranks: int, step: int, number: int) -> np.ndarray | None:
    """The documented mean over ``ranks`` ranks: ``sum / N`` in the gradient's dtype (float32
    for the 16-bit types, rounded once at the end)."""
    grads = [gradient(problem, r, step, number) for r in range(ranks)]
    if grads[0] is None:
        return None
    dtype = grads[0].dtype
    work = np.float32 if dtype.itemsize == 2 and dtype.kind != "c" else dtype
    total = np.zeros(grads[0].shape, work)
    for g in grads:
        total = total + g.astype(work)
    return (total / ranks).astype(dtype)


def learning_rate(problem: str, step: int, group: int) -> float:
    """The rate each group steps with (a schedule the worker writes into param_groups)."""
    base = PROBLEMS[problem]["options"]["lr"]
    return base * (1.0 - 0.1 * step) * (1.0 + 0.5 * group)


def groups(problem: str, params: list) -> list[dict]:
    """Parameter-group dicts over ``params`` (in flattened order)."""
    out, n = [], 0
    for params_spec, hyper in PROBLEMS[problem]["groups"]:
        out.append({"params": params[n : n + len(params_spec)], **hyper})
        n += len(params_spec)
    return out


def options(problem: str) -> dict:
    return dict(PROBLEMS[problem]["options"])
