"""Everything a failed load must leave as it was: parameters, groups, state, scheduler."""

from __future__ import annotations

import copy

import numpy as np


def _copy(value):
    return value.copy(order="K") if isinstance(value, np.ndarray) else copy.deepcopy(value)


def take(optimizer, scheduler=None):
    """Copies of every parameter's values, every group entry, every state entry, and the
    scheduler's state; the identities of the arrays that must stay in place."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        "params": params,
        "data": [p.data.copy(order="K") for p in params],
        "data_ids": [id(p.data) for p in params],
        "groups": [
            {k: _copy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups
        ],
        "group_params": [list(g["params"]) for g in optimizer.param_groups],
        "state": [
            None
            if optimizer.state.get(p) is None
            else {k: _copy(v) for k, v in optimizer.state.get(p).items()}
            for p in params
        ],
        "scheduler": None if scheduler is None else copy.deepcopy(scheduler.state_dict()),
    }


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.flags.f_contiguous == b.flags.f_contiguous
            and a.tobytes(order="A") == b.tobytes(order="A")
        )
    return type(a) is type(b) and a == b


def assert_same(before, optimizer, scheduler=None):
    """``optimizer`` (and ``scheduler``) exactly as in ``before``, bit for bit."""
    after = take(optimizer, scheduler)
    assert [id(p) for p in after["params"]] == [id(p) for p in before["params"]]
    assert after["data_ids"] == before["data_ids"], "a parameter's array was replaced"
    for a, b in zip(before["data"], after["data"]):
        assert _same(a, b), "a parameter's values changed"
    assert len(after["groups"]) == len(before["groups"])
    for a, b in zip(before["groups"], after["groups"]):
        assert a.keys() == b.keys(), (a, b)
        for key in a:
            assert _same(a[key], b[key]), key
    assert [[id(p) for p in g] for g in after["group_params"]] == [
        [id(p) for p in g] for g in before["group_params"]
    ]
    for a, b in zip(before["state"], after["state"]):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.keys() == b.keys()
            for key in a:
                assert _same(a[key], b[key]), key
    assert after["scheduler"] == before["scheduler"]
