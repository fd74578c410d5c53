"""State dicts move between torch.optim.Adamax and adamax_rs.torch.Adamax, both ways, exactly.

A run is trained for a while with one optimizer, its ``state_dict()`` goes through
``torch.save`` and ``torch.load(weights_only=True)`` into a fresh optimizer of the other kind,
and both continue: every later step must equal, bit for bit, the original optimizer continuing
on its own.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest

torch = pytest.importorskip("torch")

from torch_training import (  # noqa: E402
    assert_same_bits,
    assert_same_training,
    loss_of,
    make_mlp,
)

from adamax_rs.torch import Adamax  # noqa: E402

TORCH = torch.optim.Adamax
OURS = Adamax


def through_a_file(state_dict):
    """``torch.save`` then ``torch.load(weights_only=True)``, as a checkpoint would."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def groups(model):
    first, _, second, _, third = model
    return [
        {"params": [*first.parameters(), *second.parameters()], "weight_decay": 0.01},
        {"params": third.parameters(), "lr": 0.02, "betas": (0.8, 0.99)},
    ]


def train(model, opt, steps, start=0, dtype=torch.float32, skip_bias=True):
    for step in range(start, start + steps):
        opt.zero_grad()
        loss_of(model, step, dtype).backward()
        if skip_bias and step < 25:
            model[4].bias.grad = None  # so that a parameter has no state when saved
        opt.step()


