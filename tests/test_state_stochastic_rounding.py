"""bfloat16 state rounded stochastically (``stochastic_rounding=True``).

Every number is checked against tests/reference.py, which implements the hash and the rounding
in numpy from their description in docs/compressed_state.md.
"""

from __future__ import annotations

import numpy as np
import pytest

import adamax_rs
from adamax_rs import Adamax, Parameter
from adamax_rs.checkpoint import load_checkpoint, save_checkpoint
from adamax_rs.functional import adamax, new_state
from reference import (
    adamax_reference_step,
    bfloat16_reference_step,
    bfloat16_stochastic_reference_step,
    round_bfloat16_stochastically,
)

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
OPTIONS = [
    {},
    {"eps_inside_max": True},
    {"weight_decay": 0.1, "eps_inside_max": True},
    {"weight_decay": 0.05, "decoupled_weight_decay": True},
    {"maximize": True, "betas": (0.5, 0.99)},
]


def bits(array):
    return np.ascontiguousarray(array).view(np.uint8)


def grads(rng, shape, dtype):
    """Gradients over several orders of magnitude, both signs."""
    n = int(np.prod(shape))
    values = rng.standard_normal(n) * 10.0 ** rng.uniform(-6, 0, n)
    return values.reshape(shape).astype(dtype)


def reference_hyper(options):
    hyper = dict(options)
    beta1, beta2 = hyper.pop("betas", (0.9, 0.999))
    return {"lr": 0.01, "beta1": beta1, "beta2": beta2, **hyper}


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize(
    "dtype, master",
    [(np.float32, False), (np.float64, False), (np.float16, False), (BF16, False), (BF16, True)],
)
def test_steps_are_the_reference_bit_for_bit(rng, options, dtype, master):
    n = 3000
    p = Parameter(rng.standard_normal(n).astype(dtype))
    opt = Adamax(
        [p],
        lr=0.01,
        state_dtype="bfloat16",
        stochastic_rounding=True,
        master_weights=master,
        **options,
    )
    ref_p, m, u = p.data.copy(), np.zeros(n, BF16), np.zeros(n, BF16)
    ref_master = ref_p.astype(np.float32) if master else None
    for t in range(1, 8):
        g = grads(rng, n, dtype)
        p.grad = g
        opt.step()
        ref_p, m, u, ref_master = bfloat16_stochastic_reference_step(
            ref_p, g, m, u, t, master=ref_master, **reference_hyper(options)
        )
        assert opt.state[p]["exp_avg"].dtype == BF16
        np.testing.assert_array_equal(bits(p.data), bits(ref_p))
        np.testing.assert_array_equal(bits(opt.state[p]["exp_avg"]), bits(m))
        np.testing.assert_array_equal(bits(opt.state[p]["exp_inf"]), bits(u))
        if master:
            np.testing.assert_array_equal(opt.state[p]["master"], ref_master)


def test_special_values_and_large_step_numbers_are_the_reference_bit_for_bit(rng):
    """Infinite and NaN gradients (the NaN's bits enter the hash of its element) and step
    numbers past 2**32 (the salt's high half) against the reference."""
    n = 600
    x = rng.standard_normal(n).astype(np.float32)
    g = grads(rng, n, np.float32)
    g[[3, 50]] = np.inf
    g[[7, 400]] = -np.inf
    g[[11, 12]] = np.nan
    hyper = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    for t in (2**32 - 1, 2**32, 2**32 + 7, 2**53):
        state = new_state(x, state_dtype="bfloat16")
        p = x.copy()
        adamax(
            [p], [g], [state["exp_avg"]], [state["exp_inf"]], [t], stochastic_rounding=True, **hyper
        )
        zeros = np.zeros(n, BF16)
        with np.errstate(invalid="ignore"):  # inf / inf in the reference's last division
            ref_p, m, u, _ = bfloat16_stochastic_reference_step(x, g, zeros, zeros, t, **hyper)
        assert np.isnan(m[11]) and np.isinf(u[3])
        np.testing.assert_array_equal(bits(p), bits(ref_p))
        np.testing.assert_array_equal(bits(state["exp_avg"]), bits(m))
        np.testing.assert_array_equal(bits(state["exp_inf"]), bits(u))


