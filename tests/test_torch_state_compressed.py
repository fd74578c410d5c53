"""Compressed optimizer state (state_dtype bfloat16 and "8bit") in adamax_rs.torch.Adamax.

Numbers are checked against the plain numpy codec and step of tests/reference.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

from adamax_rs.torch import Adamax  # noqa: E402
from reference import (  # noqa: E402
    bfloat16_reference_step,
    bfloat16_stochastic_reference_step,
    blockwise_reference_step,
    decode,
    quantize,
)

BF16 = np.dtype(ml_dtypes.bfloat16)
N = 4096 + 300
BLOCKS = -(-N // 256)
OPTIONS = [
    {},
    {"eps_inside_max": False},
    {"weight_decay": 0.1},
    {"weight_decay": 0.05, "decoupled_weight_decay": True},
    {"maximize": True},
]


def heavy_tailed(rng, n, orders=6):
    return (rng.standard_normal(n) * 10.0 ** rng.uniform(-orders, 0, n)).astype(np.float32)


def to_numpy(tensor):
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(BF16)
    return tensor.detach().numpy()


def from_numpy(array):
    if array.dtype == BF16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


@pytest.mark.parametrize(
    "stochastic", [False, True, None], ids=["truncated", "stochastic", "default"]
)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("param_dtype", [np.float32, np.float16, "bfloat16"])
def test_8bit_steps_are_the_reference_bit_for_bit(rng, options, param_dtype, stochastic):
    """Directed rounding, or stochastic rounding (as by default, ``None``)."""
    dtype = BF16 if param_dtype == "bfloat16" else np.dtype(param_dtype)
    hyper = {
        "lr": 0.01,
        "eps_inside_max": True,
        "stochastic_rounding": stochastic is not False,
        **options,
    }
    init = rng.standard_normal(N).astype(dtype)
    p = torch.nn.Parameter(from_numpy(init))
    opt = Adamax([p], lr=0.01, state_dtype="8bit", stochastic_rounding=stochastic, **options)
    ref_p = init.copy()
    ref_state = {
        "exp_avg": np.zeros(N, np.uint8),
        "exp_inf": np.zeros(N, np.uint8),
        "exp_avg_scale": np.zeros(BLOCKS, np.float32),
        "exp_inf_scale": np.zeros(BLOCKS, np.float32),
    }
    for t in range(1, 4):
        g = heavy_tailed(rng, N).astype(dtype)
        p.grad = from_numpy(g)
        opt.step()
        ref_p, ref_state, _ = blockwise_reference_step(ref_p, g, ref_state, t, **hyper)
        np.testing.assert_array_equal(to_numpy(p.data).astype(np.float32), ref_p.astype(np.float32))
        for key, value in ref_state.items():
            np.testing.assert_array_equal(to_numpy(opt.state[p][key]), value, err_msg=key)


@pytest.mark.parametrize(
    "stochastic_rounding, reference_step",
    [
        (False, bfloat16_reference_step),
        (True, bfloat16_stochastic_reference_step),
        (None, bfloat16_stochastic_reference_step),  # the default: stochastically
    ],
)
@pytest.mark.parametrize("param_dtype", [np.float32, "bfloat16"])
def test_bfloat16_steps_are_the_reference_bit_for_bit(
    rng, param_dtype, stochastic_rounding, reference_step
):
    """bfloat16 state rounded to nearest, or stochastically with the reference's hash (as by
    default)."""
    dtype = BF16 if param_dtype == "bfloat16" else np.dtype(param_dtype)
    n = 1000
    init = rng.standard_normal(n).astype(dtype)
    p = torch.nn.Parameter(from_numpy(init))
    opt = Adamax([p], lr=0.01, state_dtype=torch.bfloat16, stochastic_rounding=stochastic_rounding)
    ref_p, m, u = init.copy(), np.zeros(n, BF16), np.zeros(n, BF16)
    for t in range(1, 6):
        g = heavy_tailed(rng, n).astype(dtype)
        p.grad = from_numpy(g)
        opt.step()
        ref_p, m, u, _ = reference_step(ref_p, g, m, u, t, lr=0.01, eps_inside_max=True)
        assert opt.state[p]["exp_avg"].dtype == torch.bfloat16
        np.testing.assert_array_equal(to_numpy(p.data).view(np.uint8), ref_p.view(np.uint8))
        np.testing.assert_array_equal(
            to_numpy(opt.state[p]["exp_avg"]).view(np.uint16), m.view(np.uint16)
        )
        np.testing.assert_array_equal(
            to_numpy(opt.state[p]["exp_inf"]).view(np.uint16), u.view(np.uint16)
        )


def test_stochastic_rounding_survives_a_deep_copy_and_is_refused_without_bfloat16_state(rng):
    p = torch.nn.Parameter(torch.randn(500))
    opt = Adamax([p], state_dtype="bfloat16", stochastic_rounding=True)
    p.grad = torch.randn(500)
    opt.step()
    twin = copy.deepcopy(opt)
    assert twin.stochastic_rounding is True
    assert Adamax([p], state_dtype="8bit").stochastic_rounding is True  # the default
    assert (
        Adamax([p], state_dtype="bfloat16", stochastic_rounding=False).stochastic_rounding is False
    )
    assert Adamax([p]).stochastic_rounding is False
    q = next(iter(twin.state))
    for o, param in ((opt, p), (twin, q)):
        param.grad = torch.full((500,), 1e-3)
        o.step()
    assert torch.equal(p, q)
    assert torch.equal(opt.state[p]["exp_inf"], twin.state[q]["exp_inf"])
    for state_dtype in (None, torch.float32, torch.float64):
        with pytest.raises(ValueError, match="needs state_dtype='bfloat16' or '8bit'"):
            Adamax([p], state_dtype=state_dtype, stochastic_rounding=True)
    with pytest.raises(TypeError, match="stochastic_rounding must be a bool"):
        Adamax([p], state_dtype="bfloat16", stochastic_rounding="yes")


def test_names_and_dtypes_are_accepted():
    p = torch.nn.Parameter(torch.zeros(5000))
    for value, kept in [
        ("bfloat16", torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
        ("8bit", torch.uint8),
        ("float64", torch.float64),
    ]:
        opt = Adamax([p], state_dtype=value)
        p.grad = torch.ones(5000)
        opt.step()
        assert opt.state[p]["exp_avg"].dtype == kept


@pytest.mark.parametrize("bad", ["int8", "9bit", torch.int8, torch.float16])
def test_bad_state_dtype_names_it(bad):
    with pytest.raises(ValueError, match="state_dtype"):
        Adamax([torch.nn.Parameter(torch.zeros(3))], state_dtype=bad)


def test_bad_state_dtype_type():
    with pytest.raises(TypeError, match="state_dtype"):
        Adamax([torch.nn.Parameter(torch.zeros(3))], state_dtype=8)


def test_small_and_complex_parameters_keep_float_state():
    params = {
        "small": torch.nn.Parameter(torch.zeros(4095)),
        "big": torch.nn.Parameter(torch.zeros(64, 64)),
        "complex": torch.nn.Parameter(torch.zeros(5000, dtype=torch.complex64)),
        "channels_last": torch.nn.Parameter(
            torch.zeros(4, 8, 16, 16).to(memory_format=torch.channels_last)
        ),
    }
    opt = Adamax(list(params.values()), state_dtype="8bit")
    for p in params.values():
        p.grad = torch.ones_like(p)
    opt.step()
    kinds = {name: opt.state[p]["exp_avg"].dtype for name, p in params.items()}
    assert kinds == {
        "small": torch.float32,
        "big": torch.uint8,
        "complex": torch.complex64,
        "channels_last": torch.uint8,
    }
    assert opt.state[params["big"]]["exp_avg_scale"].shape == (16,)
    assert "exp_avg_scale" not in opt.state[params["small"]]


def trained(rng, state_dtype, dtype=torch.float32, steps=3):
    torch.manual_seed(int(rng.integers(1 << 30)))
    ps = [
        torch.nn.Parameter(torch.randn(70, 90, dtype=dtype)),
        torch.nn.Parameter(torch.randn(10, dtype=dtype)),
    ]
    opt = Adamax(ps, lr=0.01, state_dtype=state_dtype)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.from_numpy(heavy_tailed(rng, p.numel()).reshape(p.shape)).to(dtype)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("state_dtype", ["8bit", torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_bit_for_bit(rng, state_dtype, dtype):
    ps, opt = trained(rng, state_dtype, dtype)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    resumed = Adamax(twins, lr=0.01, state_dtype=state_dtype)
    # A deep copy, as a file would give: torch's state_dict() shares the step tensors.
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    # torch casts floating state to the parameter's dtype on load; the scales stay float32.
    for key, value in opt.state[ps[0]].items():
        assert resumed.state[twins[0]][key].dtype == value.dtype, key
    for _ in range(3):
        for p, twin in zip(ps, twins):
            g = torch.from_numpy(heavy_tailed(rng, p.numel()).reshape(p.shape)).to(dtype)
            p.grad, twin.grad = g, g.clone()
        opt.step()
        resumed.step()
    for p, twin in zip(ps, twins):
        assert torch.equal(p, twin)
        for key, value in opt.state[p].items():
            assert torch.equal(resumed.state[twin][key], value), key


def test_float32_state_loads_into_8bit_quantized_and_back(rng):
    ps, opt = trained(rng, None)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    q = Adamax(twins, lr=0.01, state_dtype="8bit")
    q.load_state_dict(opt.state_dict())
    big = opt.state[ps[0]]
    m_codes, m_scales = quantize(big["exp_avg"].numpy().astype(np.float64), True, np.float64)
    u_codes, u_scales = quantize(big["exp_inf"].numpy().astype(np.float64), False, np.float64)
    np.testing.assert_array_equal(q.state[twins[0]]["exp_avg"].numpy().reshape(-1), m_codes)
    np.testing.assert_array_equal(q.state[twins[0]]["exp_avg_scale"].numpy(), m_scales)
    np.testing.assert_array_equal(q.state[twins[0]]["exp_inf"].numpy().reshape(-1), u_codes)
    np.testing.assert_array_equal(q.state[twins[0]]["exp_inf_scale"].numpy(), u_scales)
    back = Adamax([torch.nn.Parameter(p.detach().clone()) for p in ps], state_dtype=None)
    back.load_state_dict(q.state_dict())
    state = back.state[back.param_groups[0]["params"][0]]
    assert set(state) == {"step", "exp_avg", "exp_inf"}
    np.testing.assert_array_equal(
        state["exp_avg"].numpy().reshape(-1), decode(m_codes, m_scales, True)
    )
    np.testing.assert_array_equal(
        state["exp_inf"].numpy().reshape(-1), decode(u_codes, u_scales, False)
    )


def test_float_state_loads_into_bfloat16_rounded_to_nearest_even(rng):
    ps, opt = trained(rng, None)
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    bf = Adamax(twins, lr=0.01, state_dtype="bfloat16")
    bf.load_state_dict(opt.state_dict())
    expected = opt.state[ps[0]]["exp_avg"].numpy().astype(BF16)
    got = to_numpy(bf.state[twins[0]]["exp_avg"])
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda s: s.update(exp_avg_scale=torch.zeros(3)),
            r"'exp_avg_scale' must be float32 of shape \(25,\)",
        ),
        (
            lambda s: s.update(exp_inf_scale=s["exp_inf_scale"].double()),
            "'exp_inf_scale' must be float32",
        ),
        (lambda s: s.update(exp_inf_scale=-s["exp_inf_scale"]), "negative"),
        (lambda s: s.pop("exp_inf_scale"), "8-bit state has uint8"),
        (lambda s: s.update(exp_avg=s["exp_avg"].reshape(-1)), "'exp_avg' has shape"),
        (
            lambda s: s.update(exp_avg_scale=s["exp_avg_scale"].to("meta")),
            "'exp_avg_scale' is on the meta device",
        ),
        (lambda s: s.update(exp_inf=s["exp_inf"].to("meta")), "'exp_inf' is on the meta device"),
        (
            # The same codes, laid out column-major (as some writers would make them).
            lambda s: s.update(exp_inf=column_major(s["exp_inf"])),
            "'exp_inf' .*another memory layout",
        ),
    ],
)
def test_bad_8bit_state_dict_is_refused_before_anything_changes(rng, corrupt, message):
    ps, opt = trained(rng, "8bit")
    saved = copy.deepcopy(opt.state_dict())  # torch's shares the state's own dicts
    corrupt(saved["state"][0])
    before = {k: v.clone() for k, v in opt.state[ps[0]].items()}
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    for key, value in before.items():
        assert torch.equal(opt.state[ps[0]][key], value)


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (
            lambda s: s.update(exp_avg=s["exp_avg"].to("meta")),
            ValueError,
            "'exp_avg' is on the meta device",
        ),
        (
            lambda s: s.update(exp_inf=s["exp_inf"].to(torch.complex64)),
            TypeError,
            "'exp_inf' is complex",
        ),
    ],
)
@pytest.mark.parametrize("into", ["8bit", torch.bfloat16, None])
def test_bad_float_state_dict_is_refused_before_anything_changes(
    rng, corrupt, error, message, into
):
    ps, saved_from = trained(rng, None)
    saved = copy.deepcopy(saved_from.state_dict())
    corrupt(saved["state"][0])
    twins = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    target = Adamax(twins, lr=0.01, state_dtype=into)
    with pytest.raises(error, match=f"state of parameter 0: {message}"):
        target.load_state_dict(saved)
    assert len(target.state) == 0


def column_major(tensor):
    return tensor.t().contiguous().t()


@pytest.mark.parametrize("into", ["8bit", None, torch.bfloat16])
def test_8bit_state_loaded_into_another_memory_layout_is_refused(rng, into):
    # A block of 256 holds the elements that follow each other in the memory of the parameter
    # the state was made for. Loaded into a parameter laid out otherwise (here column-major
    # instead of row-major), the codes and scales would fall out of step, or the conversion to
    # float state would read the wrong scale for most elements.
    ps, opt = trained(rng, "8bit")
    twins = [
        torch.nn.Parameter(column_major(p.detach()) if p.dim() == 2 else p.detach().clone())
        for p in ps
    ]
    target = Adamax(twins, lr=0.01, state_dtype=into)
    with pytest.raises(ValueError, match="state of parameter 0: 'exp_avg' .*another memory layout"):
        target.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert len(target.state) == 0


def test_8bit_state_of_a_column_major_parameter_round_trips(rng):
    # Laid out alike, the codes load as they are and the step continues bit for bit, into 8-bit
    # state; into float32 state, the values are decoded in that parameter's memory order.
    torch.manual_seed(int(rng.integers(1 << 30)))
    p = torch.nn.Parameter(column_major(torch.randn(70, 90)))
    opt = Adamax([p], lr=0.01, state_dtype="8bit")
    for _ in range(3):
        p.grad = column_major(torch.from_numpy(heavy_tailed(rng, p.numel()).reshape(p.shape)))
        opt.step()
    twin = torch.nn.Parameter(column_major(p.detach()))
    resumed = Adamax([twin], lr=0.01, state_dtype="8bit")
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    as_float = Adamax([torch.nn.Parameter(column_major(p.detach()))], lr=0.01)
    as_float.load_state_dict(copy.deepcopy(opt.state_dict()))
    state = opt.state[p]
    # In memory order (column-major: the transpose's rows), block by block.
    for key, exact in (("exp_avg", True), ("exp_inf", False)):
        codes = state[key].t().numpy().reshape(-1)
        decoded = decode(codes, state[key + "_scale"].numpy(), exact)
        loaded = next(iter(as_float.state.values()))[key]
        np.testing.assert_array_equal(loaded.t().numpy().reshape(-1), decoded)
    for _ in range(3):
        g = column_major(torch.from_numpy(heavy_tailed(rng, p.numel()).reshape(p.shape)))
        p.grad, twin.grad = g, g.clone()
        opt.step()
        resumed.step()
    assert torch.equal(p, twin)
    for key, value in opt.state[p].items():
        assert torch.equal(resumed.state[twin][key], value), key
