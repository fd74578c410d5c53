"""Compressed optimizer state (state_dtype="bfloat16" and "8bit") in the numpy front end.

Every number is checked against the plain numpy codec and step of tests/reference.py.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adamax_rs import Adamax, Parameter, _core, _safetensors
from adamax_rs._file_arrays import read_into
from adamax_rs.checkpoint import load_checkpoint, save_checkpoint
from adamax_rs.functional import adamax, new_state
from conftest import assert_unchanged, snapshot
from reference import (
    adamax_reference_step,
    bfloat16_reference_step,
    bfloat16_stochastic_reference_step,
    blockwise_reference_step,
    decode,
    quantize,
)

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
N = 4096 + 300  # 8-bit state, and a partial last block
OPTIONS = [
    {},
    {"eps_inside_max": True},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "eps_inside_max": True},
    {"weight_decay": 0.05, "decoupled_weight_decay": True},
    {"maximize": True},
]


# Master weights are for 16-bit parameters only.
DTYPES_AND_MASTER = [
    (np.float32, False),
    (np.float16, False),
    ("bfloat16", False),
    (np.float16, True),
    ("bfloat16", True),
]


def heavy_tailed(rng, n, orders=12):
    """Values whose magnitudes span ``orders`` orders of magnitude, both signs."""
    return (rng.standard_normal(n) * 10.0 ** rng.uniform(-orders, 0, n)).astype(np.float32)


def reference_state(state_dtype, n):
    """Zero state for the references: bfloat16 arrays, or 8-bit codes and scales."""
    if state_dtype == "bfloat16":
        return {"exp_avg": np.zeros(n, BF16), "exp_inf": np.zeros(n, BF16)}
    return {
        "exp_avg": np.zeros(n, np.uint8),
        "exp_inf": np.zeros(n, np.uint8),
        "exp_avg_scale": np.zeros(-(-n // 256), np.float32),
        "exp_inf_scale": np.zeros(-(-n // 256), np.float32),
    }


def state_arrays(state):
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


# -- the codec ---------------------------------------------------------------------------------


def test_quantize_moments_is_the_reference_codec(rng):
    for n in (1, 255, 256, 257, 3000):
        m = rng.standard_normal(n) * 10.0 ** rng.uniform(-14, 2, n)
        u = np.abs(rng.standard_normal(n)) * 10.0 ** rng.uniform(-14, 2, n)
        m_codes, m_scales, u_codes, u_scales = _core.quantize_moments(m, u)
        expected_m = quantize(m, True, np.float64)
        expected_u = quantize(u, False, np.float64)
        np.testing.assert_array_equal(m_codes, expected_m[0])
        np.testing.assert_array_equal(m_scales, expected_m[1])
        np.testing.assert_array_equal(u_codes, expected_u[0])
        np.testing.assert_array_equal(u_scales, expected_u[1])
        m_back, u_back = _core.dequantize_moments(m_codes, m_scales, u_codes, u_scales)
        np.testing.assert_array_equal(m_back, decode(m_codes, m_scales, True))
        np.testing.assert_array_equal(u_back, decode(u_codes, u_scales, False))


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float64,
        st.integers(1, 600),
        elements=st.floats(0, 1e30, allow_nan=False, allow_infinity=False),
    )
)
def test_exp_inf_is_never_underestimated_and_never_zero(u):
    _, _, codes, scales = _core.quantize_moments(np.zeros_like(u), u)
    stored = decode(codes, scales, False, np.float64)
    assert np.all(stored >= u)
    assert np.all(stored[u > 0] > 0)


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float64,
        st.integers(1, 600),
        elements=st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False),
    )
)
def test_exp_avg_is_never_overestimated_and_keeps_its_sign(m):
    codes, scales, _, _ = _core.quantize_moments(m, np.zeros_like(m))
    stored = decode(codes, scales, True, np.float64)
    assert np.all(np.abs(stored) <= np.abs(m))
    assert np.all(stored * m >= 0)


# -- steps against the reference -------------------------------------------------------------


@pytest.mark.parametrize("stochastic", [False, True], ids=["truncated", "stochastic"])
@pytest.mark.parametrize(
    "options",
    # betas (0.9, 0.9): no Adamax bound (it is infinite), so stochastic rounding is never held
    [*OPTIONS, {"betas": (0.8, 0.99)}, {"betas": (0.9, 0.9)}],
    ids=lambda o: ",".join(o) or "defaults",
)
@pytest.mark.parametrize("param_dtype, master_weights", [*DTYPES_AND_MASTER, (np.float64, False)])
def test_8bit_steps_are_the_reference_bit_for_bit(
    rng, options, param_dtype, master_weights, stochastic
):
    dtype = BF16 if param_dtype == "bfloat16" else np.dtype(param_dtype)
    hyper = {"lr": 0.01, **options}
    if "betas" in hyper:
        hyper["beta1"], hyper["beta2"] = hyper.pop("betas")
    p = Parameter(rng.standard_normal(N).astype(dtype))
    opt = Adamax(
        [p],
        lr=0.01,
        state_dtype="8bit",
        master_weights=master_weights,
        stochastic_rounding=stochastic,
        **options,
    )
    ref_p = p.data.copy()
    ref_state = reference_state("8bit", N)
    ref_master = ref_p.astype(np.float32) if master_weights else None
    for t in range(1, 4):
        g = heavy_tailed(rng, N, orders=6).astype(dtype)
        p.grad = g
        opt.step()
        ref_p, ref_state, ref_master = blockwise_reference_step(
            ref_p, g, ref_state, t, master=ref_master, stochastic_rounding=stochastic, **hyper
        )
        bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
        np.testing.assert_array_equal(p.data.view(bits), ref_p.view(bits))
        for key, value in ref_state.items():
            np.testing.assert_array_equal(opt.state[p][key], value, err_msg=f"{key} step {t}")
        if master_weights:
            np.testing.assert_array_equal(opt.state[p]["master"], ref_master)


def extreme_blocks(rng, n):
    """Gradients whose blocks sit at the edges of the scales: the largest near float32's
    largest value (the power of two above would make the top codes infinite, so the tightest
    scale is used); a largest of 1e3 with elements down to float32's smallest subnormals (their
    quotients by the scale underflow); a largest of 1e-37 (a scale below 2^-100: the two-sided
    path); and ordinary heavy tails elsewhere."""
    g = heavy_tailed(rng, n, orders=6)
    sign = np.where(rng.uniform(size=256) < 0.5, -1.0, 1.0)
    g[:256] = sign * 3.3e38 * rng.uniform(0.01, 1.0, 256)
    g[256:512] = sign * np.float32(1e3) * 10.0 ** rng.uniform(-48, 0, 256)
    g[512:768] = sign * 1e-37 * rng.uniform(0.01, 1.0, 256)
    g[0], g[256], g[512] = 3.3e38, 1e3, 1e-37
    return g.astype(np.float32)


@pytest.mark.parametrize("stochastic", [False, True], ids=["truncated", "stochastic"])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.9)])
def test_8bit_steps_at_the_edges_of_the_scales_are_the_reference(rng, stochastic, betas):
    hyper = {"lr": 0.01, "beta1": betas[0], "beta2": betas[1]}
    p = Parameter(rng.standard_normal(N).astype(np.float32))
    opt = Adamax([p], lr=0.01, betas=betas, state_dtype="8bit", stochastic_rounding=stochastic)
    ref_p, ref_state = p.data.copy(), reference_state("8bit", N)
    for t in range(1, 4):
        g = extreme_blocks(rng, N)
        p.grad = g
        opt.step()
        ref_p, ref_state, _ = blockwise_reference_step(
            ref_p, g, ref_state, t, stochastic_rounding=stochastic, **hyper
        )
        np.testing.assert_array_equal(p.data.view(np.uint32), ref_p.view(np.uint32))
        for key, value in ref_state.items():
            np.testing.assert_array_equal(opt.state[p][key], value, err_msg=f"{key} step {t}")
        # No code decodes to infinity.
        for key, signed in (("exp_avg", True), ("exp_inf", False)):
            scales = opt.state[p][f"{key}_scale"]
            assert np.isfinite(decode(opt.state[p][key], scales, signed)).all(), key
    assert np.isfinite(p.data).all()


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.6)])
def test_stochastic_rounding_keeps_adamaxs_bound(rng, betas):
    """Same-sign gradients that shrink by beta2 each step drive |exp_avg| / exp_inf to
    Adamax's bound K = (1 - beta1) / (1 - beta1 / beta2). Rounded stochastically, a stored
    |exp_avg| rounded up or an exp_inf rounded down could pass it and the excess compound; a
    code that would is never taken, so the stored values keep the bound, and every step is the
    reference's, bit for bit."""
    beta1, beta2 = betas
    n = 4096
    p = Parameter(rng.standard_normal(n).astype(np.float32))
    opt = Adamax([p], lr=0.01, betas=betas, state_dtype="8bit", stochastic_rounding=True)
    ref_p = p.data.copy()
    ref_state = reference_state("8bit", n)
    g0 = (np.abs(rng.standard_normal(n)) + 0.5).astype(np.float32)
    bound = (1 - beta1) / (1 - beta1 / beta2)
    closest = 0.0
    for t in range(1, 41):
        g = (g0 * np.float32(beta2 ** (t - 1))).astype(np.float32)
        p.grad = g
        opt.step()
        ref_p, ref_state, _ = blockwise_reference_step(
            ref_p, g, ref_state, t, stochastic_rounding=True, lr=0.01, beta1=beta1, beta2=beta2
        )
        np.testing.assert_array_equal(p.data.view(np.uint32), ref_p.view(np.uint32))
        for key, value in ref_state.items():
            np.testing.assert_array_equal(opt.state[p][key], value, err_msg=f"{key} step {t}")
        m = decode(opt.state[p]["exp_avg"], opt.state[p]["exp_avg_scale"], True)
        u = decode(opt.state[p]["exp_inf"], opt.state[p]["exp_inf_scale"], False)
        ratio = np.abs(m) / u
        assert (ratio <= bound * (1 + 1e-6)).all(), f"step {t}: {ratio.max()} > {bound}"
        closest = max(closest, float(ratio.max()))
    assert closest > 0.9 * bound  # the bound was approached, so the limit was tested


