"""adamax_rs.torch.Adamax trains real torch models exactly as torch.optim.Adamax does.

Each test builds one model twice, trains the copies side by side with real ``backward()`` (one
with ``torch.optim.Adamax``, the reference, and one with ``adamax_rs.torch.Adamax``) and checks
after every step that every parameter and every state tensor is equal bit for bit. The reference
runs with ``foreach=False`` (the for-loop) and ``foreach=True``; our optimizer gets the same
``foreach`` value, which it accepts and ignores.

16-bit parameters are the exception: torch keeps their state in 16 bits, adamax_rs in float32.
Their reference is torch.optim.Adamax on a float32 copy of the parameters, refreshed from the
16-bit values before each step and rounded back to 16 bits after it; that is the update in
float32 with float32 state, which is what adamax_rs computes.
"""

from __future__ import annotations

import copy
import random

import pytest

torch = pytest.importorskip("torch")

from torch_training import (  # noqa: E402
    STEPS,
    all_params,
    assert_same_bits,
    assert_same_training,
    loss_of,
    make_mlp,
    parameter_class_with_grad_hook,
    train_side_by_side,
)

from adamax_rs.torch import Adamax  # noqa: E402

nn = torch.nn
FOREACH = [pytest.param(False, id="for-loop"), pytest.param(True, id="foreach")]


# ---------------------------------------------------------------------------------------------
# Hyperparameters, dtypes, foreach

CASES = {
    "float32 defaults": (torch.float32, {}),
    "float64 defaults": (torch.float64, {}),
    "float32 lr 0.05": (torch.float32, {"lr": 0.05}),
    "float64 lr 0.05": (torch.float64, {"lr": 0.05}),
    "weight decay": (torch.float32, {"lr": 0.02, "weight_decay": 0.1}),
    "weight decay float64": (torch.float64, {"lr": 0.02, "weight_decay": 0.3}),
    "maximize": (torch.float32, {"lr": 0.01, "maximize": True}),
    "maximize and weight decay": (
        torch.float32,
        {"lr": 0.01, "maximize": True, "weight_decay": 0.05},
    ),
    "betas and eps": (torch.float32, {"lr": 0.03, "betas": (0.5, 0.9), "eps": 1e-3}),
    "betas and eps float64": (torch.float64, {"lr": 0.03, "betas": (0.0, 0.5), "eps": 0.1}),
}


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("case", sorted(CASES))
def test_mlp_training_matches_torch_bit_for_bit(case, foreach):
    dtype, kwargs = CASES[case]
    train_side_by_side(
        make_mlp(dtype),
        all_params,
        all_params,
        ours_kwargs={**kwargs, "foreach": foreach},
        ref_kwargs={**kwargs, "foreach": foreach},
        dtype=dtype,
    )


