"""16-bit parameters, state dtypes, master weights and complex parameters."""

from __future__ import annotations

import numpy as np
import pytest

from adamax_rs import Adamax, Parameter
from reference import adamax_reference_step

try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the dev requirements
    BF16 = None

HALF = [np.dtype(np.float16)] + ([BF16] if BF16 is not None else [])
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def compute_dtype(param, state):
    return F64 if F64 in (param, state) else F32


def reference_run(init, grads, param_dtype, state_dtype, master=False, **hyper):
    """Each step: load into the compute type, the formula, round back to the storage types."""
    c = compute_dtype(param_dtype, state_dtype)
    p = init.astype(param_dtype)
    w = p.astype(state_dtype) if master else None
    m = np.zeros(p.shape, state_dtype)
    u = np.zeros(p.shape, state_dtype)
    for t, g in enumerate(grads, start=1):
        source = w if master else p
        new_p, new_m, new_u = adamax_reference_step(
            source.astype(c), g.astype(param_dtype).astype(c), m.astype(c), u.astype(c), t, **hyper
        )
        m, u = new_m.astype(state_dtype), new_u.astype(state_dtype)
        if master:
            w = new_p.astype(state_dtype)
            p = w.astype(param_dtype)
        else:
            p = new_p.astype(param_dtype)
    return p, m, u, w


PAIRS = [(h, F32) for h in HALF] + [(h, F64) for h in HALF] + [(F32, F64), (F64, F32), (F32, F32)]


@pytest.mark.parametrize("param_dtype, state_dtype", PAIRS, ids=lambda d: str(d))
@pytest.mark.parametrize(
    "flags",
    [{}, {"weight_decay": 0.1, "maximize": True}, {"eps_inside_max": True, "weight_decay": 0.05}],
)
def test_every_dtype_pair_matches_the_rounded_reference(rng, param_dtype, state_dtype, flags):
    init = rng.standard_normal((9, 7))
    grads = [rng.standard_normal((9, 7)) * 10.0 ** rng.uniform(-2, 2) for _ in range(20)]
    p = Parameter(init.astype(param_dtype))
    explicit = (
        None
        if (param_dtype in HALF and state_dtype == F32) or param_dtype == state_dtype
        else state_dtype
    )
    opt = Adamax([p], lr=0.01, state_dtype=explicit, **flags)
    for g in grads:
        p.grad = g.astype(param_dtype)
        opt.step()
    want_p, want_m, want_u, _ = reference_run(
        init, grads, param_dtype, state_dtype, lr=0.01, **flags
    )
    assert p.data.dtype == param_dtype
    assert opt.state[p]["exp_avg"].dtype == state_dtype
    assert p.data.tobytes() == want_p.tobytes()
    assert opt.state[p]["exp_avg"].tobytes() == want_m.tobytes()
    assert opt.state[p]["exp_inf"].tobytes() == want_u.tobytes()


@pytest.mark.parametrize("param_dtype", HALF, ids=str)
def test_half_parameters_stay_within_their_rounding_of_a_float64_run(rng, param_dtype):
    init = rng.standard_normal(200).astype(param_dtype)
    g = rng.standard_normal(200).astype(param_dtype)
    p = Parameter(init.copy())
    opt = Adamax([p], lr=0.01)
    p.grad = g
    opt.step()
    exact, _, _ = adamax_reference_step(
        init.astype(F64), g.astype(F64), np.zeros(200), np.zeros(200), 1, lr=0.01
    )
    # One rounding to the parameter's type (10 or 7 mantissa bits): within half an ulp of
    # that type, plus the float32 arithmetic's own (far smaller) error.
    mantissa_bits = 10 if param_dtype == np.float16 else 7
    ulp = 2.0 ** (np.floor(np.log2(np.abs(exact))) - mantissa_bits)
    error = np.abs(p.data.astype(F64) - exact)
    assert np.all(error <= ulp / 2 + np.abs(exact) * 2.0**-22)
    assert np.mean(error) > 0  # the comparison is not vacuous: the rounding shows


@pytest.mark.parametrize("param_dtype", HALF, ids=str)
def test_nan_stays_nan_when_rounded_to_16_bits(param_dtype):
    p = Parameter(np.zeros(3, param_dtype))
    opt = Adamax([p], lr=0.1)
    p.grad = np.array([np.nan, 1.0, -1.0]).astype(param_dtype)
    opt.step()
    assert np.isnan(p.data.astype(F32)[0]) and np.isfinite(p.data.astype(F32)[1:]).all()


