"""The torch-style Optimizer API: construction, groups, closures, state dicts."""

from __future__ import annotations

import numpy as np
import pytest

import adamax_rs
from adamax_rs import Adamax, Optimizer, Parameter
from conftest import assert_unchanged, snapshot
from reference import ReferenceAdamax

GROUP_KEYS = [
    "params",
    "lr",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "maximize",
    "eps_inside_max",
    "decoupled_weight_decay",
]


def make_params(rng, shapes=((3, 4), (5,)), dtype=np.float32):
    return [
        Parameter(rng.standard_normal(s).astype(dtype), name=f"p{i}") for i, s in enumerate(shapes)
    ]


def set_grads(rng, params):
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(p.dtype)


def test_defaults_match_the_reference_page(rng):
    opt = Adamax(make_params(rng))
    assert opt.defaults == {
        "lr": 0.002,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0,
        "maximize": False,
        "eps_inside_max": False,
        "decoupled_weight_decay": False,
    }
    assert list(opt.param_groups[0]) == GROUP_KEYS
    assert isinstance(opt, Optimizer)


def test_group_dicts_keep_extras_and_split_betas(rng):
    a, b = make_params(rng)
    opt = Adamax([{"params": [a], "betas": (0.5, 0.6), "tag": "encoder"}, {"params": b}], lr=0.1)
    first, second = opt.param_groups
    assert list(first) == GROUP_KEYS + ["tag"]
    assert (first["beta1"], first["beta2"], first["tag"]) == (0.5, 0.6, "encoder")
    assert "betas" not in first
    assert second["params"] == [b] and second["lr"] == 0.1


def test_add_param_group_uses_defaults(rng):
    a, b = make_params(rng)
    opt = Adamax([a], lr=0.3, weight_decay=0.1)
    opt.add_param_group({"params": [b], "lr": 0.01})
    assert opt.param_groups[1]["lr"] == 0.01
    assert opt.param_groups[1]["weight_decay"] == 0.1


def test_generator_of_parameters_is_accepted(rng):
    params = make_params(rng)
    opt = Adamax(p for p in params)
    assert opt.param_groups[0]["params"] == params


def test_parameter_keeps_a_float_array_without_copying():
    array = np.zeros(4, dtype=np.float32)
    assert Parameter(array).data is array
    assert Parameter([1.0, 2.0]).data.dtype == np.float64


@pytest.mark.parametrize("data", [np.arange(3), np.array([True, False]), np.array(["a"]), [1, 2]])
def test_parameter_refuses_non_float_data(data):
    with pytest.raises(TypeError, match="floating-point"):
        Parameter(data)


def test_foreign_parameter_objects_are_accepted(rng):
    class Tensor:
        """An object from another numpy autograd library: .data and .grad, custom __eq__."""

        def __init__(self, data):
            self.data, self.grad = data, None

        def __eq__(self, other):
            return self.data == other

        __hash__ = None  # unhashable, as element-wise __eq__ makes it

    x = rng.standard_normal(6)
    t = Tensor(x.copy())
    opt = Adamax([t], lr=0.1)
    g = rng.standard_normal(6)
    t.grad = g
    opt.step()
    ref = ReferenceAdamax([x], lr=0.1)
    ref.step([g])
    np.testing.assert_array_equal(t.data, ref.params[0])
    assert opt.state[t]["step"] == 1


def test_closure_is_called_once_before_the_update_and_its_value_returned(rng):
    params = make_params(rng)
    opt = Adamax(params)
    calls = []

    def closure():
        calls.append([p.data.copy() for p in params])
        set_grads(rng, params)
        return 1.25

    before = [p.data.copy() for p in params]
    assert opt.step(closure) == 1.25
    assert len(calls) == 1
    for seen, original in zip(calls[0], before):
        np.testing.assert_array_equal(seen, original)  # called before any update
    assert all(opt.state[p]["step"] == 1 for p in params)
    assert opt.step() is None


