"""The Rust update against the plain numpy reference, bit for bit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adamax_rs import Adamax, Parameter, functional
from reference import ReferenceAdamax, adamax_reference_step

FLAG_NAMES = ("maximize", "eps_inside_max", "decoupled_weight_decay")


def assert_same_bits(actual, expected):
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def run_both(arrays, grads_per_step, **hyper):
    params = [Parameter(a.copy()) for a in arrays]
    opt = Adamax(
        params,
        **{k: v for k, v in hyper.items() if k not in ("beta1", "beta2")},
        betas=(hyper.get("beta1", 0.9), hyper.get("beta2", 0.999)),
    )
    ref = ReferenceAdamax(arrays, **hyper)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        ref.step(grads)
    return params, opt, ref


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "flags", list(itertools.product([False, True], repeat=3)), ids=lambda f: "-".join(map(str, f))
)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_every_flag_matches_reference_over_many_steps(rng, dtype, flags, weight_decay):
    hyper = dict(zip(FLAG_NAMES, flags), lr=0.01, weight_decay=weight_decay)
    shapes = [(7, 5), (1,), (33,)]
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    steps = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(30)]
    params, opt, ref = run_both(arrays, steps, **hyper)
    for p, expected in zip(params, ref.params):
        assert_same_bits(p.data, expected)
    for p, (t, m, u) in zip(params, ref.state):
        st = opt.state[p]
        assert st["step"] == t == 30
        assert_same_bits(st["exp_avg"], m)
        assert_same_bits(st["exp_inf"], u)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hundred_steps_large_tensors_use_threads_and_match(rng, dtype):
    # Large enough to be split across the thread pool, with sizes that are not multiples of
    # the vector width or the split alignment.
    shapes = [(300_001,), (517, 129), (3,)]
    arrays = [rng.standard_normal(s).astype(dtype) for s in shapes]
    params = [Parameter(a.copy()) for a in arrays]
    opt = Adamax(params, lr=0.003, weight_decay=0.01)
    ref = ReferenceAdamax(arrays, lr=0.003, weight_decay=0.01)
    for _ in range(100):
        grads = [rng.standard_normal(s).astype(dtype) * 10 ** rng.uniform(-3, 3) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        ref.step(grads)
    for p, expected in zip(params, ref.params):
        assert_same_bits(p.data, expected)


def test_groups_with_different_hyperparameters_and_dtypes(rng):
    a = rng.standard_normal((4, 4)).astype(np.float32)
    b = rng.standard_normal(10)
    c = rng.standard_normal(6).astype(np.float32)
    pa, pb, pc = Parameter(a.copy()), Parameter(b.copy()), Parameter(c.copy())
    opt = Adamax(
        [
            {"params": [pa, pb], "lr": 0.05, "betas": (0.8, 0.99)},
            {"params": [pc], "weight_decay": 0.2, "maximize": True, "eps_inside_max": True},
        ],
        lr=0.01,
    )
    ref_ab = ReferenceAdamax([a, b], lr=0.05, beta1=0.8, beta2=0.99)
    ref_c = ReferenceAdamax([c], lr=0.01, weight_decay=0.2, maximize=True, eps_inside_max=True)
    for _ in range(10):
        ga, gb, gc = (rng.standard_normal(x.shape).astype(x.dtype) for x in (a, b, c))
        pa.grad, pb.grad, pc.grad = ga, gb, gc
        opt.step()
        ref_ab.step([ga, gb])
        ref_c.step([gc])
    assert_same_bits(pa.data, ref_ab.params[0])
    assert_same_bits(pb.data, ref_ab.params[1])
    assert_same_bits(pc.data, ref_c.params[0])


def test_missing_gradient_skips_parameter_and_its_step_count(rng):
    arrays = [rng.standard_normal(5).astype(np.float32) for _ in range(2)]
    schedule = [(True, True), (False, True), (True, False), (False, False), (True, True)]
    grads_per_step = [
        [rng.standard_normal(5).astype(np.float32) if has else None for has in step]
        for step in schedule
    ]
    params, opt, ref = run_both(arrays, grads_per_step, lr=0.1)
    assert opt.state[params[0]]["step"] == 3
    assert opt.state[params[1]]["step"] == 3
    for p, expected in zip(params, ref.params):
        assert_same_bits(p.data, expected)


def test_parameter_never_given_a_gradient_has_no_state(rng):
    a, b = Parameter(np.ones(3)), Parameter(np.ones(3))
    opt = Adamax([a, b])
    a.grad = np.ones(3)
    opt.step()
    assert b not in opt.state
    np.testing.assert_array_equal(b.data, np.ones(3))


def test_hyperparameter_changes_take_effect_at_the_next_step(rng):
    x = rng.standard_normal(8)
    p = Parameter(x.copy())
    opt = Adamax([p], lr=0.01)
    ref = ReferenceAdamax([x])
    settings = [
        dict(lr=0.01),
        dict(lr=0.5, beta1=0.5),
        dict(lr=0.5, beta1=0.5, beta2=0.9, eps=1e-3),
        dict(lr=0.1, weight_decay=0.3, decoupled_weight_decay=True),
        dict(lr=0.1, maximize=True, eps_inside_max=True),
    ]
    current = {}
    for setting in settings:
        opt.param_groups[0].update(setting)
        current.update(setting)
        g = rng.standard_normal(8)
        p.grad = g
        opt.step()
        ref.step([g], hyper=current)
    assert_same_bits(p.data, ref.params[0])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nan_and_inf_in_gradients_propagate_like_numpy():
    p = Parameter(np.zeros(4, dtype=np.float32))
    opt = Adamax([p], lr=0.1)
    g = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    p.grad = g
    opt.step()
    expected, m, u = adamax_reference_step(
        np.zeros(4, np.float32), g, np.zeros(4, np.float32), np.zeros(4, np.float32), 1, lr=0.1
    )
    assert_same_bits(p.data, expected)
    assert np.isnan(opt.state[p]["exp_inf"][0])
    assert np.isnan(p.data[0])
    assert np.isfinite(p.data[3])


def test_nan_in_state_is_not_dropped_by_the_max():
    # u = max(beta2 * NaN, |g|) must stay NaN: IEEE maxNum would return |g| and hide it.
    p = Parameter(np.zeros(2))
    opt = Adamax([p])
    p.grad = np.ones(2)
    opt.step()
    opt.state[p]["exp_inf"][0] = np.nan
    opt.step()
    assert np.isnan(opt.state[p]["exp_inf"][0])
    assert not np.isnan(opt.state[p]["exp_inf"][1])


def layouts(rng, dtype):
    """(parameter array, gradient) pairs over C, Fortran, strided and mixed layouts."""
    base = rng.standard_normal((40, 30)).astype(dtype)
    yield "c", base.copy(), rng.standard_normal((40, 30)).astype(dtype)
    yield (
        "fortran",
        np.asfortranarray(base),
        np.asfortranarray(rng.standard_normal((40, 30)).astype(dtype)),
    )
    yield (
        "c-param-f-grad",
        base.copy(),
        np.asfortranarray(rng.standard_normal((40, 30)).astype(dtype)),
    )
    yield "f-param-c-grad", np.asfortranarray(base), rng.standard_normal((40, 30)).astype(dtype)
    yield "strided-grad", base.copy(), rng.standard_normal((40, 60)).astype(dtype)[:, ::2]
    yield "reversed", base.copy()[::-1], rng.standard_normal((40, 30)).astype(dtype)[:, ::-1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_layout_matches_reference(rng, dtype):
    for name, data, grad in layouts(rng, dtype):
        p = Parameter(data)
        opt = Adamax([p], lr=0.01, weight_decay=0.1)
        ref = ReferenceAdamax([data.copy()], lr=0.01, weight_decay=0.1)
        for _ in range(3):
            p.grad = grad
            opt.step()
            ref.step([grad])
        assert_same_bits(p.data, ref.params[0]), name
        assert p.data is data, name  # updated in place, never replaced


def test_column_slice_is_updated_through_to_its_base(rng):
    base = rng.standard_normal((20, 10))
    before = base.copy()
    column = base[:, 3]
    p = Parameter(column)
    opt = Adamax([p], lr=0.1)
    g = rng.standard_normal(20)
    p.grad = g
    opt.step()
    expected, _, _ = adamax_reference_step(before[:, 3], g, np.zeros(20), np.zeros(20), 1, lr=0.1)
    assert_same_bits(base[:, 3], expected)
    untouched = np.delete(np.arange(10), 3)
    np.testing.assert_array_equal(base[:, untouched], before[:, untouched])


def test_state_has_the_parameters_dtype_and_layout(rng):
    f = Parameter(np.asfortranarray(rng.standard_normal((6, 4)).astype(np.float32)))
    opt = Adamax([f])
    f.grad = np.asfortranarray(rng.standard_normal((6, 4)).astype(np.float32))
    opt.step()
    for key in ("exp_avg", "exp_inf"):
        assert opt.state[f][key].dtype == np.float32
        assert opt.state[f][key].flags.f_contiguous


def test_zero_size_and_zero_dim_parameters(rng):
    empty = Parameter(np.zeros((0, 3), dtype=np.float32))
    scalar = Parameter(np.array(1.5))
    opt = Adamax([empty, scalar], lr=0.1)
    empty.grad = np.zeros((0, 3), dtype=np.float32)
    scalar.grad = np.array(2.0)
    opt.step()
    expected, _, _ = adamax_reference_step(
        np.array(1.5), np.array(2.0), np.array(0.0), np.array(0.0), 1, lr=0.1
    )
    assert_same_bits(scalar.data, expected)
    assert empty.data.shape == (0, 3)


def test_functional_form_matches_reference(rng):
    arrays = [rng.standard_normal(s) for s in [(3, 3), (100,)]]
    grads = [rng.standard_normal(a.shape) for a in arrays]
    ms = [rng.standard_normal(a.shape) for a in arrays]
    us = [np.abs(rng.standard_normal(a.shape)) for a in arrays]
    steps = [4, 9]
    expected = [
        adamax_reference_step(
            p, g, m, u, t, lr=0.1, beta1=0.7, beta2=0.95, eps=1e-6, weight_decay=0.01
        )
        for p, g, m, u, t in zip(arrays, grads, ms, us, steps)
    ]
    params = [a.copy() for a in arrays]
    functional.adamax(
        params, grads, ms, us, steps, lr=0.1, beta1=0.7, beta2=0.95, eps=1e-6, weight_decay=0.01
    )
    for got, want in zip(zip(params, ms, us), expected):
        for g, w in zip(got, want):
            assert_same_bits(g, w)


def test_every_simd_level_gives_the_same_bits(rng):
    # Each instruction-set build is compiled from one loop; check that on this CPU the
    # selected level agrees with numpy, including sizes around the vector widths.
    for n in [1, 7, 8, 15, 16, 17, 31, 33, 63, 64, 65, 129]:
        x = rng.standard_normal(n).astype(np.float32)
        g = rng.standard_normal(n).astype(np.float32)
        p = Parameter(x.copy())
        opt = Adamax([p], lr=0.01)
        p.grad = g
        opt.step()
        expected, _, _ = adamax_reference_step(x, g, np.zeros_like(x), np.zeros_like(x), 1, lr=0.01)
        assert_same_bits(p.data, expected)
