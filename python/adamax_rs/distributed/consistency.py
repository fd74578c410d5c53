"""What must be the same on every rank, as rows of int64 for :func:`agreement.agree`, and the
messages that say what differs when it is not."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..adamax import Adamax
from .agreement import digest, shape_row
from .layout import ShardLayout, Slot
from .shard import FLAG_KEYS, HYPERPARAMETER_KEYS, NUMERIC_KEYS

__all__ = [
    "step_row",
    "describe_step",
    "layout_row",
    "describe_layouts",
    "loaded_row",
    "describe_loaded",
]


def _bits(values: list[float]) -> np.ndarray:
    return np.array(values, np.float64).view(np.int64)


def step_row(hyper: list[dict[str, Any]], grads: list[np.ndarray | None]) -> np.ndarray:
    """What must be the same on every rank for a step: the hyperparameters (numbers as their
    float64 bits, flags as 0/1) and, per parameter, whether it has a gradient."""
    row: list[int] = []
    for h in hyper:
        row.extend(int(_bits([float(h[k])])[0]) for k in NUMERIC_KEYS)
        row.extend(int(bool(h[k])) for k in FLAG_KEYS)
    row.extend(int(g is not None) for g in grads)
    return np.array(row, np.int64)


#: The optimizer-wide options every rank must share, in the order :func:`layout_row` lists them.
OPTION_KEYS = ("state_dtype", "master_weights", "stochastic_rounding")


def _text_code(text: str) -> int:
    return int.from_bytes(text.encode()[:7].ljust(7, b"\0"), "little")


def _option_code(value: Any) -> int:
    if value is None or isinstance(value, (bool, np.bool_)):
        return {None: -1, False: 0, True: 1}[None if value is None else bool(value)]
    return digest(np.frombuffer(str(value).encode(), np.uint8))


def layout_row(layout: ShardLayout, options: dict[str, Any]) -> np.ndarray:
    """The layout's description: the options (:data:`OPTION_KEYS`), group sizes, then (size,
    dtype, order, number of axes, a digest of the whole shape, the first 7 sizes) per
    parameter."""
    row: list[int] = [_option_code(options[key]) for key in OPTION_KEYS]
    row += [len(layout.group_sizes), *layout.group_sizes]
    for slot in layout.slots:
        code = _text_code(slot.dtype.str)
        row.extend([slot.size, code, ord(slot.order), *shape_row(slot.shape)])
    return np.array(row, np.int64)


def describe_layouts(rows: list[np.ndarray]) -> str:
    """The first difference between the ranks' layout rows (see :func:`layout_row`)."""
    options = len(OPTION_KEYS)
    for k, key in enumerate(OPTION_KEYS):
        values = [int(row[k]) for row in rows]
        if len(set(values)) > 1:
            differ = [r for r, v in enumerate(values) if v != values[0]]
            return (
                f"{key} differs between ranks (rank 0 and rank {differ[0]} differ); every rank "
                "must build the optimizer with the same options"
            )
    rows = [row[options:] for row in rows]
    first = [int(v) for v in rows[0][: int(rows[0][0]) + 1]]
    for r, row in enumerate(rows[1:], 1):
        groups = [int(v) for v in row[: int(row[0]) + 1]]
        if groups != first:
            return (
                f"the parameter groups differ between ranks: rank 0 has groups of "
                f"{first[1:]} parameters, rank {r} has {groups[1:]}"
            )
    width = 12
    tables = [row[len(first) :].reshape(-1, width) for row in rows]
    sizes = first[1:]
    for number in range(tables[0].shape[0]):
        entries = {t[number].tobytes() for t in tables}
        if len(entries) > 1:
            g = next(i for i in range(len(sizes)) if number < sum(sizes[: i + 1]))
            position = number - sum(sizes[:g])
            return (
                f"group {g}, parameter {position} differs between ranks (shape, dtype or memory "
                "order); every rank must build the optimizer over the same parameters"
            )
    return "the parameters differ between ranks"


def loaded_row(scratch: Adamax) -> np.ndarray:
    """Step counts, a digest of every state array and the hyperparameters of a loaded state:
    the same on every rank (a stale copy of a file on one rank's disk would otherwise mix
    two states, a shard from each)."""
    params = [p for g in scratch.param_groups for p in g["params"]]
    steps = []
    for p in params:
        entry = scratch.state.get(p)
        steps.append(int(entry["step"]) if entry is not None and "step" in entry else -1)
        if entry is not None:
            for key in sorted(entry):
                value = entry[key]
                if isinstance(value, np.ndarray):
                    steps.append(digest(value))
    values: list[float] = []
    for g in scratch.param_groups:
        values.extend(float(g[k]) for k in HYPERPARAMETER_KEYS)
    return np.concatenate([np.array(steps, np.int64), _bits(values)])


def describe_loaded(rows: list[np.ndarray]) -> str:
    """The message for state dicts that differ between ranks (see :func:`loaded_row`)."""
    return (
        "the ranks loaded different state dicts (their step counts, state arrays or "
        "hyperparameters differ); every rank must load the same one"
    )


def describe_step(rows: list[np.ndarray], groups: int, slots: tuple[Slot, ...]) -> str:
    """What differs between the ranks' step rows (see :func:`step_row`)."""
    width = len(HYPERPARAMETER_KEYS)
    if len({row.size for row in rows}) > 1:
        return "the ranks have different numbers of parameter groups or parameters"
    for column in range(rows[0].size):
        values = [int(row[column]) for row in rows]
        if len(set(values)) == 1:
            continue
        if column < groups * width:
            g, k = divmod(column, width)
            key = HYPERPARAMETER_KEYS[k]
            shown = [
                np.array(v, np.int64).view(np.float64).item() if k < len(NUMERIC_KEYS) else bool(v)
                for v in values
            ]
            listed = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(shown))
            return (
                f"group {g}: {key} differs between ranks ({listed}); every rank must step "
                "with the same hyperparameters"
            )
        slot = slots[column - groups * width]
        have = [r for r, v in enumerate(values) if v]
        lack = [r for r, v in enumerate(values) if not v]
        return (
            f"{slot.where()}: it has a gradient on ranks {have} but None on ranks {lack}; "
            "give it a gradient on every rank (zeros if it took no part in this rank's "
            "loss) or None on every rank"
        )
    return "the ranks disagree"