def test_master_weights_keep_small_updates_that_float16_loses():
    steps, lr = 50, 1e-4  # each update is far below float16's half ulp at 1.0 (2**-11)
    plain, mastered = Parameter(np.ones(4, np.float16)), Parameter(np.ones(4, np.float16))
    opt_plain = Adamax([plain], lr=lr)
    opt_master = Adamax([mastered], lr=lr, master_weights=True)
    for _ in range(steps):
        plain.grad = np.ones(4, np.float16)
        mastered.grad = np.ones(4, np.float16)
        opt_plain.step()
        opt_master.step()
    assert (plain.data == 1).all()  # stalled: every update rounded away
    master = opt_master.state[mastered]["master"]
    assert master.dtype == np.float32
    assert master[0] == pytest.approx(1 - steps * lr, rel=1e-3)
    assert (mastered.data == master.astype(np.float16)).all()
    assert (mastered.data < 1).all()
    want_p, _, _, want_w = reference_run(
        np.ones(4), [np.ones(4)] * steps, np.dtype(np.float16), F32, master=True, lr=lr
    )
    assert master.tobytes() == want_w.tobytes() and mastered.data.tobytes() == want_p.tobytes()


def test_master_weights_round_trip_through_state_dicts():
    p = Parameter(np.ones(3, np.float16))
    opt = Adamax([p], lr=1e-4, master_weights=True)
    p.grad = np.ones(3, np.float16)
    opt.step()
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_inf", "master"}
    other = Adamax([Parameter(p.data.copy())], master_weights=True)
    other.load_state_dict(sd)
    q = other.param_groups[0]["params"][0]
    assert other.state[q]["master"].tobytes() == opt.state[p]["master"].tobytes()
    del sd["state"][0]["master"]
    with pytest.raises(ValueError, match="missing 'master'"):
        Adamax([Parameter(p.data.copy())], master_weights=True).load_state_dict(sd)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_parameters_are_updated_as_pairs_of_reals(rng, dtype):
    real = np.float32 if dtype == np.complex64 else np.float64
    shape = (4, 3)
    init = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    p = Parameter(init.copy())
    opt = Adamax([p], lr=0.01, weight_decay=0.1)
    pairs = init.view(real).reshape(4, 3, 2).copy()
    m, u = np.zeros_like(pairs), np.zeros_like(pairs)
    for t in range(1, 11):
        g = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        p.grad = g
        opt.step()
        pairs, m, u = adamax_reference_step(
            pairs, g.view(real).reshape(4, 3, 2), m, u, t, lr=0.01, weight_decay=0.1
        )
    assert p.data.dtype == dtype and opt.state[p]["exp_avg"].dtype == dtype
    assert p.data.view(real).tobytes() == pairs.tobytes()
    assert opt.state[p]["exp_inf"].view(real).tobytes() == u.tobytes()


def test_complex_column_slice_is_updated_in_place(rng):
    base = (rng.standard_normal((5, 4)) + 1j * rng.standard_normal((5, 4))).astype(np.complex64)
    before = base.copy()
    p = Parameter(base[:, 1])
    opt = Adamax([p], lr=0.1)
    p.grad = np.ones(5, np.complex64)
    opt.step()
    assert not np.array_equal(base[:, 1], before[:, 1])
    np.testing.assert_array_equal(base[:, [0, 2, 3]], before[:, [0, 2, 3]])


def test_complex_parameter_with_a_real_gradient_is_a_type_error():
    p = Parameter(np.zeros(3, np.complex64))
    opt = Adamax([p])
    p.grad = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="group 0, parameter 0: the gradient has dtype float32"):
        opt.step()


def test_state_dict_loading_converts_only_where_exact():
    p = Parameter(np.ones(3, np.float32))
    opt32 = Adamax([p])
    p.grad = np.ones(3, np.float32)
    opt32.step()
    sd32 = opt32.state_dict()
    wide = Adamax([Parameter(np.ones(3, np.float32))], state_dtype=np.float64)
    wide.load_state_dict(sd32)  # float32 -> float64 is exact
    q = wide.param_groups[0]["params"][0]
    assert wide.state[q]["exp_avg"].dtype == np.float64
    narrow = Adamax([Parameter(np.ones(3, np.float32))])
    with pytest.raises(TypeError, match="does not convert exactly"):
        narrow.load_state_dict(wide.state_dict())


@pytest.mark.parametrize("bad", [np.float16, np.int32, "complex64", "nonsense", "int8", "9bit"])
def test_state_dtype_names_a_supported_state(bad):
    # A dtype or a name of anything else is a wrong value.
    with pytest.raises(ValueError, match="state_dtype"):
        Adamax([Parameter(np.ones(2))], state_dtype=bad)


@pytest.mark.parametrize("bad", [3, 8.0, ["8bit"], object()])
def test_state_dtype_of_the_wrong_type(bad):
    with pytest.raises(TypeError, match="state_dtype"):
        Adamax([Parameter(np.ones(2))], state_dtype=bad)