@pytest.mark.parametrize(
    "lr_dtype, foreach",
    [
        (torch.float32, False),
        (torch.float32, None),
        (torch.float32, True),
        (torch.float64, False),
        (torch.float64, True),
        (torch.float16, None),
        (torch.float16, True),
        (torch.bfloat16, None),
        (torch.bfloat16, True),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_lr_matches_torch(dtype, lr_dtype, foreach):
    """A 1-element tensor lr, read at every step (a schedule may change it in place). torch's
    for-loop (its default on the CPU, foreach None) divides a tensor lr by the bias correction
    in the lr's type (float16 and bfloat16 through float32) and its foreach path in float64;
    each group follows the path its ``foreach`` names, as torch does."""
    lr = torch.tensor([0.01], dtype=lr_dtype)
    ours_opt, ref_opt = train_side_by_side(
        make_mlp(dtype),
        all_params,
        all_params,
        ours_kwargs={"lr": lr.clone(), "weight_decay": 0.01, "foreach": foreach},
        ref_kwargs={"lr": lr.clone(), "weight_decay": 0.01, "foreach": foreach},
        dtype=dtype,
    )
    ours_opt.param_groups[0]["lr"].fill_(0.05)
    ref_opt.param_groups[0]["lr"].fill_(0.05)
    generator = torch.Generator().manual_seed(5)
    for opt in (ours_opt, ref_opt):
        generator.manual_seed(5)
        for p in (p for g in opt.param_groups for p in g["params"]):
            p.grad = torch.randn(p.shape, generator=generator, dtype=dtype)
        opt.step()
    assert_same_training(ours_opt, ref_opt, "after lr.fill_(0.05)")
    assert ours_opt.param_groups[0]["lr"].dtype == lr_dtype  # still the user's tensor


# ---------------------------------------------------------------------------------------------
# Parameter groups and missing gradients


def three_groups(model):
    first, _, second, _, third = model
    return [
        {"params": first.parameters(), "lr": 0.05, "weight_decay": 0.1},
        {"params": second.parameters(), "betas": (0.7, 0.95), "maximize": False},
        {"params": third.parameters(), "eps": 1e-4},
    ]


@pytest.mark.parametrize("foreach", FOREACH)
def test_parameter_groups_match_torch(foreach):
    kwargs = {"lr": 0.01, "foreach": foreach}
    train_side_by_side(
        make_mlp(),
        three_groups,
        three_groups,
        ours_kwargs=kwargs,
        ref_kwargs=kwargs,
        dtype=torch.float32,
    )


def drop_some_gradients(model, step):
    """Sometimes no gradient: a bias every third step, a whole layer every fifth, and the last
    layer's weight for the first ten steps (so its state starts late)."""
    first, _, second, _, third = model
    if step % 3 == 0:
        first.bias.grad = None
    if step % 5 == 1:
        second.weight.grad = None
        second.bias.grad = None
    if step < 10:
        third.weight.grad = None


@pytest.mark.parametrize("foreach", FOREACH)
def test_gradients_that_are_sometimes_none_match_torch(foreach):
    kwargs = {"lr": 0.02, "weight_decay": 0.01, "foreach": foreach}
    ours, ref = train_side_by_side(
        make_mlp(),
        three_groups,
        three_groups,
        ours_kwargs=kwargs,
        ref_kwargs=kwargs,
        dtype=torch.float32,
        after_backward=drop_some_gradients,
    )
    # The step counts show the skipped steps: the bias of the first layer missed every third.
    first_bias = ours.param_groups[0]["params"][1]
    assert ours.state[first_bias]["step"].item() == STEPS - len(range(0, STEPS, 3))


@pytest.mark.parametrize("foreach", FOREACH)
def test_frozen_layer_and_a_step_with_no_gradient_at_all(foreach):
    """A layer with requires_grad=False never gets state; a step where nothing has a gradient
    changes nothing, as in torch."""
    model = make_mlp()
    model[2].requires_grad_(False)

    def no_gradient_on_step_4(m, step):
        if step == 4:
            for p in m.parameters():
                p.grad = None

    ours, ref = train_side_by_side(
        model,
        all_params,
        all_params,
        ours_kwargs={"lr": 0.01, "foreach": foreach},
        ref_kwargs={"lr": 0.01, "foreach": foreach},
        dtype=torch.float32,
        after_backward=no_gradient_on_step_4,
    )
    assert model[2].weight not in ours.state
    assert ours.state[model[0].weight]["step"].item() == STEPS - 1


@pytest.mark.parametrize("foreach", FOREACH)
def test_state_found_whatever_the_order_of_the_state_dict(foreach):
    """The step reads each parameter's state in the state dict's order when that is the
    parameters' order (no hashing), and looks it up otherwise. Every few steps the group's
    parameters are shuffled, an entry is moved to the end of the state dict, or replaced by a
    copy; some parameters have no gradient. Both optimizers get the same changes, and must
    stay equal bit for bit."""
    model = make_mlp()
    ref_model = copy.deepcopy(model)
    ours = Adamax(model.parameters(), lr=0.02, foreach=foreach)
    ref = torch.optim.Adamax(ref_model.parameters(), lr=0.02, foreach=foreach)
    shuffle = random.Random(7)
    for step in range(STEPS):
        count = len(ours.param_groups[0]["params"])
        order = list(range(count))
        if step % 4 == 1:
            shuffle.shuffle(order)
        moved, copied, no_grad = step % count, (3 * step) % count, (5 * step + 1) % count
        for m, opt in ((model, ours), (ref_model, ref)):
            group = opt.param_groups[0]
            group["params"] = [group["params"][i] for i in order]
            params = group["params"]
            if params[moved] in opt.state and step % 3 == 2:
                opt.state[params[moved]] = opt.state.pop(params[moved])
            if params[copied] in opt.state and step % 5 == 3:
                entry = opt.state[params[copied]]
                opt.state[params[copied]] = {k: v.clone() for k, v in entry.items()}
            opt.zero_grad()
            loss_of(m, step, torch.float32).backward()
            if step % 2 == 0:
                params[no_grad].grad = None
            opt.step()
        assert_same_training(ours, ref, step)


def test_a_step_hashes_no_parameter_when_the_state_is_in_their_order():
    # torch's Tensor.__hash__ is Python code; the step reads the state dict in its own order and
    # only looks a parameter up (hashing it) when its entry is not the next one.
    hashed = []

    class CountsHashes(nn.Parameter):
        def __hash__(self):
            hashed.append(self)
            return id(self)

    params = [CountsHashes(torch.randn(3)) for _ in range(5)]
    frozen = params[2]  # no gradient on later steps: the step passes its entry by
    for p in params:
        p.grad = torch.randn(3)
    opt = Adamax(params, lr=0.1)
    opt.step()
    frozen.grad = None
    hashed.clear()
    for _ in range(3):
        opt.step()
    assert hashed == []
    # Out of order: the parameters whose entry is not next are looked up, and hashed.
    opt.param_groups[0]["params"].reverse()
    opt.step()
    assert hashed and all(h is not frozen for h in hashed)


def test_state_moved_by_python_code_the_step_runs():
    # A parameter's grad property moves another parameter's entry to the end of the state dict
    # while the step walks it: the step finds every entry all the same (in order or by lookup),
    # and trains exactly as torch.optim.Adamax on plain parameters.
    moving = []

    def move_the_entry():
        if moving:
            state, victim = moving
            if any(k is victim for k in state):
                state[victim] = state.pop(victim)

    MovesAnEntry = parameter_class_with_grad_hook(move_the_entry)

    torch.manual_seed(3)
    values = [torch.randn(n) for n in (3, 4, 5, 6)]
    ours = [nn.Parameter(v.clone()) for v in values]
    ours[1] = MovesAnEntry(values[1].clone())
    ref = [nn.Parameter(v.clone()) for v in values]
    opt = Adamax(ours, lr=0.1)
    reference = torch.optim.Adamax(ref, lr=0.1)
    for step in range(6):
        for p, q in zip(ours, ref):
            g = torch.randn(p.shape)
            p.grad, q.grad = g.clone(), g.clone()
        moving[:] = [opt.state, ours[2]] if step > 0 else []
        opt.step()
        moving.clear()
        reference.step()
        if step > 0:  # the entry was moved during the step
            assert list(opt.state)[-1] is ours[2] and len(opt.state) == 4
        for i, (p, q) in enumerate(zip(ours, ref)):
            assert_same_bits(p.detach(), q.detach(), f"step {step}, parameter {i}")
            for key in ("exp_avg", "exp_inf", "step"):
                assert_same_bits(opt.state[p][key], reference.state[q][key], f"{key} {i}")


# ---------------------------------------------------------------------------------------------
# Schedulers and GradScaler (every scheduler class is in test_torch_schedulers.py)


@pytest.mark.parametrize("foreach", FOREACH)
def test_a_scheduler_changing_lr_and_betas_matches_torch(foreach):
    def schedulers(ours, ref):
        return [
            torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=STEPS)
            for o in (ours, ref)
        ]

    kwargs = {"lr": 0.01, "foreach": foreach}
    ours, _ = train_side_by_side(
        make_mlp(),
        all_params,
        all_params,
        ours_kwargs=kwargs,
        ref_kwargs=kwargs,
        dtype=torch.float32,
        schedulers=schedulers,
    )
    assert ours.param_groups[0]["betas"][0] != 0.9  # momentum cycling reached the betas


@pytest.mark.parametrize("foreach", FOREACH)
def test_grad_scaler_matches_torch_and_skips_steps_with_inf(foreach):
    """torch.amp.GradScaler("cpu") with float16 autocast: the scaled loss, the unscaled
    gradients, and the steps it skips because a gradient holds inf (then nothing changes)."""
    model = make_mlp()
    ref_model = copy.deepcopy(model)
    ours = Adamax(model.parameters(), lr=0.01, foreach=foreach)
    ref = torch.optim.Adamax(ref_model.parameters(), lr=0.01, foreach=foreach)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=4) for _ in "ab"]
    poisoned = {5, 6, 17, 40}
    skipped = []
    for step in range(STEPS):
        before = [p.detach().clone() for p in model.parameters()]
        scale = scalers[0].get_scale()
        for m, opt, scaler in ((model, ours, scalers[0]), (ref_model, ref, scalers[1])):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = loss_of(m, step, torch.float32)
            scaler.scale(loss).backward()
            if step in poisoned:
                m[2].weight.grad[1, 3] = float("inf") if step % 2 else float("nan")
            scaler.step(opt)
            scaler.update()
        assert_same_training(ours, ref, step)
        assert scalers[0].get_scale() == scalers[1].get_scale()
        # The scale backs off exactly when the step was skipped (also for an overflow in float16).
        if scalers[0].get_scale() < scale:
            skipped.append(step)
        changed = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
        assert changed == (step not in skipped), f"step {step}"
    assert poisoned <= set(skipped)
    assert ours.state[model[0].weight]["step"].item() == STEPS - len(skipped)