def test_raising_closure_changes_nothing(rng):
    params = make_params(rng)
    opt = Adamax(params)
    set_grads(rng, params)
    opt.step()
    before = snapshot(opt, params)

    def closure():
        raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError, match="loss exploded"):
        opt.step(closure)
    assert_unchanged(before, opt, params)


def test_zero_grad(rng):
    params = make_params(rng)
    opt = Adamax(params)
    set_grads(rng, params)
    grads = [p.grad for p in params]
    opt.zero_grad(set_to_none=False)
    for p, g in zip(params, grads):
        assert p.grad is g and not g.any()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_state_dict_numbers_parameters_across_groups_and_is_a_snapshot(rng):
    a, b, c = make_params(rng, shapes=[(2,), (3,), (4,)])
    opt = Adamax([{"params": [a, b]}, {"params": [c], "lr": 0.5}])
    a.grad = np.ones(2, np.float32)
    c.grad = np.ones(4, np.float32)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sorted(sd["state"]) == [0, 2]
    assert sd["param_groups"][1]["lr"] == 0.5
    saved = sd["state"][0]["exp_avg"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)
    assert sd["state"][0]["step"] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_resume_is_bit_for_bit(rng, dtype):
    shapes = [(17, 3), (40,)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(20)]

    straight = [Parameter(x.copy()) for x in init]
    opt = Adamax(straight, lr=0.01, weight_decay=0.05)
    for gs in grads:
        for p, g in zip(straight, gs):
            p.grad = g
        opt.step()

    first = [Parameter(x.copy()) for x in init]
    opt1 = Adamax(first, lr=0.01, weight_decay=0.05)
    for gs in grads[:10]:
        for p, g in zip(first, gs):
            p.grad = g
        opt1.step()
    sd = opt1.state_dict()
    resumed = [Parameter(p.data.copy()) for p in first]
    opt2 = Adamax(resumed, lr=123.0)  # hyperparameters come from the state dict
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.01
    for gs in grads[10:]:
        for p, g in zip(resumed, gs):
            p.grad = g
        opt2.step()
    for a, b in zip(straight, resumed):
        assert a.data.tobytes() == b.data.tobytes()
        assert opt.state[a]["step"] == opt2.state[b]["step"] == 20


def test_loaded_state_is_copied_into_the_parameters_layout(rng):
    p = Parameter(np.asfortranarray(rng.standard_normal((5, 3))))
    opt = Adamax([p])
    sd = {
        "state": {0: {"step": 2, "exp_avg": np.ones((5, 3)), "exp_inf": np.ones((5, 3))}},
        "param_groups": [{**opt.param_groups[0], "params": [0]}],
    }
    opt.load_state_dict(sd)
    assert opt.state[p]["exp_avg"].flags.f_contiguous
    assert opt.state[p]["exp_avg"] is not sd["state"][0]["exp_avg"]


def test_repr_lists_groups(rng):
    opt = Adamax(make_params(rng), lr=0.25)
    text = repr(opt)
    assert text.startswith("Adamax (") and "Parameter Group 0" in text and "lr: 0.25" in text


def test_num_threads_round_trip():
    default = adamax_rs.get_num_threads()
    try:
        adamax_rs.set_num_threads(1)
        assert adamax_rs.get_num_threads() == 1
    finally:
        adamax_rs.set_num_threads(0)
    assert adamax_rs.get_num_threads() == default
    for bad in (-1, 1025, 2**31):
        with pytest.raises(ValueError, match="between 0 and 1024"):
            adamax_rs.set_num_threads(bad)
    assert adamax_rs.get_num_threads() == default


def test_version_matches_cargo_toml():
    from pathlib import Path

    cargo = (Path(__file__).parents[1] / "Cargo.toml").read_text()
    assert f'version = "{adamax_rs.__version__}"' in cargo
