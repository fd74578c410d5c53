"""Type and range checks shared by the optimizer class and the functional form."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core

#: The numeric hyperparameters of an Adamax group, in the order the Rust core takes them.
NUMERIC_KEYS = ("lr", "beta1", "beta2", "eps", "weight_decay")
#: The boolean options of an Adamax group, in the order the Rust core takes them.
FLAG_KEYS = ("maximize", "eps_inside_max", "decoupled_weight_decay")
#: Every hyperparameter key of an Adamax group.
HYPERPARAMETER_KEYS = NUMERIC_KEYS + FLAG_KEYS

Hyperparameters = tuple[float, float, float, float, float, bool, bool, bool]


def checked_hyperparameters(
    values: Mapping[str, Any], where: str = "", *, check_ranges: bool = True
) -> Hyperparameters:
    """Return the hyperparameters in ``values`` as the tuple the Rust core takes.

    Raises ``ValueError`` for a missing key or a value out of range, ``TypeError`` for a value
    of the wrong type (a bool where a number is expected counts as wrong). ``where`` prefixes
    every message, for example ``"group 1: "``. Ranges are always checked again by the core;
    ``check_ranges`` only decides whether they are checked here too.
    """
    numbers_out = []
    for key in NUMERIC_KEYS:
        if key not in values:
            raise ValueError(f"{where}missing hyperparameter {key!r}")
        value = values[key]
        # `type(...) is` first: this runs every step, and the ABC check costs ~0.3 us.
        kind = type(value)
        if kind is not float and kind is not int:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise TypeError(f"{where}{key} must be a real number, got {kind.__name__}")
        numbers_out.append(float(value))
    flags_out = []
    for key in FLAG_KEYS:
        if key not in values:
            raise ValueError(f"{where}missing hyperparameter {key!r}")
        value = values[key]
        if value is not True and value is not False and not isinstance(value, np.bool_):
            raise TypeError(f"{where}{key} must be a bool, got {type(value).__name__}")
        flags_out.append(bool(value))
    if check_ranges:
        try:
            _core.check_hyperparameters(*numbers_out)
        except ValueError as error:
            raise ValueError(f"{where}{error}") from None
    lr, beta1, beta2, eps, weight_decay = numbers_out
    maximize, eps_inside_max, decoupled = flags_out
    return (lr, beta1, beta2, eps, weight_decay, maximize, eps_inside_max, decoupled)
