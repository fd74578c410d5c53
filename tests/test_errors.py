"""Every error: its type, a message naming what is wrong, and nothing changed afterwards."""

from __future__ import annotations

import numpy as np
import pytest

from adamax_rs import Adamax, Parameter, functional
from conftest import assert_unchanged, snapshot


@pytest.fixture
def trained(rng):
    """An optimizer over two groups, stepped twice, so there is state to protect."""
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(4, 3), (6,), (2,)]]
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    for _ in range(2):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
    return opt, params


# -- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -0.1}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
        ({"lr": float("inf")}, "learning rate"),
        ({"eps": -1e-8}, "epsilon"),
        ({"weight_decay": -0.5}, "weight_decay"),
        ({"betas": (0.0, 1.0)}, "beta parameter at index 1"),
        ({"betas": (-0.1, 0.9)}, "beta parameter at index 0"),
        ({"betas": (1.0, 0.9)}, "beta parameter at index 0"),
    ],
)
def test_bad_hyperparameters_are_value_errors(rng, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Adamax([Parameter(np.zeros(2))], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": "0.1"}, "lr must be a real number"),
        ({"lr": True}, "lr must be a real number"),
        ({"eps": None}, "eps must be a real number"),
        ({"maximize": 1}, "maximize must be a bool"),
        ({"betas": 0.9}, "betas must be a pair"),
    ],
)
def test_wrongly_typed_hyperparameters_are_type_errors(kwargs, message):
    with pytest.raises(TypeError, match=message):
        Adamax([Parameter(np.zeros(2))], **kwargs)


def test_params_argument_errors(rng):
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        Adamax([])
    with pytest.raises(TypeError, match="iterable of parameters"):
        Adamax(p)
    with pytest.raises(TypeError, match="Parameter"):
        Adamax(np.zeros(3))
    with pytest.raises(TypeError, match="wrap it as adamax_rs.Parameter"):
        Adamax([np.zeros(3)])
    with pytest.raises(TypeError, match="set"):
        Adamax({p})
    with pytest.raises(ValueError, match="more than once"):
        Adamax([p, p])
    with pytest.raises(ValueError, match="more than one parameter group"):
        Adamax([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match="dtype int64"):
        Adamax([type("T", (), {"data": np.arange(3), "grad": None})()])
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        Adamax([Parameter(frozen)])


def test_add_param_group_errors_leave_groups_alone(trained):
    opt, params = trained
    groups_before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [params[0]]})
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        opt.add_param_group({"params": [Parameter(np.zeros(1))], "betas": (0.9, 1.0)})
    with pytest.raises(TypeError, match="must be a dict"):
        opt.add_param_group([Parameter(np.zeros(1))])
    assert opt.param_groups == groups_before


# -- step --------------------------------------------------------------------------------------


def break_grad_shape(opt, params):
    params[1].grad = np.zeros(7, np.float32)


def break_grad_dtype(opt, params):
    params[2].grad = np.zeros(2, np.float64)


def break_grad_type(opt, params):
    params[0].grad = [[0.0] * 3] * 4


def grad_is_param(opt, params):
    params[1].grad = params[1].data


def grad_overlaps_param(opt, params):
    params[1].grad = params[1].data[::-1]


def param_read_only(opt, params):
    params[2].data.flags.writeable = False


def data_replaced_with_other_shape(opt, params):
    params[0].data = np.zeros((3, 4), np.float32)


def data_replaced_with_other_dtype(opt, params):
    params[0].data = np.zeros((4, 3), np.float64)


def data_replaced_with_ints(opt, params):
    # adamax_rs.Parameter refuses integer data when it is assigned (tested below); a parameter
    # object of another library may still hold it by the time of the step.
    foreign = Foreign(np.zeros((4, 3), np.int32))
    foreign.grad = np.zeros((4, 3), np.int32)
    opt.param_groups[0]["params"][0] = foreign


def state_array_wrong_shape(opt, params):
    opt.state[params[1]]["exp_inf"] = np.zeros(5, np.float32)


def lr_negative(opt, params):
    opt.param_groups[1]["lr"] = -1.0


def beta_one(opt, params):
    opt.param_groups[0]["beta2"] = 1.0


def eps_nan(opt, params):
    opt.param_groups[1]["eps"] = float("nan")


def lr_string(opt, params):
    opt.param_groups[0]["lr"] = "fast"


def flag_not_bool(opt, params):
    opt.param_groups[1]["maximize"] = "yes"


def key_deleted(opt, params):
    del opt.param_groups[1]["beta1"]


