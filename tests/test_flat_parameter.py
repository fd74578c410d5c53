"""FlatParameter: many parameters stepped as one buffer.

The numbers are checked against the plain numpy reference (tests/reference.py), member by
member; the rest checks the contract: members hold views, a rebound member is refused before
anything changes, construction is all or nothing, and zero_grad, state dicts, checkpoints and
pickling keep the members linked to the buffer.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest

import adamax_rs
from adamax_rs import Adamax, FlatParameter, Parameter
from reference import ReferenceAdamax

SHAPES = [(3, 4), (16,), (1,), (5, 2, 3), (7,), (2, 9)]


def make_members(dtype=np.float32, seed=0, layouts=True):
    """Parameters of mixed shapes; with ``layouts``, some in Fortran order or transposed."""
    rng = np.random.default_rng(seed)
    members = []
    for index, shape in enumerate(SHAPES):
        data = rng.standard_normal(shape).astype(dtype)
        if layouts and index == 0:
            data = np.asfortranarray(data)
        if layouts and index == 5:
            data = np.ascontiguousarray(data.T).T  # a transposed view of shape (2, 9)
        members.append(Parameter(data))
    return members


def gradients(members, rng):
    return [rng.standard_normal(p.data.shape).astype(p.data.dtype) for p in members]


def assert_step_refused_and_nothing_changed(opt, flat, match):
    """The next step raises ValueError matching ``match``, and the buffers and state are
    exactly as before."""
    data, grad = flat.data.copy(), Parameter.grad.__get__(flat).copy()
    state = {key: np.copy(value) for key, value in opt.state[flat].items()}
    with pytest.raises(ValueError, match=match):
        opt.step()
    np.testing.assert_array_equal(flat.data, data)
    np.testing.assert_array_equal(Parameter.grad.__get__(flat), grad)
    for key, value in opt.state[flat].items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"lr": 0.01, "weight_decay": 0.1},
        {"lr": 0.003, "beta1": 0.8, "beta2": 0.99, "eps_inside_max": True, "maximize": True},
        {"lr": 0.01, "weight_decay": 0.05, "decoupled_weight_decay": True},
    ],
)
def test_steps_equal_the_numpy_reference_member_by_member(dtype, hyper):
    members = make_members(dtype)
    reference = ReferenceAdamax([p.data for p in members], **hyper)
    flat = FlatParameter(members)
    options = {k: v for k, v in hyper.items() if k not in ("beta1", "beta2")}
    if "beta1" in hyper:
        options["betas"] = (hyper["beta1"], hyper["beta2"])
    opt = Adamax([flat], **options)
    rng = np.random.default_rng(1)
    for _ in range(20):
        grads = gradients(members, rng)
        for member, grad in zip(members, grads):
            member.grad[...] = grad
        opt.step()
        reference.step(grads)
    for index, (member, expected) in enumerate(zip(members, reference.params)):
        assert member.data.shape == expected.shape
        np.testing.assert_array_equal(member.data, expected, err_msg=f"member {index}")
    assert opt.state[flat]["step"] == 20


def test_members_hold_views_of_the_buffers_in_order():
    members = make_members()
    before = [p.data.copy() for p in members]
    flat = FlatParameter(members)
    assert flat.members == tuple(members)
    assert flat.data.ndim == 1 and flat.data.size == sum(p.data.size for p in members)
    start = 0
    for member, values in zip(members, before):
        assert np.shares_memory(member.data, flat.data)
        assert np.shares_memory(member.grad, flat.grad)
        np.testing.assert_array_equal(member.data, values)
        np.testing.assert_array_equal(flat.data[start : start + values.size], values.ravel())
        start += values.size


def test_gradients_set_before_are_kept_and_missing_ones_are_zero():
    members = make_members(layouts=False)
    members[1].grad = np.full(16, 2.0, dtype=np.float32)
    members[3].grad = np.asfortranarray(np.full((5, 2, 3), -1.0, dtype=np.float32))
    FlatParameter(members)
    np.testing.assert_array_equal(members[1].grad, np.full(16, 2.0, dtype=np.float32))
    np.testing.assert_array_equal(members[3].grad, np.full((5, 2, 3), -1.0, dtype=np.float32))
    assert not members[0].grad.any()


@pytest.mark.parametrize("slot", ["grad", "data"])
def test_a_rebound_member_is_refused_and_nothing_changes(slot):
    members = make_members()
    flat = FlatParameter(members)
    opt = Adamax([flat], lr=0.01)
    for member in members:
        member.grad[...] = 1.0
    opt.step()
    setattr(members[4], slot, np.ones(7, dtype=np.float32))
    assert_step_refused_and_nothing_changed(opt, flat, f"member 4: its {slot} was rebound")


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        (Parameter(np.zeros(3, dtype=np.float32)), TypeError, "iterable"),
        (np.zeros(3, dtype=np.float32), TypeError, "iterable"),
        (5, TypeError, "iterable"),
        ({Parameter(np.zeros(3, dtype=np.float32))}, TypeError, "a set's order"),
        ([], ValueError, "at least one"),
        ([np.zeros(3, dtype=np.float32)], TypeError, "member 0 must be an adamax_rs.Parameter"),
    ],
)
def test_construction_refuses_what_is_not_a_list_of_parameters(params, error, match):
    with pytest.raises(error, match=match):
        FlatParameter(params)


def test_construction_refuses_duplicates_mixed_dtypes_and_flat_members():
    a = Parameter(np.zeros(3, dtype=np.float32))
    b = Parameter(np.zeros(3, dtype=np.float64))
    with pytest.raises(ValueError, match="members 0 and 1 are the same parameter"):
        FlatParameter([a, a])
    with pytest.raises(ValueError, match="member 0 is float32, member 1 is float64"):
        FlatParameter([a, b])
    inner = FlatParameter([Parameter(np.zeros(2, dtype=np.float32))])
    with pytest.raises(TypeError, match="member 1 must be an adamax_rs.Parameter"):
        FlatParameter([a, inner])


@pytest.mark.parametrize(
    ("grad", "error", "match"),
    [
        (np.zeros(4, dtype=np.float32), ValueError, "shape"),
        (np.zeros(3, dtype=np.complex64), TypeError, "dtype complex64"),
        (np.zeros(3, dtype=np.float64), TypeError, "dtype float64"),
        (np.zeros(3, dtype=np.int64), TypeError, "dtype int64"),
        ([0.0, 0.0, 0.0], TypeError, "numpy.ndarray"),
    ],
)
def test_a_bad_member_gradient_is_refused_and_no_member_changes(grad, error, match):
    members = [Parameter(np.arange(3, dtype=np.float32)) for _ in range(3)]
    datas = [p.data for p in members]
    members[2].grad = grad
    with pytest.raises(error, match=f"member 2.*{match}"):
        FlatParameter(members)
    assert all(p.data is d for p, d in zip(members, datas))
    assert members[0].grad is None and members[2].grad is grad


def test_its_data_and_grad_cannot_be_rebound():
    flat = FlatParameter(make_members())
    with pytest.raises(TypeError, match="cannot be rebound"):
        flat.data = np.zeros(flat.data.size, dtype=np.float32)
    with pytest.raises(TypeError, match="cannot be rebound"):
        flat.grad = None


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_zeroes_the_buffer_in_place_beside_other_parameters(set_to_none):
    members = make_members()
    flat = FlatParameter(members)
    other = Parameter(np.ones(4, dtype=np.float32))
    other.grad = np.ones(4, dtype=np.float32)
    opt = Adamax([flat, other])
    for member in members:
        member.grad[...] = 3.0
    views = [member.grad for member in members]
    opt.zero_grad(set_to_none=set_to_none)
    assert all(member.grad is view for member, view in zip(members, views))
    assert not flat.grad.any()
    if set_to_none:
        assert other.grad is None
    else:
        assert not other.grad.any()


def test_state_dict_round_trip_continues_exactly():
    rng = np.random.default_rng(3)
    members = make_members(seed=4)
    flat = FlatParameter(members)
    opt = Adamax([flat], lr=0.01)
    for _ in range(3):
        for member, grad in zip(members, gradients(members, rng)):
            member.grad[...] = grad
        opt.step()
    saved = opt.state_dict()
    copies = make_members(seed=4)
    flat_copy = FlatParameter(copies)
    flat_copy.data[...] = flat.data
    opt_copy = Adamax([flat_copy], lr=0.01)
    opt_copy.load_state_dict(saved)
    for _ in range(3):
        grads = gradients(members, rng)
        for member, twin, grad in zip(members, copies, grads):
            member.grad[...] = grad
            twin.grad[...] = grad
        opt.step()
        opt_copy.step()
    for member, twin in zip(members, copies):
        np.testing.assert_array_equal(member.data, twin.data)


def test_a_training_checkpoint_loads_into_the_buffer_and_the_members(tmp_path):
    members = make_members()
    flat = FlatParameter(members)
    opt = Adamax([flat], lr=0.01)
    for member in members:
        member.grad[...] = 0.5
    opt.step()
    expected = [p.data.copy() for p in members]
    adamax_rs.save_training_checkpoint(opt, tmp_path / "run.ckpt")
    flat.data[...] = 0
    opt.step()
    adamax_rs.load_training_checkpoint(opt, tmp_path / "run.ckpt")
    for member, values in zip(members, expected):
        np.testing.assert_array_equal(member.data, values)
        assert np.shares_memory(member.data, flat.data)
    opt.step()  # the members are still linked: no error


def test_pickling_keeps_the_members_linked():
    members = make_members()
    flat = FlatParameter(members, name="biases")
    for member in members:
        member.grad[...] = 1.5
    flat2, members2 = pickle.loads(pickle.dumps((flat, members)))
    assert isinstance(flat2, FlatParameter) and flat2.name == "biases"
    assert flat2.members == tuple(members2)
    np.testing.assert_array_equal(flat2.data, flat.data)
    np.testing.assert_array_equal(flat2.grad, flat.grad)
    for member in members2:
        assert np.shares_memory(member.data, flat2.data)
    Adamax([flat2]).step()


def test_a_member_also_given_on_its_own_is_refused_as_overlapping():
    members = make_members()
    flat = FlatParameter(members)
    opt = Adamax([flat, members[2]])
    for member in members:
        member.grad[...] = 1.0
    before = flat.data.copy()
    with pytest.raises(ValueError):
        opt.step()
    np.testing.assert_array_equal(flat.data, before)


def test_tied_or_read_only_members_are_refused_and_no_member_changes():
    a = Parameter(np.ones(8, dtype=np.float32))
    b = Parameter(a.data[2:5])  # tied: shares a's memory
    c = Parameter(np.ones(3, dtype=np.float32))
    datas = [p.data for p in (a, b, c)]
    with pytest.raises(ValueError, match="members 0 and 1 share memory"):
        FlatParameter([a, b, c])
    # Interleaved views share an extent but no memory: accepted.
    whole = np.arange(8, dtype=np.float32)
    evens, odds = Parameter(whole[::2]), Parameter(whole[1::2])
    FlatParameter([evens, odds])
    frozen = np.ones(3, dtype=np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="member 1: its data is read-only"):
        FlatParameter([c, Parameter(frozen)])
    assert all(p.data is d for p, d in zip((a, b, c), datas))


@pytest.mark.parametrize(
    "change",
    ["shape", "writeable", "dtype", "strides"],
)
@pytest.mark.parametrize("slot", ["data", "grad"])
def test_a_view_changed_in_place_is_refused_and_nothing_changes(slot, change):
    members = [Parameter(np.ones(6, dtype=np.float32)) for _ in range(3)]
    flat = FlatParameter(members)
    opt = Adamax([flat], lr=0.01)
    for member in members:
        member.grad[...] = 1.0
    opt.step()
    view = getattr(members[1], slot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting strides or dtype
        if change == "shape":
            view.shape = (2, 3)
        elif change == "writeable":
            view.flags.writeable = False
        elif change == "dtype":
            view.dtype = np.int32
        else:
            view.strides = (0,)
    assert_step_refused_and_nothing_changed(
        opt, flat, f"member 1: its {slot} view was changed in place"
    )


def test_zero_grad_refuses_a_read_only_gradient_buffer_before_changing_anything():
    flat = FlatParameter(make_members())
    other = Parameter(np.ones(2, dtype=np.float32))
    other.grad = np.ones(2, dtype=np.float32)
    grad = other.grad
    opt = Adamax([other, flat])
    Parameter.grad.__get__(flat).flags.writeable = False
    for set_to_none in (True, False):
        with pytest.raises(TypeError, match="group 0, parameter 1: .*read-only"):
            opt.zero_grad(set_to_none=set_to_none)
        assert other.grad is grad and grad.all()


class Named(FlatParameter):
    """A subclass, defined where pickle finds it."""


def test_copies_deep_only_and_pickles_keep_subclass_and_attributes():
    members = make_members()
    flat = Named(members, name="all")
    flat.frozen = True
    with pytest.raises(TypeError, match="cannot be copied shallowly"):
        copy.copy(flat)
    clone = copy.deepcopy(flat)
    assert type(clone) is Named and clone.frozen and clone.name == "all"
    assert not any(m is c for m, c in zip(flat.members, clone.members))
    Adamax([flat]).step()  # the original still holds its members
    back = pickle.loads(pickle.dumps(flat))
    assert type(back) is Named and back.frozen
    with pytest.raises(TypeError, match="cannot be set"):
        flat.__setstate__({"grad": None})