# ---------------------------------------------------------------------------------------------
# Complex and non-contiguous parameters


class ComplexModel(nn.Module):
    """A complex linear map and a complex bias, fitted to complex targets."""

    def __init__(self, dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, 4, dtype=dtype) * 0.5)
        self.bias = nn.Parameter(torch.randn(5, dtype=dtype) * 0.1)

    def forward(self, x):
        return x @ self.weight.T + self.bias


class RealViewModel(nn.Module):
    """The same model with real parameters holding (real, imaginary) pairs."""

    def __init__(self, complex_model):
        super().__init__()
        self.weight = nn.Parameter(torch.view_as_real(complex_model.weight.detach()).clone())
        self.bias = nn.Parameter(torch.view_as_real(complex_model.bias.detach()).clone())

    def forward(self, x):
        return x @ torch.view_as_complex(self.weight).T + torch.view_as_complex(self.bias)


def complex_loss(model, step, dtype):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(16, 4, dtype=dtype, generator=generator)
    target = torch.randn(16, 5, dtype=dtype, generator=generator)
    return (model(x) - target).abs().square().mean()


COMPLEX_KWARGS = [
    pytest.param({"lr": 0.02}, id="plain"),
    pytest.param({"lr": 0.02, "maximize": True}, id="maximize"),
    pytest.param({"lr": 0.02, "weight_decay": 0.1}, id="decay"),
    pytest.param({"lr": 0.02, "weight_decay": 0.1, "maximize": True}, id="decay-maximize"),
]


