"""adamax_rs.torch.Adamax behaves as a torch.optim.Optimizer wherever torch's API reaches it.

Signature, hooks (step, state dict, load state dict; per optimizer and global), zero_grad,
add_param_group, named parameters, closures, and autograd's view of the in-place update; each
compared with what torch.optim.Adamax does.
"""

from __future__ import annotations

import copy
import inspect

import pytest

torch = pytest.importorskip("torch")

from torch.optim.optimizer import (  # noqa: E402
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch_training import (  # noqa: E402
    assert_same_training,
    loss_of,
    make_mlp,
)

from adamax_rs.torch import Adamax  # noqa: E402

nn = torch.nn


def test_signature_and_defaults_are_torchs():
    ours = inspect.signature(Adamax).parameters
    theirs = inspect.signature(torch.optim.Adamax).parameters
    for name, parameter in theirs.items():
        assert name in ours, name
        assert ours[name].kind == parameter.kind, name
        assert ours[name].default == parameter.default, name
    extra = [name for name in ours if name not in theirs]
    assert extra == [
        "eps_inside_max",
        "decoupled_weight_decay",
        "state_dtype",
        "stochastic_rounding",
    ]
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in extra)


def test_it_is_a_torch_optimizer_with_torchs_group_keys():
    model = make_mlp()
    ours = Adamax(model.parameters())
    theirs = torch.optim.Adamax(model.parameters())
    assert isinstance(ours, torch.optim.Optimizer)
    for key, value in theirs.defaults.items():
        assert ours.defaults[key] == value, key
    assert set(ours.param_groups[0]) == set(theirs.param_groups[0]) | {
        "eps_inside_max",
        "decoupled_weight_decay",
    }


def test_positional_arguments_are_torchs():
    model = make_mlp()
    ref_model = copy.deepcopy(model)
    ours = Adamax(model.parameters(), 0.04, (0.8, 0.99), 1e-6, 0.01, False)
    ref = torch.optim.Adamax(ref_model.parameters(), 0.04, (0.8, 0.99), 1e-6, 0.01, False)
    assert ours.param_groups[0]["lr"] == 0.04 and ours.param_groups[0]["weight_decay"] == 0.01
    for step in range(10):
        for m, opt in ((model, ours), (ref_model, ref)):
            opt.zero_grad()
            loss_of(m, step, torch.float32).backward()
            opt.step()
        assert_same_training(ours, ref, step)


# ---------------------------------------------------------------------------------------------
# Hooks


def run_step_hooks(kind):
    model = make_mlp()
    opt = kind(model.parameters(), lr=0.01)
    calls = []

    def pre(optimizer, args, kwargs):
        calls.append(("pre", optimizer is opt, args[0] is opt, len(args), dict(kwargs)))
        step_count = optimizer.state[model[0].weight]["step"].item() if optimizer.state else 0
        calls.append(("step before", step_count))
        # A pre-hook may replace the arguments: here it supplies a closure.
        return args, {"closure": lambda: torch.tensor(42.0)}

    def post(optimizer, args, kwargs):
        calls.append(("post", optimizer.state[model[0].weight]["step"].item()))

    handles = [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)]
    global_handles = [
        register_optimizer_step_pre_hook(
            lambda o, a, k: calls.append(("global pre", type(o).__name__))
        ),
        register_optimizer_step_post_hook(
            lambda o, a, k: calls.append(("global post", type(o).__name__))
        ),
    ]
    try:
        loss_of(model, 0, torch.float32).backward()
        returned = opt.step()
        for handle in handles:
            handle.remove()
        loss_of(model, 1, torch.float32).backward()
        opt.step()  # only the global hooks now
    finally:
        for handle in global_handles:
            handle.remove()
    return returned, calls


def test_step_hooks_run_as_for_torch():
    ours_returned, ours_calls = run_step_hooks(Adamax)
    ref_returned, ref_calls = run_step_hooks(torch.optim.Adamax)
    assert ours_returned.item() == ref_returned.item() == 42.0
    assert ours_calls == ref_calls  # (both classes are named Adamax)
    assert ours_calls[0][0] == "global pre"
    assert ("post", 1.0) in ours_calls and ("step before", 0) in ours_calls
    assert [c[0] for c in ours_calls[-2:]] == ["global pre", "global post"]