def new_optimizer(kind, model, foreach):
    return kind(groups(model), lr=0.01, foreach=foreach)


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize(
    "saver, loader",
    [(TORCH, OURS), (OURS, TORCH), (OURS, OURS)],
    ids=["torch-to-ours", "ours-to-torch", "ours-to-ours"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dict_loads_across_and_training_continues_exactly(saver, loader, foreach, dtype):
    model = make_mlp(dtype)
    saving = new_optimizer(saver, model, foreach)
    train(model, saving, 20, dtype=dtype)
    assert model[4].bias not in saving.state
    saved = through_a_file(saving.state_dict())

    resumed_model = copy.deepcopy(model)
    loading = new_optimizer(loader, resumed_model, foreach)
    loading.load_state_dict(saved)
    assert_same_training(loading, saving, "after loading")
    for step in range(20, 50):
        for m, opt in ((model, saving), (resumed_model, loading)):
            opt.zero_grad()
            loss_of(m, step, dtype).backward()
            if step < 25:
                m[4].bias.grad = None
            opt.step()
        assert_same_training(loading, saving, step)
    assert loading.param_groups[1]["betas"] == (0.8, 0.99)


def test_a_torch_state_dict_gets_this_optimizer_group_keys():
    model = make_mlp()
    saving = TORCH(model.parameters(), lr=0.01)
    train(model, saving, 3)
    loading = OURS(copy.deepcopy(model).parameters())
    loading.load_state_dict(through_a_file(saving.state_dict()))
    group = loading.param_groups[0]
    assert group["lr"] == 0.01
    assert group["eps_inside_max"] is True
    assert group["decoupled_weight_decay"] is False
    assert set(group) >= set(saving.param_groups[0])


def test_our_state_dict_loads_into_torch_with_our_extra_keys_ignored():
    model = make_mlp()
    saving = OURS(model.parameters(), lr=0.01)
    train(model, saving, 3)
    saved = saving.state_dict()
    assert {"eps_inside_max", "decoupled_weight_decay"} <= set(saved["param_groups"][0])
    loading = TORCH(copy.deepcopy(model).parameters())
    loading.load_state_dict(through_a_file(saved))
    assert_same_training(loading, saving, "after loading")


def test_tensor_lr_survives_a_checkpoint():
    model = make_mlp()
    saving = OURS(model.parameters(), lr=torch.tensor(0.01, dtype=torch.float64))
    train(model, saving, 3)
    loading = TORCH(copy.deepcopy(model).parameters(), lr=torch.tensor(0.5, dtype=torch.float64))
    loading.load_state_dict(through_a_file(saving.state_dict()))
    lr = loading.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and lr.item() == 0.01


# ---------------------------------------------------------------------------------------------
# 16-bit parameters (float32 state here, 16-bit state in torch) and state_dtype


def sixteen_bit_run(kind, state_dtype=None, steps=5):
    model = make_mlp(torch.bfloat16)
    kwargs = {"state_dtype": state_dtype} if kind is OURS else {}
    opt = kind(model.parameters(), lr=0.01, **kwargs)
    train(model, opt, steps, dtype=torch.bfloat16, skip_bias=False)
    return model, opt


@pytest.mark.parametrize("state_dtype", [None, torch.float64])
def test_wide_state_of_16_bit_parameters_survives_a_round_trip(state_dtype):
    """Our float32 (or float64) state must come back as it was, not rounded through bfloat16
    by torch's loader (which casts state to the parameter's dtype), and training continues."""
    model, saving = sixteen_bit_run(OURS, state_dtype)
    wide = state_dtype or torch.float32
    saved = through_a_file(saving.state_dict())
    assert saved["state"][0]["exp_avg"].dtype == wide
    resumed = copy.deepcopy(model)
    loading = OURS(resumed.parameters(), lr=0.01, state_dtype=state_dtype)
    loading.load_state_dict(saved)
    assert_same_training(loading, saving, "after loading")
    for step in range(5, 10):
        for m, opt in ((model, saving), (resumed, loading)):
            opt.zero_grad()
            loss_of(m, step, torch.bfloat16).backward()
            opt.step()
        assert_same_training(loading, saving, step)


def test_torch_16_bit_state_is_widened_exactly():
    model, saving = sixteen_bit_run(TORCH)
    saved = through_a_file(saving.state_dict())
    assert saved["state"][0]["exp_avg"].dtype == torch.bfloat16
    loading = OURS(copy.deepcopy(model).parameters(), lr=0.01)
    loading.load_state_dict(saved)
    for index, state in saved["state"].items():
        param = loading.param_groups[0]["params"][index]
        for key in ("exp_avg", "exp_inf"):
            assert_same_bits(loading.state[param][key], state[key].float(), f"{index} {key}")
        assert_same_bits(loading.state[param]["step"], state["step"], f"{index} step")


def test_our_float32_state_loads_into_torch_as_its_16_bit_state():
    model, saving = sixteen_bit_run(OURS)
    loading = TORCH(copy.deepcopy(model).parameters(), lr=0.01)
    loading.load_state_dict(through_a_file(saving.state_dict()))
    for p, q in zip(model.parameters(), loading.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_inf"):
            assert loading.state[q][key].dtype == torch.bfloat16
            assert_same_bits(loading.state[q][key], saving.state[p][key].bfloat16(), key)
    train(model, loading, 2, start=5, dtype=torch.bfloat16, skip_bias=False)


def test_load_state_dict_hooks_see_and_shape_the_wide_state():
    """A load pre-hook may edit the state dict (torch's documented use); a post-hook sees the
    state as the optimizer will use it."""
    model, saving = sixteen_bit_run(OURS)
    saved = saving.state_dict()
    loading = OURS(copy.deepcopy(model).parameters(), lr=0.01)
    seen = []

    def double_exp_avg(optimizer, state_dict):
        state = {i: {**s, "exp_avg": s["exp_avg"] * 2} for i, s in state_dict["state"].items()}
        return {**state_dict, "state": state}

    loading.register_load_state_dict_pre_hook(double_exp_avg)
    loading.register_load_state_dict_post_hook(
        lambda optimizer: seen.extend(s["exp_avg"].dtype for s in optimizer.state.values())
    )
    loading.load_state_dict(saved)
    assert seen and set(seen) == {torch.float32}
    for index, param in enumerate(loading.param_groups[0]["params"]):
        expected = saved["state"][index]["exp_avg"] * 2
        assert_same_bits(loading.state[param]["exp_avg"], expected, f"parameter {index}")


# ---------------------------------------------------------------------------------------------
# Copies of the optimizer object itself


@pytest.mark.parametrize(
    "copier",
    [copy.deepcopy, lambda opt: pickle.loads(pickle.dumps(opt))],
    ids=["deepcopy", "pickle"],
)
@pytest.mark.parametrize("state_dtype", [None, torch.float64])
def test_a_copied_optimizer_steps_like_torch_copied(copier, state_dtype):
    """copy.deepcopy and pickle give an optimizer that works, as they do for torch's (the
    copy has its own parameters: the parameters are copied with it)."""
    model = make_mlp(torch.bfloat16)
    ours = OURS(model.parameters(), lr=0.01, state_dtype=state_dtype)
    train(model, ours, 4, dtype=torch.bfloat16, skip_bias=False)
    twin = copier(ours)
    assert twin.state_dtype == state_dtype
    assert twin.param_groups[0]["params"][0] is not ours.param_groups[0]["params"][0]
    generator = torch.Generator().manual_seed(9)
    for opt in (ours, twin):
        generator.manual_seed(9)
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        opt.step()
    assert_same_training(twin, ours, "after copying")


@pytest.mark.parametrize("saver", [TORCH, OURS], ids=["from-torch", "from-ours"])
def test_a_loaded_state_counts_on_its_own_step_tensors(saver):
    # torch's loader keeps the step tensors it is given: loading a live state dict (no file in
    # between) would share the source's counts, and one tensor given for two parameters would
    # be refused at the next step as memory written twice.
    model = make_mlp()
    source = saver(model.parameters(), lr=0.01)
    train(model, source, 3, skip_bias=False)
    saved = source.state_dict()
    shared = saved["state"][0]["step"]
    saved["state"][1]["step"] = shared  # one count for parameters 0 and 1
    loaded = OURS(model.parameters(), lr=0.01)
    loaded.load_state_dict(saved)
    counts = [loaded.state[p]["step"] for p in model.parameters()]
    source_counts = [source.state[p]["step"] for p in model.parameters()]
    assert all(
        c.untyped_storage().data_ptr() != shared.untyped_storage().data_ptr() for c in counts
    )
    assert len({c.untyped_storage().data_ptr() for c in counts}) == len(counts)
    train(model, loaded, 2, start=3, skip_bias=False)
    assert [c.item() for c in counts] == [5.0] * len(counts)
    assert [c.item() for c in source_counts] == [3.0] * len(counts)