@pytest.mark.parametrize("kwargs", COMPLEX_KWARGS)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_parameters_match_torch_on_their_real_view(dtype, kwargs):
    """Ours on complex parameters against torch on real parameters that are their (real,
    imaginary) view (for-loop and foreach), and against torch on the same complex parameters
    with foreach (which views them as real first). The state, seen as real, is compared too.

    torch's complex for-loop is a reference only without weight decay: it adds
    ``weight_decay * param`` in complex arithmetic, rounded twice, where its real view (and its
    foreach path) use one fused multiply-add, so it differs from its own real view.
    """
    torch.manual_seed(3)
    ours_model = ComplexModel(dtype)
    loops = [False, True] if kwargs.get("weight_decay", 0) == 0 else [True]
    complex_models = [copy.deepcopy(ours_model) for _ in loops]
    real_models = [RealViewModel(ours_model) for _ in range(2)]
    ours = Adamax(ours_model.parameters(), **kwargs)
    torch_complex = [
        torch.optim.Adamax(m.parameters(), foreach=f, **kwargs)
        for m, f in zip(complex_models, loops)
    ]
    torch_real = [
        torch.optim.Adamax(m.parameters(), foreach=f, **kwargs)
        for m, f in zip(real_models, (False, True))
    ]
    for step in range(STEPS):
        for m, opt in (
            (ours_model, ours),
            *zip(complex_models, torch_complex),
            *zip(real_models, torch_real),
        ):
            opt.zero_grad()
            complex_loss(m, step, dtype).backward()
            opt.step()
        for opt in torch_complex:
            assert_same_training(ours, opt, step)
        for real_model, real_opt in zip(real_models, torch_real):
            for p, q in zip(ours_model.parameters(), real_model.parameters()):
                assert_same_bits(torch.view_as_real(p), q, f"step {step}: real view")
                for key in ("exp_avg", "exp_inf"):
                    assert_same_bits(
                        torch.view_as_real(ours.state[p][key]),
                        real_opt.state[q][key],
                        f"step {step}: real view of {key}",
                    )