def test_it_is_not_rounding_to_nearest(rng):
    """The reference above could agree with a kernel that ignores the option only if the two
    roundings agreed; they differ on a good share of elements."""
    n = 3000
    p = rng.standard_normal(n).astype(np.float32)
    g = grads(rng, n, np.float32)
    zeros = np.zeros(n, BF16)
    _, m_sr, u_sr, _ = bfloat16_stochastic_reference_step(p, g, zeros, zeros, 1, lr=0.01)
    _, m_rn, u_rn, _ = bfloat16_reference_step(p, g, zeros, zeros, 1, lr=0.01)
    # Each disagrees with nearest where the draw goes the other way: min(f, 1 - f) of the time
    # for a dropped fraction f, a quarter on average.
    for sr, rn in ((m_sr, m_rn), (u_sr, u_rn)):
        assert 0.15 < np.mean(sr.view(np.uint16) != rn.view(np.uint16)) < 0.35


def test_the_reference_rounding_is_unbiased():
    """The rounding rule itself: over every 16-bit noise value, the mean is the value."""
    x = np.full(65536, np.float32(1.0) + np.float32(2.0**-9) * np.float32(0.3), np.float32)
    noise = np.arange(65536, dtype=np.uint32)
    rounded = round_bfloat16_stochastically(x, noise).astype(np.float64)
    assert set(np.unique(rounded)) == {1.0, 1.0 + 2.0**-7}
    assert abs(rounded.mean() - float(x[0])) < 2.0**-24


def test_exp_inf_decays_on_average_where_nearest_stalls(rng):
    """The reason for the option: at beta2 = 0.999, ``beta2 * u`` rounds back to ``u`` to
    nearest, so ``exp_inf`` never decays once the gradients stop. Stochastically it decays as
    beta2**k on average."""
    n, quiet_steps = 20_000, 300
    start = rng.uniform(0.5, 1.0, n).astype(np.float32)
    decayed = {}
    for stochastic in (False, True):
        p = Parameter(np.zeros(n, np.float32))
        opt = Adamax([p], state_dtype="bfloat16", stochastic_rounding=stochastic)
        p.grad = start
        opt.step()
        first = opt.state[p]["exp_inf"].astype(np.float64)
        p.grad = np.zeros(n, np.float32)
        for _ in range(quiet_steps):
            opt.step()
        decayed[stochastic] = opt.state[p]["exp_inf"].astype(np.float64) / first
    np.testing.assert_array_equal(decayed[False], 1.0)
    expected = 0.999**quiet_steps
    assert abs(decayed[True].mean() / expected - 1) < 0.005


def test_the_same_bits_on_any_number_of_threads_and_in_any_layout(rng):
    """The random bits come from the values, not from positions or threads: a tensor split
    across threads, or walked in another memory order, rounds the same way."""
    shape = (1024, 1200)
    data = rng.standard_normal(shape).astype(np.float32)
    gs = [grads(rng, shape, np.float32) for _ in range(3)]
    results = []
    threads = adamax_rs.get_num_threads()
    try:
        for count, order in [(1, "C"), (2, "C"), (2, "F")]:
            adamax_rs.set_num_threads(count)
            p = Parameter(np.array(data, order=order))
            opt = Adamax([p], state_dtype="bfloat16", stochastic_rounding=True)
            for g in gs:
                p.grad = np.array(g, order=order)
                opt.step()
            results.append((p.data.copy(), np.array(opt.state[p]["exp_inf"], order="C")))
    finally:
        adamax_rs.set_num_threads(threads)
    for p, u in results[1:]:
        np.testing.assert_array_equal(p, results[0][0])
        np.testing.assert_array_equal(bits(u), bits(results[0][1]))


def test_a_non_contiguous_parameter_takes_the_strided_walk_and_rounds_alike(rng):
    base = rng.standard_normal((60, 80)).astype(np.float32)
    strided = Parameter(base[:, ::2])
    dense = Parameter(np.ascontiguousarray(base[:, ::2]))
    opts = [Adamax([q], state_dtype="bfloat16", stochastic_rounding=True) for q in (strided, dense)]
    for _ in range(4):
        g = grads(rng, (60, 40), np.float32)
        for q, opt in zip((strided, dense), opts):
            q.grad = g.copy()
            opt.step()
    np.testing.assert_array_equal(strided.data, dense.data)
    for key in ("exp_avg", "exp_inf"):
        np.testing.assert_array_equal(
            bits(opts[0].state[strided][key]), bits(opts[1].state[dense][key])
        )


