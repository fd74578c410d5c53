from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def snapshot(optimizer, params):
    """Copies of every parameter, gradient and state array, and every hyperparameter."""
    return {
        "data": [p.data.copy() for p in params],
        "state": {
            id(p): {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
            for p, st in optimizer.state.items()
        },
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
    }


def assert_unchanged(before, optimizer, params):
    """Every parameter and state array bit for bit as in ``before``."""
    after = snapshot(optimizer, params)
    for a, b in zip(before["data"], after["data"]):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()
    assert before["state"].keys() == after["state"].keys()
    for key, st in before["state"].items():
        assert st.keys() == after["state"][key].keys()
        for name, value in st.items():
            other = after["state"][key][name]
            if isinstance(value, np.ndarray):
                assert value.tobytes() == other.tobytes()
            else:
                assert value == other