def test_complex_weight_decay_is_torch_real_view_not_its_complex_for_loop():
    """The fact behind the exception above, so that it is noticed if torch changes: its complex
    ``add(alpha=...)`` differs from the same add on the real view."""
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(1000, dtype=torch.complex64, generator=generator)
    param = torch.randn(1000, dtype=torch.complex64, generator=generator)
    as_complex = torch.view_as_real(grad.add(param, alpha=0.1))
    as_real = torch.view_as_real(grad).add(torch.view_as_real(param), alpha=0.1)
    assert not torch.equal(as_complex, as_real)


class StridedModel(nn.Module):
    """Parameters that are not contiguous: a transposed weight, a weight with every other
    column of a larger buffer, a channels-last convolution, and a bias read backwards."""

    def __init__(self, dtype):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
        self.transposed = nn.Parameter(torch.randn(16, 4 * 4 * 4, dtype=dtype).T * 0.1)
        self.every_other = nn.Parameter(torch.randn(10, 32, dtype=dtype)[:, ::2])
        self.backwards = nn.Parameter(torch.randn(10, dtype=dtype).flip(0))

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(1)
        h = torch.tanh(h @ self.transposed)
        return h @ self.every_other.T + self.backwards


def strided_loss(model, step, dtype):
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(8, 2, 4, 4, dtype=dtype, generator=generator)
    y = torch.randn(8, 10, dtype=dtype, generator=generator)
    return nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_contiguous_parameters_match_torch(dtype, foreach):
    torch.manual_seed(4)
    model = StridedModel(dtype)
    assert not model.transposed.is_contiguous()
    assert not model.every_other.is_contiguous()
    assert not model.conv.weight.is_contiguous()
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    ref_model = copy.deepcopy(model)
    assert ref_model.transposed.stride() == model.transposed.stride()
    kwargs = {"lr": 0.01, "weight_decay": 0.01, "foreach": foreach}
    ours = Adamax(model.parameters(), **kwargs)
    ref = torch.optim.Adamax(ref_model.parameters(), **kwargs)
    for step in range(STEPS):
        for m, opt in ((model, ours), (ref_model, ref)):
            opt.zero_grad()
            strided_loss(m, step, dtype).backward()
            opt.step()
        assert_same_training(ours, ref, step)
    # The update went into the parameters' own memory: their layout is unchanged.
    assert model.transposed.stride() == (1, 4 * 4 * 4)
    assert model.every_other.stride() == (32, 2)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------
# 16-bit parameters with float32 state, and float64 state for float32 parameters