@pytest.mark.parametrize("through", ["state_dict", "checkpoint"])
def test_a_resumed_run_continues_bit_for_bit(rng, tmp_path, through):
    """The step count is saved, and it is all the random stream needs."""
    shape = (70, 90)
    gs = [grads(rng, shape, np.float32) for _ in range(6)]
    p = Parameter(rng.standard_normal(shape).astype(np.float32))
    opt = Adamax([p], lr=0.01, state_dtype="bfloat16", stochastic_rounding=True)
    for g in gs[:3]:
        p.grad = g
        opt.step()
    twin = Parameter(p.data.copy())
    resumed_from = Adamax([twin], lr=0.01, state_dtype="bfloat16", stochastic_rounding=True)
    if through == "state_dict":
        resumed_from.load_state_dict(opt.state_dict())
    else:
        save_checkpoint(opt, tmp_path / "opt.safetensors")
        load_checkpoint(resumed_from, tmp_path / "opt.safetensors")
    for g in gs[3:]:
        p.grad, twin.grad = g, g.copy()
        opt.step()
        resumed_from.step()
    np.testing.assert_array_equal(p.data, twin.data)
    for key in ("exp_avg", "exp_inf"):
        np.testing.assert_array_equal(bits(opt.state[p][key]), bits(resumed_from.state[twin][key]))


def test_functional_form_rounds_bfloat16_state_and_leaves_float32_state_alone(rng):
    n = 2000
    x = rng.standard_normal(n).astype(np.float32)
    g = grads(rng, n, np.float32)
    bf, f32 = new_state(x, state_dtype="bfloat16"), new_state(x, state_dtype="float32")
    xs = [x.copy(), x.copy()]
    hyper = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    for t in (1, 2):
        adamax(
            xs,
            [g, g],
            [bf["exp_avg"], f32["exp_avg"]],
            [bf["exp_inf"], f32["exp_inf"]],
            [t, t],
            stochastic_rounding=True,
            **hyper,
        )
    ref_p, m, u = x.copy(), np.zeros(n, BF16), np.zeros(n, BF16)
    plain = [x.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    for t in (1, 2):
        ref_p, m, u, _ = bfloat16_stochastic_reference_step(ref_p, g, m, u, t, **hyper)
        plain = list(adamax_reference_step(*plain[:1], g, *plain[1:], t, **hyper))
    np.testing.assert_array_equal(bits(bf["exp_avg"]), bits(m))
    np.testing.assert_array_equal(bits(bf["exp_inf"]), bits(u))
    np.testing.assert_array_equal(xs[0], ref_p)
    np.testing.assert_array_equal(f32["exp_avg"], plain[1])
    np.testing.assert_array_equal(f32["exp_inf"], plain[2])
    np.testing.assert_array_equal(xs[1], plain[0])


@pytest.mark.parametrize("state_dtype", [None, "float32", "float64"])
def test_refused_without_bfloat16_or_8bit_state(state_dtype):
    p = Parameter(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="needs state_dtype='bfloat16' or '8bit'"):
        Adamax([p], state_dtype=state_dtype, stochastic_rounding=True)


@pytest.mark.parametrize("bad", [1, "yes", 0.0])
def test_a_non_bool_is_a_type_error_naming_the_option(bad):
    p = Parameter(np.zeros(10, np.float32))
    with pytest.raises(TypeError, match="stochastic_rounding must be a bool"):
        Adamax([p], state_dtype="bfloat16", stochastic_rounding=bad)
    x = np.zeros(10, np.float32)
    state = new_state(x, state_dtype="bfloat16")
    with pytest.raises(TypeError, match="stochastic_rounding must be a bool"):
        adamax(
            [x], [x.copy()], [state["exp_avg"]], [state["exp_inf"]], [1],
            lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, stochastic_rounding=bad,
        )  # fmt: skip
    np.testing.assert_array_equal(x, 0)