# -- the default rounding ------------------------------------------------------------------


def reference_step(state_dtype, param, grad, state, t, stochastic, **hyper):
    """One step of the independent reference for ``state_dtype``, rounded stochastically or
    not; returns the new parameter and state."""
    if state_dtype == "8bit":
        param, state, _ = blockwise_reference_step(
            param, grad, state, t, stochastic_rounding=stochastic, **hyper
        )
        return param, state
    step = bfloat16_stochastic_reference_step if stochastic else bfloat16_reference_step
    param, m, u, _ = step(param, grad, state["exp_avg"], state["exp_inf"], t, **hyper)
    return param, {"exp_avg": m, "exp_inf": u}


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
@pytest.mark.parametrize("stochastic_rounding", [None, False], ids=["default", "False"])
def test_compressed_state_rounds_stochastically_by_default(rng, state_dtype, stochastic_rounding):
    """``stochastic_rounding=None``, the default, rounds bfloat16 and 8-bit state
    stochastically: the steps are the stochastic reference's, bit for bit, in ``Adamax`` and in
    ``functional.adamax``; ``False`` gives the reference's nearest (bfloat16) or directed
    (8-bit) rounding. The two differ (checked), so each comparison can fail."""
    stochastic = stochastic_rounding is None
    n = N
    init = rng.standard_normal(n).astype(np.float32)
    p = Parameter(init.copy())
    options = {} if stochastic_rounding is None else {"stochastic_rounding": False}
    opt = Adamax([p], lr=0.01, state_dtype=state_dtype, **options)
    assert opt.stochastic_rounding is stochastic
    x, arrays = init.copy(), new_state(init, state_dtype=state_dtype)
    ref_p, ref_state = init.copy(), reference_state(state_dtype, n)
    other_p, other_state = init.copy(), reference_state(state_dtype, n)
    scales = (
        {"exp_avg_scales": [arrays["exp_avg_scale"]], "exp_inf_scales": [arrays["exp_inf_scale"]]}
        if state_dtype == "8bit"
        else {}
    )
    for t in range(1, 4):
        g = heavy_tailed(rng, n, orders=6)
        p.grad = g
        opt.step()
        adamax(
            [x], [g], [arrays["exp_avg"]], [arrays["exp_inf"]], [t],
            lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, **scales, **options,
        )  # fmt: skip
        ref_p, ref_state = reference_step(state_dtype, ref_p, g, ref_state, t, stochastic, lr=0.01)
        other_p, other_state = reference_step(
            state_dtype, other_p, g, other_state, t, not stochastic, lr=0.01
        )
        np.testing.assert_array_equal(p.data, ref_p)
        np.testing.assert_array_equal(x, ref_p)
        for key, value in ref_state.items():
            np.testing.assert_array_equal(opt.state[p][key].view(np.uint8), value.view(np.uint8))
            np.testing.assert_array_equal(arrays[key].view(np.uint8), value.view(np.uint8))
    assert not np.array_equal(ref_state["exp_inf"], other_state["exp_inf"])