@pytest.mark.parametrize(
    "breakage, error, message",
    [
        (
            break_grad_shape,
            ValueError,
            r"group 0, parameter 1: the gradient has shape \(7,\) "
            r"but the parameter has shape \(6,\)",
        ),
        (break_grad_dtype, TypeError, "group 1, parameter 0: the gradient has dtype"),
        (break_grad_type, TypeError, "group 0, parameter 0: the gradient must be a numpy.ndarray"),
        (grad_is_param, ValueError, "group 0, parameter 1: the gradient is the parameter"),
        (
            grad_overlaps_param,
            ValueError,
            "group 0, parameter 1: the parameter shares memory with the gradient",
        ),
        (param_read_only, ValueError, "group 1, parameter 0: the parameter is read-only"),
        (
            data_replaced_with_other_shape,
            ValueError,
            "group 0, parameter 0: the gradient has shape",
        ),
        (data_replaced_with_other_dtype, TypeError, "group 0, parameter 0: the gradient has dtype"),
        (
            data_replaced_with_ints,
            TypeError,
            "group 0, parameter 0: parameter dtype int32 is not supported",
        ),
        (state_array_wrong_shape, ValueError, "group 0, parameter 1: exp_inf has shape"),
        (lr_negative, ValueError, "group 1: Invalid learning rate"),
        (beta_one, ValueError, "group 0: Invalid beta parameter at index 1"),
        (eps_nan, ValueError, "group 1: Invalid epsilon"),
        (lr_string, TypeError, "group 0: lr must be a real number"),
        (flag_not_bool, TypeError, "group 1: maximize must be a bool"),
        (key_deleted, ValueError, "group 1: missing hyperparameter 'beta1'"),
    ],
)
def test_step_errors_change_nothing(rng, trained, breakage, error, message):
    opt, params = trained
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    # Checks for all groups run before any write: break only a later array, so an early
    # write would show.
    before = snapshot(opt, params)
    breakage(opt, params)
    if breakage is state_array_wrong_shape:
        before = snapshot(opt, params)
    with pytest.raises(error, match=message):
        opt.step()
    original = [p.data for p in params]
    for p, data in zip(params, before["data"]):
        if p.data.shape == data.shape and p.data.dtype == data.dtype:
            assert p.data.tobytes() == data.tobytes()
    assert all(opt.state[p]["step"] == 2 for p in params)
    for p, d in zip(params, original):
        assert p.data is d


def test_failed_first_step_creates_no_state(rng):
    a, b = Parameter(np.zeros(3, np.float32)), Parameter(np.zeros(3, np.float32))
    opt = Adamax([a, b])
    a.grad = np.ones(3, np.float32)
    b.grad = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="parameter 1"):
        opt.step()
    assert len(opt.state) == 0
    assert not a.data.any()


# -- state dicts -------------------------------------------------------------------------------


def good_state_dict(opt):
    return opt.state_dict()


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda sd: sd["param_groups"].pop(), ValueError, "parameter groups"),
        (lambda sd: sd["param_groups"][0]["params"].pop(), ValueError, "parameters in this group"),
        (lambda sd: sd.pop("state"), ValueError, "no 'state' key"),
        (lambda sd: sd["state"][0].pop("exp_avg"), ValueError, "missing 'exp_avg'"),
        (
            lambda sd: sd["state"][1].update(step=-1),
            ValueError,
            r"'step' must be between 0 and 2\*\*53, got -1",
        ),
        (lambda sd: sd["state"][1].update(step=1.5), TypeError, "'step' must be an int"),
        (
            lambda sd: sd["state"][0].update(exp_inf=np.zeros(3, np.float32)),
            ValueError,
            "has shape",
        ),
        (lambda sd: sd["state"][0].update(exp_inf=np.zeros((4, 3), np.int64)), TypeError, "dtype"),
        (lambda sd: sd["state"].update({7: sd["state"][0]}), ValueError, "parameter index 7"),
        (lambda sd: sd["state"][0].update(junk=1), ValueError, "unexpected keys"),
        (lambda sd: sd["param_groups"][1].update(lr=-2.0), ValueError, "learning rate"),
        (
            lambda sd: sd["param_groups"][1].pop("beta2"),
            ValueError,
            "missing hyperparameter 'beta2'",
        ),
    ],
)
def test_bad_state_dicts_are_refused_before_anything_changes(trained, edit, error, message):
    opt, params = trained
    sd = opt.state_dict()
    edit(sd)
    before = snapshot(opt, params)
    groups_before = [dict(g) for g in opt.param_groups]
    with pytest.raises(error, match=message):
        opt.load_state_dict(sd)
    assert_unchanged(before, opt, params)
    assert opt.param_groups == groups_before


def test_state_dict_of_another_optimizer_is_refused(trained):
    opt, params = trained
    sgd_like = {
        "state": {0: {"momentum_buffer": np.zeros((4, 3), np.float32)}},
        "param_groups": [
            {"lr": 0.1, "momentum": 0.9, "params": [0, 1]},
            {"lr": 0.1, "momentum": 0.9, "params": [2]},
        ],
    }
    with pytest.raises(ValueError):
        opt.load_state_dict(sgd_like)