def train_against_wider_reference(model, state_dtype, kwargs, compute_dtype, steps=STEPS):
    """Train ``model`` with adamax_rs; the reference is torch.optim.Adamax on ``compute_dtype``
    copies of the parameters, refreshed from the model before each step and rounded back into a
    second model after it."""
    param_dtype = next(model.parameters()).dtype
    ref_model = copy.deepcopy(model)
    wide = [nn.Parameter(p.detach().to(compute_dtype)) for p in ref_model.parameters()]
    ours = Adamax(model.parameters(), state_dtype=state_dtype, **kwargs)
    ref = torch.optim.Adamax(wide, **kwargs)
    for step in range(steps):
        for m in (model, ref_model):
            for p in m.parameters():
                p.grad = None
            loss_of(m, step, param_dtype).backward()
        ours.step()
        with torch.no_grad():
            for w, p in zip(wide, ref_model.parameters()):
                w.copy_(p)
                w.grad = p.grad.to(compute_dtype)
            ref.step()
            for w, p in zip(wide, ref_model.parameters()):
                p.copy_(w)  # rounded to nearest, ties to even, as adamax_rs rounds
        for i, (p, q, w) in enumerate(zip(model.parameters(), ref_model.parameters(), wide)):
            assert_same_bits(p, q, f"step {step}, parameter {i}")
            for key in ("exp_avg", "exp_inf"):
                assert ours.state[p][key].dtype == compute_dtype
                assert_same_bits(ours.state[p][key], ref.state[w][key], f"step {step}, {key}")
            assert ours.state[p]["step"].item() == step + 1
    return ours


@pytest.mark.parametrize("kwargs", [{"lr": 0.01}, {"lr": 0.02, "weight_decay": 0.1}])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_parameters_keep_float32_state(dtype, kwargs):
    train_against_wider_reference(make_mlp(dtype), None, kwargs, torch.float32)


def test_float32_parameters_with_float64_state():
    train_against_wider_reference(make_mlp(), torch.float64, {"lr": 0.01}, torch.float64)


def test_16_bit_parameters_with_float64_state():
    train_against_wider_reference(
        make_mlp(torch.bfloat16), torch.float64, {"lr": 0.01}, torch.float64
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("step_dtype", [torch.float32, torch.float64])
def test_step_counts_past_2_to_the_24_count_as_torch_does(foreach, step_dtype):
    # Found by review: torch adds 1 to the step tensor in its own type, so a float32 count stops
    # at 2**24, and its bias correction uses 2**24 from then on. adamax_rs wrote the same
    # rounded count but used 2**24 + 1 for the coefficients: with beta1 close to 1 the steps
    # differed. A float64 count keeps counting, on both sides.
    torch.manual_seed(0)
    start = torch.randn(1000, dtype=torch.float64)
    ours_p, theirs_p = (torch.nn.Parameter(start.clone()) for _ in range(2))
    options = dict(lr=1e-3, betas=(0.9999999, 0.999))
    ours = Adamax([ours_p], foreach=foreach, **options)
    theirs = torch.optim.Adamax([theirs_p], foreach=foreach, **options)
    state = {
        "step": torch.tensor(2.0**24 - 2, dtype=step_dtype),
        "exp_avg": torch.randn(1000, dtype=torch.float64) * 1e-3,
        "exp_inf": torch.rand(1000, dtype=torch.float64) + 0.5,
    }
    for opt, p in ((ours, ours_p), (theirs, theirs_p)):
        opt.state[p] = {k: v.clone() for k, v in state.items()}
    for _ in range(4):  # 2**24 - 1, 2**24, then stuck (float32) or 2**24 + 2 (float64)
        grad = torch.randn(1000, dtype=torch.float64)
        ours_p.grad, theirs_p.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
        assert ours.state[ours_p]["step"].item() == theirs.state[theirs_p]["step"].item()
        assert torch.equal(ours_p.detach(), theirs_p.detach())
    expected = 2.0**24 if step_dtype == torch.float32 else 2.0**24 + 2
    assert ours.state[ours_p]["step"].item() == expected