@pytest.mark.parametrize("state_dtype", [None, "float32", "float64"])
def test_float_state_is_stored_as_computed_by_default(state_dtype):
    opt = Adamax([Parameter(np.zeros(10, np.float32))], state_dtype=state_dtype)
    assert opt.stochastic_rounding is False


@pytest.mark.parametrize("beta2", [0.999, 0.99])
def test_exp_inf_decays_by_beta2_when_gradients_stop(rng, beta2):
    """Once the gradients are zero, every exp_inf only decays: each keeps its code while its
    block's scale decays by beta2 (to float32 and 8 ulps), so no element stalls at its old
    value, as rounding up on a fixed scale would leave it."""
    n = 4096
    p = Parameter(rng.standard_normal(n).astype(np.float32))
    opt = Adamax([p], lr=0.01, betas=(0.9, beta2), state_dtype="8bit", stochastic_rounding=False)
    p.grad = heavy_tailed(rng, n, orders=6)
    opt.step()
    codes = opt.state[p]["exp_inf"].copy()
    first = decode(codes, opt.state[p]["exp_inf_scale"], False)
    p.grad = np.zeros(n, np.float32)
    for k in range(1, 31):
        opt.step()
        np.testing.assert_array_equal(opt.state[p]["exp_inf"], codes, err_msg=f"step {k + 1}")
        stored = decode(codes, opt.state[p]["exp_inf_scale"], False)
        ratio = stored / first
        assert (ratio >= np.float32(beta2) ** k * (1 - 1e-6)).all(), f"step {k + 1}"
        assert (ratio <= beta2**k * (1 + 2e-6) ** k).all(), f"step {k + 1}"