# -- functional --------------------------------------------------------------------------------


def test_functional_checks_lengths_and_steps():
    p, g, m, u = (np.zeros(3) for _ in range(4))
    with pytest.raises(ValueError, match="steps has 2 entries"):
        functional.adamax([p], [g], [m], [u], [1, 2], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8)
    for bad, shown in ((0, "0"), (-1, "-1"), (2**53 + 1, str(2**53 + 1)), (10**400, "1000")):
        with pytest.raises(ValueError, match=rf"step must be between 1 and 2\*\*53, got {shown}"):
            functional.adamax([p], [g], [m], [u], [bad], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8)
    with pytest.raises(TypeError, match="steps must be integers"):
        functional.adamax([p], [g], [m], [u], [1.0], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8)
    assert not p.any()


# -- unusual arrays ----------------------------------------------------------------------------


class Foreign:
    """A parameter from another library: anything with .data and .grad."""

    def __init__(self, data):
        self.data, self.grad = data, None


@pytest.mark.parametrize(
    "data, error, message",
    [
        (np.arange(3), TypeError, "dtype int64 is not supported"),
        (np.array([True, False]), TypeError, "dtype bool is not supported"),
        (np.array([1.0, None], dtype=object), TypeError, "dtype object is not supported"),
        (np.array(["a", "b"]), TypeError, "dtype <U1 is not supported"),
        (np.zeros(3, dtype=">f4"), TypeError, r"dtype >f4 is not supported"),
        ([1.0, 2.0], TypeError, r"\.data must be a numpy.ndarray, got list"),
    ],
)
def test_unsupported_parameter_data_is_refused_at_construction(data, error, message):
    with pytest.raises(error, match=message):
        Adamax([Foreign(data)])


def misaligned_float32(n):
    """A writeable float32 view starting one byte into its buffer."""
    buffer = np.zeros(4 * n + 1, dtype=np.uint8)
    return buffer[1:].view(np.float32)


def test_misaligned_arrays_are_a_clear_type_error():
    array = misaligned_float32(8)
    assert not array.flags.aligned
    with pytest.raises(TypeError, match="not aligned"):
        Adamax([Parameter(array)])
    # Made misaligned after construction, or a misaligned gradient: refused at the step.
    p = Parameter(np.zeros(8, np.float32))
    opt = Adamax([p])
    p.grad = misaligned_float32(8)
    with pytest.raises(TypeError, match="group 0, parameter 0: the gradient is not aligned"):
        opt.step()
    p.data = misaligned_float32(8)
    p.grad = np.ones(8, np.float32)
    with pytest.raises(TypeError, match="group 0, parameter 0: the parameter is not aligned"):
        opt.step()
    assert len(opt.state) == 0


def test_parameter_refuses_data_it_cannot_optimise_when_assigned():
    p = Parameter(np.ones(3, np.float32))
    for bad, error, message in [
        (np.zeros(3, np.int32), TypeError, "floating-point or complex array, got dtype int32"),
        ([1.0, 2.0], TypeError, "must be a numpy.ndarray, got list"),
        (np.zeros(3, bool), TypeError, "got dtype bool"),
    ]:
        with pytest.raises(error, match=message):
            p.data = bad
        assert p.data.dtype == np.float32 and (p.data == 1).all()


def test_big_endian_data_swapped_in_after_construction_is_refused(rng):
    p = Parameter(np.zeros(4))
    opt = Adamax([p])
    p.data = np.zeros(4, dtype=">f8")
    p.grad = np.ones(4, dtype=">f8")
    with pytest.raises(TypeError, match="parameter dtype >f8 is not supported"):
        opt.step()
    assert not p.data.any()


def test_junk_top_level_keys_in_a_state_dict_are_refused(trained):
    opt, params = trained
    sd = opt.state_dict()
    sd["extra"] = 1
    with pytest.raises(ValueError, match="unexpected keys"):
        opt.load_state_dict(sd)


def test_two_parameters_over_one_buffer_in_one_step_are_refused(rng):
    buffer = np.zeros(10)
    a, b = Parameter(buffer[:6]), Parameter(buffer[4:])
    opt = Adamax([a, b])
    a.grad, b.grad = np.ones(6), np.ones(6)
    with pytest.raises(
        ValueError, match="shares memory with the parameter of group 0, parameter 1"
    ):
        opt.step()
    assert not buffer.any()


def test_one_gradient_shared_by_two_parameters_is_fine(rng):
    a, b = Parameter(np.zeros(3)), Parameter(np.zeros(3))
    opt = Adamax([a, b], lr=0.1)
    a.grad = b.grad = np.ones(3)
    opt.step()
    np.testing.assert_array_equal(a.data, b.data)