def run_state_dict_hooks(kind):
    model = make_mlp()
    opt = kind(model.parameters(), lr=0.01)
    loss_of(model, 0, torch.float32).backward()
    opt.step()
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))

    def post(optimizer, state_dict):
        calls.append("post")
        state_dict["note"] = "added by a hook"
        return state_dict

    opt.register_state_dict_post_hook(post)
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load pre"))
    opt.register_load_state_dict_post_hook(
        lambda o: calls.append(("load post", o.state[model[0].weight]["step"].item()))
    )
    saved = opt.state_dict()
    assert saved["note"] == "added by a hook"
    del saved["note"]
    opt.load_state_dict(saved)
    return calls


def test_state_dict_hooks_run_as_for_torch():
    ours = run_state_dict_hooks(Adamax)
    assert ours == run_state_dict_hooks(torch.optim.Adamax)
    assert ours == ["pre", "post", "load pre", ("load post", 1.0)]


# ---------------------------------------------------------------------------------------------
# zero_grad, add_param_group, named parameters, closures


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    model = make_mlp()
    opt = Adamax(model.parameters())
    loss_of(model, 0, torch.float32).backward()
    opt.zero_grad(set_to_none=set_to_none)
    for p in model.parameters():
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is not None and not p.grad.any()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # zero gradients still count as a step, as in torch
    for a, p in zip(before, model.parameters()):
        assert torch.equal(a, p)
    assert (model[0].weight in opt.state) == (not set_to_none)


def test_add_param_group_while_training_matches_torch():
    model = make_mlp()
    ref_model = copy.deepcopy(model)
    first = lambda m: [*m[0].parameters(), *m[2].parameters()]  # noqa: E731
    ours = Adamax(first(model), lr=0.01)
    ref = torch.optim.Adamax(first(ref_model), lr=0.01)
    for step in range(40):
        if step == 15:
            for m, opt in ((model, ours), (ref_model, ref)):
                opt.add_param_group({"params": m[4].parameters(), "lr": 0.03, "eps": 1e-5})
        for m, opt in ((model, ours), (ref_model, ref)):
            opt.zero_grad()
            loss_of(m, step, torch.float32).backward()
            opt.step()
        assert_same_training(ours, ref, step)
    assert ours.param_groups[1]["betas"] == (0.9, 0.999)  # the defaults fill the new group
    assert ours.state[model[4].weight]["step"].item() == 40 - 15


def test_named_parameters_match_torch_and_reach_the_state_dict():
    model = make_mlp()
    ref_model = copy.deepcopy(model)
    ours = Adamax(model.named_parameters(), lr=0.01)
    ref = torch.optim.Adamax(ref_model.named_parameters(), lr=0.01)
    assert ours.param_groups[0]["param_names"] == [n for n, _ in model.named_parameters()]
    for step in range(10):
        for m, opt in ((model, ours), (ref_model, ref)):
            opt.zero_grad()
            loss_of(m, step, torch.float32).backward()
            opt.step()
        assert_same_training(ours, ref, step)
    saved = ours.state_dict()
    assert (
        saved["param_groups"][0]["param_names"]
        == ref.state_dict()["param_groups"][0]["param_names"]
    )
    ours.add_param_group({"params": [("extra", nn.Parameter(torch.zeros(2)))]})
    assert ours.param_groups[1]["param_names"] == ["extra"]


def test_closure_runs_with_grad_enabled_and_its_loss_is_returned():
    model = make_mlp()
    opt = Adamax(model.parameters(), lr=0.01)

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = loss_of(model, 0, torch.float32)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.requires_grad and loss.item() > 0
    assert opt.state[model[0].weight]["step"].item() == 1


def test_autograd_sees_the_in_place_update_as_torch_does():
    """The parameters are updated in place: a graph that saved them before the step refuses
    backward afterwards, as it does after torch.optim.Adamax's step."""
    messages = []
    for kind in (Adamax, torch.optim.Adamax):
        p = nn.Parameter(torch.ones(3))
        opt = kind([p], lr=0.1)
        p.grad = torch.ones(3)
        version = p._version
        held = (p * p).sum()  # saves p for backward
        opt.step()
        assert p._version > version
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as error:
            held.backward()
        messages.append(str(error.value).split("[")[0])
    assert messages[0] == messages[1]