@pytest.mark.parametrize("stochastic", [False, True], ids=["rounded-up", "stochastic"])
def test_exp_inf_decays_in_a_block_whose_largest_is_refreshed(rng, stochastic):
    """One element of every block keeps seeing the same gradient, so its block's scale cannot
    decay; the others see none, and their exp_inf should decay by beta2 a step. Rounded up,
    each goes back to its code every step and never decays (the cause of 8-bit state's loss on
    the spirals). Rounded stochastically, it is right on average: the mean stored value follows
    float32's beta2**k.

    The noise is drawn from an element's values, so elements on the same code of the same
    scale draw the same, and a block's mean follows a few dozen walks, not 255: with one range
    for all blocks the mean's error over 100 steps was about 2%. Here 64 blocks each have their
    own range (a power of two apart), so the mean is over 64 times as many walks."""
    n, beta2, steps = 64 * 256, 0.99, 100
    p = Parameter(rng.standard_normal(n).astype(np.float32))
    opt = Adamax(
        [p], lr=0.01, betas=(0.9, beta2), state_dtype="8bit", stochastic_rounding=stochastic
    )
    block_range = np.repeat(2.0 ** (np.arange(n // 256) - 32), 256)
    start = (rng.uniform(0.5, 4.0, n) * block_range).astype(np.float32)
    start[::256] = 4.0 * block_range[::256]  # each block's largest
    p.grad = start
    opt.step()
    first = decode(opt.state[p]["exp_inf"], opt.state[p]["exp_inf_scale"], False)
    refreshed = np.zeros(n, np.float32)
    refreshed[::256] = start[::256]
    p.grad = refreshed
    for _ in range(steps):
        opt.step()
    stored = decode(opt.state[p]["exp_inf"], opt.state[p]["exp_inf_scale"], False)
    others = np.ones(n, bool)
    others[::256] = False
    ratio = stored[others] / first[others]
    expected = beta2**steps  # 0.366
    if stochastic:
        assert abs(ratio.mean() / expected - 1) < 0.02, ratio.mean()
    else:
        np.testing.assert_array_equal(ratio, 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_infinite_gradient_spoils_only_its_own_block(rng, bad):
    """A NaN or infinite moment makes its block's scale NaN or infinite: from the next step the
    whole block decodes to NaN (as the parameter that had it already is), and the other blocks
    go on exactly as the reference, which is run on them alone."""
    n = 17 * 256  # the first block, and 4096 elements after it (8-bit state on their own too)
    p = Parameter(rng.standard_normal(n).astype(np.float32))
    opt = Adamax([p], lr=0.01, state_dtype="8bit")
    ref_p = p.data[256:].copy()
    ref_state = reference_state("8bit", n - 256)
    for t in range(1, 4):
        g = heavy_tailed(rng, n, orders=6)
        if t == 1:
            g[7] = bad
        p.grad = g
        opt.step()
        # The default rounds stochastically; the bits hash each element's values, not its place.
        ref_p, ref_state, _ = blockwise_reference_step(
            ref_p, g[256:], ref_state, t, stochastic_rounding=True, lr=0.01
        )
        spoiled = np.arange(256) if t > 1 else np.array([7])
        assert np.isnan(p.data[spoiled]).all(), f"step {t}"
        assert np.isfinite(np.delete(p.data[:256], spoiled)).all(), f"step {t}"
        for scale in ("exp_avg_scale", "exp_inf_scale"):
            assert not np.isfinite(opt.state[p][scale][0]), f"{scale} step {t}"
        np.testing.assert_array_equal(p.data[256:].view(np.uint32), ref_p.view(np.uint32))
        for key, value in ref_state.items():
            ours = opt.state[p][key]
            np.testing.assert_array_equal(ours[256:] if ours.size == n else ours[1:], value)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("param_dtype, master_weights", DTYPES_AND_MASTER)
def test_bfloat16_steps_are_the_reference_bit_for_bit(rng, options, param_dtype, master_weights):
    dtype = BF16 if param_dtype == "bfloat16" else np.dtype(param_dtype)
    hyper = {"lr": 0.01, **options}
    n = 1000
    p = Parameter(rng.standard_normal(n).astype(dtype))
    opt = Adamax(
        [p],
        lr=0.01,
        state_dtype="bfloat16",
        master_weights=master_weights,
        stochastic_rounding=False,
        **options,
    )
    ref_p, m, u = p.data.copy(), np.zeros(n, BF16), np.zeros(n, BF16)
    ref_master = ref_p.astype(np.float32) if master_weights else None
    for t in range(1, 4):
        g = heavy_tailed(rng, n, orders=6).astype(dtype)
        p.grad = g
        opt.step()
        ref_p, m, u, ref_master = bfloat16_reference_step(
            ref_p, g, m, u, t, master=ref_master, **hyper
        )
        assert opt.state[p]["exp_avg"].dtype == BF16
        np.testing.assert_array_equal(p.data.astype(np.float32), ref_p.astype(np.float32))
        np.testing.assert_array_equal(opt.state[p]["exp_avg"].view(np.uint16), m.view(np.uint16))
        np.testing.assert_array_equal(opt.state[p]["exp_inf"].view(np.uint16), u.view(np.uint16))
        if master_weights:
            np.testing.assert_array_equal(opt.state[p]["master"], ref_master)


@pytest.mark.parametrize("stochastic", [False, True], ids=["truncated", "stochastic"])
def test_functional_steps_equal_the_optimizer(rng, stochastic):
    data = rng.standard_normal((80, 60)).astype(np.float32)
    p = Parameter(data.copy())
    opt = Adamax([p], lr=0.01, state_dtype="8bit", stochastic_rounding=stochastic)
    x = data.copy()
    state = new_state(x, state_dtype="8bit")
    assert set(state) == {"exp_avg", "exp_inf", "exp_avg_scale", "exp_inf_scale"}
    for t in range(1, 4):
        g = heavy_tailed(rng, x.size).reshape(x.shape)
        p.grad = g
        opt.step()
        adamax(
            [x],
            [g],
            [state["exp_avg"]],
            [state["exp_inf"]],
            [t],
            lr=0.01,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            exp_avg_scales=[state["exp_avg_scale"]],
            exp_inf_scales=[state["exp_inf_scale"]],
            stochastic_rounding=stochastic,
        )
    np.testing.assert_array_equal(x, p.data)
    for key, value in state.items():
        np.testing.assert_array_equal(value, opt.state[p][key])


def test_stochastic_rounding_leaves_the_float_state_of_an_8bit_optimizer_alone(rng):
    # Under 4096 elements, complex or strided: float32 (complex64) state, stored as computed
    # whether or not the optimizer rounds its 8-bit state stochastically.
    wide = rng.standard_normal((100, 90)).astype(np.float32)
    arrays = [
        rng.standard_normal(300).astype(np.float32),
        (rng.standard_normal(500) + 1j * rng.standard_normal(500)).astype(np.complex64),
        wide[:, ::2],
    ]
    grads = [
        [np.asarray(heavy_tailed(rng, a.size), a.dtype).reshape(a.shape) for a in arrays]
        for _ in range(3)
    ]
    runs = []
    for stochastic in (False, True):
        params = [Parameter(a.copy()) for a in arrays[:2]] + [Parameter(wide.copy()[:, ::2])]
        opt = Adamax(params, lr=0.01, state_dtype="8bit", stochastic_rounding=stochastic)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
        runs.append((params, opt))
    (plain, plain_opt), (rounded, rounded_opt) = runs
    for a, b in zip(plain, rounded):
        assert plain_opt.state[a]["exp_avg"].dtype != np.uint8
        np.testing.assert_array_equal(a.data, b.data)
        for key in ("exp_avg", "exp_inf"):
            np.testing.assert_array_equal(plain_opt.state[a][key], rounded_opt.state[b][key])


# -- safety on heavy tails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "state_dtype, stochastic",
    [("8bit", False), ("8bit", True), ("bfloat16", False), ("bfloat16", True)],
    ids=["8bit-directed", "8bit", "bfloat16-nearest", "bfloat16"],
)
@pytest.mark.parametrize("options", [{}, {"eps_inside_max": True}], ids=["paper", "torch"])
def test_no_update_exceeds_the_float32_runs_largest_by_half(rng, state_dtype, stochastic, options):
    """Gradients spanning 12 orders of magnitude inside every block, changing scale from step
    to step: the largest update (relative to lr) of the compressed run is at most 1.5x the
    float32 run's. A tiny exp_inf rounded to zero would divide by eps and blow this up."""
    n, lr, steps = 8192, 0.01, 30
    init = rng.standard_normal(n).astype(np.float32)
    grads = [heavy_tailed(rng, n) * np.float32(10.0 ** rng.uniform(-3, 3)) for _ in range(steps)]
    # Some elements see a large gradient once, then tiny ones: their exp_inf decays.
    grads[0][::7] *= 1e6

    def largest_update(state, stochastic_rounding=False):
        p = Parameter(init.copy())
        opt = Adamax(
            [p], lr=lr, state_dtype=state, stochastic_rounding=stochastic_rounding, **options
        )
        largest = 0.0
        for g in grads:
            before = p.data.copy()
            p.grad = g
            opt.step()
            largest = max(largest, float(np.abs(p.data - before).max()) / lr)
        return largest

    reference = largest_update(None)
    assert reference > 0
    assert largest_update(state_dtype, stochastic) <= 1.5 * reference


# -- memory ------------------------------------------------------------------------------------


def test_state_memory(rng):
    params = {name: Parameter(np.zeros((1024, 1024), np.float32)) for name in ("f32", "bf", "q")}
    dtypes = {"f32": None, "bf": "bfloat16", "q": "8bit"}
    bytes_ = {}
    for name, p in params.items():
        opt = Adamax([p], state_dtype=dtypes[name])
        p.grad = np.ones_like(p.data)
        opt.step()
        bytes_[name] = sum(a.nbytes for a in state_arrays(opt.state[p]).values())
    assert bytes_["f32"] == 8 * 1024 * 1024
    assert bytes_["bf"] / bytes_["f32"] == 0.5
    assert bytes_["q"] / bytes_["f32"] <= 0.27


# -- which parameters get compressed state ----------------------------------------------------


def test_small_complex_and_strided_parameters_keep_float_state():
    kept = {
        "small": Parameter(np.ones(4095, np.float32)),
        "threshold": Parameter(np.ones(4096, np.float32)),
        "complex": Parameter(np.ones(5000, np.complex64)),
        "strided": Parameter(np.ones(20000, np.float32)[::2]),
        "fortran": Parameter(np.asfortranarray(np.ones((70, 90), np.float32))),
    }
    opt = Adamax(list(kept.values()), state_dtype="8bit")
    for p in kept.values():
        p.grad = np.ones_like(p.data)
    opt.step()
    dtype = {name: opt.state[p]["exp_avg"].dtype for name, p in kept.items()}
    assert dtype == {
        "small": np.float32,
        "threshold": np.uint8,
        "complex": np.complex64,
        "strided": np.float32,
        "fortran": np.uint8,
    }
    assert "exp_avg_scale" not in opt.state[kept["small"]]
    assert opt.state[kept["fortran"]]["exp_avg"].flags.f_contiguous
    assert opt.state[kept["threshold"]]["exp_inf_scale"].shape == (16,)


def test_fortran_order_codes_follow_memory_order(rng):
    data = np.asfortranarray(rng.standard_normal((70, 90)).astype(np.float32))
    g = np.asfortranarray(heavy_tailed(rng, data.size).reshape(data.shape))
    p = Parameter(data.copy(order="K"))
    opt = Adamax([p], lr=0.01, state_dtype="8bit")
    p.grad = g
    opt.step()
    # In memory order (the transpose is C-ordered), the step is the reference's.
    ref_state = reference_state("8bit", data.size)
    ref_p, ref_state, _ = blockwise_reference_step(
        data.T.reshape(-1), g.T.reshape(-1), ref_state, 1, stochastic_rounding=True, lr=0.01
    )
    np.testing.assert_array_equal(p.data.T.reshape(-1), ref_p)
    np.testing.assert_array_equal(opt.state[p]["exp_avg"].T.reshape(-1), ref_state["exp_avg"])
    np.testing.assert_array_equal(opt.state[p]["exp_inf_scale"], ref_state["exp_inf_scale"])


# -- state dicts, checkpoints, conversions ----------------------------------------------------


def trained(rng, state_dtype, steps=3, dtype=np.float32, master_weights=False, shape=(70, 90)):
    ps = [
        Parameter(rng.standard_normal(shape).astype(dtype)),
        Parameter(rng.standard_normal(100).astype(dtype)),
    ]
    opt = Adamax(ps, lr=0.01, state_dtype=state_dtype, master_weights=master_weights)
    for _ in range(steps):
        for p in ps:
            p.grad = heavy_tailed(rng, p.data.size, orders=6).reshape(p.data.shape).astype(dtype)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("state_dtype", ["8bit", "bfloat16"])
@pytest.mark.parametrize("through", ["state_dict", "checkpoint"])
@pytest.mark.parametrize("dtype, master", [(np.float32, False), (np.float16, True)])
def test_round_trip_continues_bit_for_bit(rng, tmp_path, state_dtype, through, dtype, master):
    ps, opt = trained(rng, state_dtype, dtype=dtype, master_weights=master)
    twins = [Parameter(p.data.copy()) for p in ps]
    resumed = Adamax(twins, lr=0.01, state_dtype=state_dtype, master_weights=master)
    if through == "state_dict":
        resumed.load_state_dict(opt.state_dict())
    else:
        save_checkpoint(opt, tmp_path / "opt.safetensors")
        load_checkpoint(resumed, tmp_path / "opt.safetensors")
    kinds = {k: v.dtype for k, v in state_arrays(resumed.state[twins[0]]).items()}
    assert kinds == {k: v.dtype for k, v in state_arrays(opt.state[ps[0]]).items()}
    for _ in range(3):
        for p, twin in zip(ps, twins):
            g = heavy_tailed(rng, p.data.size, orders=6).reshape(p.data.shape).astype(dtype)
            p.grad, twin.grad = g, g.copy()
        opt.step()
        resumed.step()
    for p, twin in zip(ps, twins):
        np.testing.assert_array_equal(p.data, twin.data)
        for key, value in state_arrays(opt.state[p]).items():
            np.testing.assert_array_equal(
                resumed.state[twin][key].view(np.uint8), value.view(np.uint8)
            )


def test_float32_state_loads_into_8bit_quantized(rng, tmp_path):
    ps, opt = trained(rng, None)
    for through in ("state_dict", "checkpoint"):
        twins = [Parameter(p.data.copy()) for p in ps]
        q = Adamax(twins, lr=0.01, state_dtype="8bit")
        if through == "state_dict":
            q.load_state_dict(opt.state_dict())
        else:
            save_checkpoint(opt, tmp_path / "f32.safetensors")
            load_checkpoint(q, tmp_path / "f32.safetensors")
        big = opt.state[ps[0]]
        m_codes, m_scales = quantize(big["exp_avg"].astype(np.float64), True, np.float64)
        u_codes, u_scales = quantize(big["exp_inf"].astype(np.float64), False, np.float64)
        np.testing.assert_array_equal(q.state[twins[0]]["exp_avg"].reshape(-1), m_codes)
        np.testing.assert_array_equal(q.state[twins[0]]["exp_avg_scale"], m_scales)
        np.testing.assert_array_equal(q.state[twins[0]]["exp_inf"].reshape(-1), u_codes)
        np.testing.assert_array_equal(q.state[twins[0]]["exp_inf_scale"], u_scales)
        # The small parameter keeps float32 state, loaded as it is.
        np.testing.assert_array_equal(q.state[twins[1]]["exp_avg"], opt.state[ps[1]]["exp_avg"])


@pytest.mark.parametrize("target", [None, np.float64, "bfloat16"])
def test_8bit_state_loads_into_float_state_as_its_values(rng, tmp_path, target):
    ps, opt = trained(rng, "8bit")
    for through in ("state_dict", "checkpoint"):
        twins = [Parameter(p.data.copy()) for p in ps]
        wide = Adamax(twins, lr=0.01, state_dtype=target)
        if through == "state_dict":
            wide.load_state_dict(opt.state_dict())
        else:
            save_checkpoint(opt, tmp_path / "q.safetensors")
            load_checkpoint(wide, tmp_path / "q.safetensors")
        saved = opt.state[ps[0]]
        m = decode(saved["exp_avg"].reshape(-1), saved["exp_avg_scale"], True)
        u = decode(saved["exp_inf"].reshape(-1), saved["exp_inf_scale"], False)
        dtype = {None: np.dtype(np.float32), np.float64: np.dtype(np.float64)}.get(target, BF16)
        state = wide.state[twins[0]]
        assert set(state) == {"step", "exp_avg", "exp_inf"}
        np.testing.assert_array_equal(
            state["exp_avg"].reshape(-1).astype(np.float64), m.astype(dtype).astype(np.float64)
        )
        np.testing.assert_array_equal(
            state["exp_inf"].reshape(-1).astype(np.float64), u.astype(dtype).astype(np.float64)
        )


def exact_bfloat16(x):
    """``x`` rounded to bfloat16, nearest, ties to even, by exact rational arithmetic."""
    if x == 0:
        return 0.0
    exponent = int(np.floor(np.log2(abs(x))))
    for e in (exponent - 1, exponent, exponent + 1):
        if 2.0**e <= abs(x) < 2.0 ** (e + 1):
            exponent = e
    ulp = Fraction(2) ** (max(exponent, -126) - 7)
    q = Fraction(x) / ulp
    low = q.numerator // q.denominator
    rest = q - low
    up = rest > Fraction(1, 2) or (rest == Fraction(1, 2) and low % 2 == 1)
    return float((low + up) * ulp)


@pytest.mark.parametrize(
    "wide", ["<f8", ">f8", np.longdouble], ids=["f8", "big-endian f8", "longdouble"]
)
def test_float64_state_loads_into_bfloat16_rounded_once(rng, wide):
    # 1 + 2**-8 + 2**-30: float32 first would make it a tie and round it down to 1.
    values = np.concatenate(
        [
            [1 + 2.0**-8 + 2.0**-30, -(1 + 2.0**-8 + 2.0**-30), 1 + 2.0**-8, 3e-39, 1e-300],
            rng.standard_normal(995) * 10.0 ** rng.uniform(-30, 30, 995),
        ]
    )
    p64 = Parameter(np.ones(1000))
    opt64 = Adamax([p64])
    p64.grad = np.ones(1000)
    opt64.step()
    saved = opt64.state_dict()
    # Big-endian float64 is what a file may hold; each wide dtype must round once too.
    saved["state"][0]["exp_avg"] = values.astype(wide)
    saved["state"][0]["exp_inf"] = np.abs(values).astype(wide)
    p = Parameter(np.ones(1000, np.float32))
    bf = Adamax([p], state_dtype="bfloat16")
    bf.load_state_dict(saved)
    got = bf.state[p]["exp_avg"].astype(np.float64)
    assert got[0] == 1 + 2.0**-7 and got[1] == -(1 + 2.0**-7) and got[2] == 1.0
    np.testing.assert_array_equal(got, [exact_bfloat16(v) for v in values])


# -- bad state is refused, and nothing changes -------------------------------------------------


def corrupt(state, key, value):
    state = dict(state)
    state[key] = value
    return state


BAD_STATES = {
    "scale of the wrong shape": (
        lambda s: corrupt(s, "exp_avg_scale", np.zeros(5, np.float32)),
        ValueError,
        r"'exp_avg_scale' has shape \(5,\).*\(25,\)",
    ),
    "scale of the wrong dtype": (
        lambda s: corrupt(s, "exp_inf_scale", s["exp_inf_scale"].astype(np.float64)),
        TypeError,
        "'exp_inf_scale' has dtype float64",
    ),
    "negative scales": (
        lambda s: corrupt(s, "exp_inf_scale", -s["exp_inf_scale"]),
        ValueError,
        "negative",
    ),
    "a scale missing": (
        lambda s: {k: v for k, v in s.items() if k != "exp_inf_scale"},
        ValueError,
        "missing 'exp_inf_scale'",
    ),
    "codes of another dtype": (
        lambda s: corrupt(s, "exp_inf", s["exp_inf"].astype(np.float16)),
        TypeError,
        "'exp_inf' has dtype float16",
    ),
    "codes of the wrong shape": (
        lambda s: corrupt(s, "exp_avg", s["exp_avg"].reshape(-1)),
        ValueError,
        "'exp_avg' has shape",
    ),
    "float state with scales": (
        lambda s: corrupt(s, "exp_avg", s["exp_avg"].astype(np.float32)),
        ValueError,
        "unexpected keys",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_bad_8bit_state_is_refused_and_changes_nothing(rng, tmp_path, case):
    ps, opt = trained(rng, "8bit")
    make_bad, error, message = BAD_STATES[case]
    saved = opt.state_dict()
    saved["state"][0] = make_bad(saved["state"][0])
    before = snapshot(opt, ps)
    with pytest.raises(error, match=message):
        opt.load_state_dict(saved)
    assert_unchanged(before, opt, ps)


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_hostile_checkpoint_with_bad_8bit_state(rng, tmp_path, case):
    ps, opt = trained(rng, "8bit")
    path = tmp_path / "good.safetensors"
    save_checkpoint(opt, path)
    with open(path, "rb") as file:
        header = _safetensors.read_header(file, path.stat().st_size, 1 << 20)
        tensors = {}
        for name, declared in header.tensors.items():
            out = np.empty(declared.shape, declared.dtype)
            read_into(file, declared, out)
            tensors[name] = out
    make_bad, _, message = BAD_STATES[case]
    state = {k.split("/")[-1]: v for k, v in tensors.items() if k.startswith("state/0/")}
    tensors = {k: v for k, v in tensors.items() if not k.startswith("state/0/")}
    tensors.update({f"state/0/{k}": np.ascontiguousarray(v) for k, v in make_bad(state).items()})
    metadata = {k: v for k, v in header.metadata.items() if k != _safetensors.CHECKSUMS}
    # A well-formed file (the writer seals it with checksums) whose contents are wrong.
    bad_path = tmp_path / "bad.safetensors"
    with open(bad_path, "wb") as file:
        _safetensors.write(file, tensors, metadata)
    before = snapshot(opt, ps)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(opt, bad_path)
    assert_unchanged(before, opt, ps)


@pytest.mark.parametrize("bad", ["int8", "9bit", "uint8", np.int8])
def test_bad_state_dtype_names_it(bad):
    with pytest.raises(ValueError, match="state_dtype"):
        Adamax([Parameter(np.ones(2, np.float32))], state_dtype=bad)
    with pytest.raises(ValueError, match="state_dtype"):
        new_state(np.ones(2, np.float32), state_dtype=bad)


def test_reference_step_is_the_plain_formula_on_decoded_state(rng):
    # A guard on the reference itself: with float32-exact codes, its step is the float32 step.
    n = 512
    g = np.full(n, 0.5, np.float32)
    p = np.ones(n, np.float32)
    state = reference_state("8bit", n)
    new_p, new_state_, _ = blockwise_reference_step(p, g, state, 1, lr=0.01)
    plain_p, m, u = adamax_reference_step(
        p, g, np.zeros(n, np.float32), np.zeros(n, np.float32), 1, lr=0.01
    )
    np.testing.assert_array_equal(new_p, plain_p)
    np.testing.assert_array_equal(
        decode(new_state_["exp_inf"], new_state_["exp_inf_scale"], False), u
    )


# -- 8-bit state and memory layouts ------------------------------------------------------------


def trained_8bit(rng, order):
    """An 8-bit optimizer stepped twice over a (300, 40) float32 parameter in ``order``."""
    p = Parameter(np.array(rng.standard_normal((300, 40)), np.float32, order=order))
    opt = Adamax([p], state_dtype="8bit")
    for _ in range(2):
        p.grad = np.array(rng.standard_normal((300, 40)), np.float32, order=order)
        opt.step()
    return p, opt


@pytest.mark.parametrize("saved_order, loaded_order", [("C", "F"), ("F", "C")])
@pytest.mark.parametrize("state_dtype", ["8bit", "float32"])
def test_8bit_state_loaded_into_another_memory_layout_is_refused(
    rng, saved_order, loaded_order, state_dtype
):
    # A block holds 256 elements that follow each other in the memory of the parameter the
    # state was made for: copied by position into another layout, the codes kept their
    # places but changed blocks, and exp_inf came back off by up to x5e5.
    _, opt = trained_8bit(rng, saved_order)
    q = Parameter(np.zeros((300, 40), np.float32, order=loaded_order))
    target = Adamax([q], state_dtype=state_dtype)
    before = snapshot(target, [q])
    with pytest.raises(ValueError, match="another memory layout"):
        target.load_state_dict(opt.state_dict())
    assert_unchanged(before, target, [q])


@pytest.mark.parametrize("order", ["C", "F"])
def test_8bit_state_checkpoints_load_only_into_the_same_layout(tmp_path, rng, order):
    p, opt = trained_8bit(rng, order)
    path = tmp_path / "c.safetensors"
    save_checkpoint(opt, path)
    saved = opt.state_dict()["state"][0]
    for loaded_order in ("C", "F"):
        q = Parameter(np.zeros((300, 40), np.float32, order=loaded_order))
        target = Adamax([q], state_dtype="8bit")
        if loaded_order == order:
            load_checkpoint(target, path)
            loaded = target.state_dict()["state"][0]
            for key in saved:
                np.testing.assert_array_equal(loaded[key], saved[key])
            continue
        before = snapshot(target, [q])
        with pytest.raises(ValueError, match="laid out otherwise"):
            load_checkpoint(target, path)
        assert_unchanged(before, target, [q])


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_8bit_checkpoints_convert_into_float_state_of_the_same_layout(
    tmp_path, rng, order, state_dtype
):
    # The file holds codes by element; converting them must read them in the parameter's
    # layout, as a state dict does (a C-order buffer made them look re-laid out).
    _, opt = trained_8bit(rng, order)
    path = tmp_path / "c.safetensors"
    save_checkpoint(opt, path)
    loaded, converted = (
        Adamax([Parameter(np.zeros((300, 40), np.float32, order=order))], state_dtype=state_dtype)
        for _ in range(2)
    )
    load_checkpoint(loaded, path)
    converted.load_state_dict(opt.state_dict())
    got, expected = (o.state_dict()["state"][0] for o in (loaded, converted))
    for key in ("exp_avg", "exp_inf"):
        np.testing.assert_array_equal(got[key], expected[key])
    # And the values are the codes' (decoded by the reference, block by block in memory).
    saved = opt.state_dict()["state"][0]
    for key, signed in (("exp_avg", True), ("exp_inf", False)):
        values = np.empty_like(saved[key], dtype=np.float32)
        values.ravel(order="K")[...] = decode(
            saved[key].ravel(order="K"), saved[f"{key}_scale"], signed
        )
        wanted = values if state_dtype == "float32" else values.astype(BF16)
        assert got[key].dtype == wanted.dtype
        np.testing.assert_array_equal(got[key], wanted)


def test_a_state_mapping_is_read_once(rng):
    # A Mapping that gives another value at each read: what is checked must be what is kept
    # (a second read gave an AttributeError from deep inside the load).
    from collections.abc import Mapping

    class Changing(Mapping):
        def __init__(self, items):
            self.items_, self.reads = items, 0

        def __getitem__(self, key):
            if key == "exp_avg":
                self.reads += 1
                if self.reads > 1:
                    return [0.0, 0.0, 0.0]
            return self.items_[key]

        def __iter__(self):
            return iter(self.items_)

        def __len__(self):
            return len(self.items_)

    p = Parameter(np.ones(3, np.float32))
    opt = Adamax([p])
    exp_avg = np.array([0.5, -0.25, 0.125], np.float32)
    entry = Changing({"step": 1, "exp_avg": exp_avg, "exp_inf": np.ones(3, np.float32)})
    opt.load_state_dict(
        {"state": {0: entry}, "param_groups": [{**opt.param_groups[0], "params": [0]}]}
    )
    np.testing.assert_array_equal(opt.state[p]["exp_avg"], exp_avg)
    assert entry.reads == 1


@pytest.mark.parametrize(
    "param, kwargs, message",
    [
        (np.ones(3, np.int32), {}, "param has dtype int32, which is not supported"),
        (np.ones(3, ">f4"), {}, r"param has dtype >f4, which is not supported"),
        (np.ones(3, np.float16), {"master_weights": "no"}, "master_weights must be a bool"),
    ],
)
def test_new_state_refuses_what_a_step_would_refuse(param, kwargs, message):
    # It made state for any array and took any truthy master_weights, so that the failure
    # came only at the step (or never: "no" made a master copy).
    with pytest.raises(TypeError, match=message):
        new_state(param, **kwargs)


def test_a_short_scale_array_is_described_by_its_blocks(rng):
    # 8192 elements are 32 blocks of 256: the message said "the parameter has shape (32,)".
    p = np.zeros(8192, np.float32)
    state = new_state(p, state_dtype="8bit")
    state["exp_avg_scale"] = np.zeros(31, np.float32)
    with pytest.raises(ValueError, match=r"one scale per block of 256 elements.*shape \(32,\)"):
        adamax(
            [p], [np.ones_like(p)], [state["exp_avg"]], [state["exp_inf"]], [1],
            exp_avg_scales=[state["exp_avg_scale"]], exp_inf_scales=[state["exp_inf_scale"]],
            lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8,
        )  # fmt: skip


def test_a_reversed_parameter_keeps_float32_state_under_8bit(rng):
    # Codes are made with zeros_like (positive strides): a reversed parameter was told it
    # fits 8-bit state, then refused at its first step. It keeps float32 state, as strided
    # parameters do, and steps like the reference.
    init = rng.standard_normal(2 * N).astype(np.float32)
    grad = rng.standard_normal(2 * N).astype(np.float32)
    data = init.copy()
    p = Parameter(data[::-1])
    assert not _core.blockwise_fits(p.data)
    opt = Adamax([p], state_dtype="8bit", lr=0.01)
    p.grad = grad[::-1].copy()
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == np.float32
    expected, _, _ = adamax_reference_step(
        init[::-1].copy(),
        grad[::-1].copy(),
        np.zeros(2 * N, np.float32),
        np.zeros(2 * N, np.float32),
        1,
        lr=0.01,
    )
    np.testing.assert_array_equal(p.data, expected)
