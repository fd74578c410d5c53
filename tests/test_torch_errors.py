"""What adamax_rs.torch.Adamax refuses, how, and that a refusal changes nothing.

The constructor's checks are compared with torch.optim.Adamax's: torch's own error cases
(``torch.testing._internal.common_optimizers.optim_error_inputs_func_adamax``, which needs the
expecttest package) and more, with the same exception types and messages. What adamax_rs does
not do (tensors off the CPU, sparse gradients, differentiable=True, capturable=True) is refused
with a clear exception. Every refused call leaves every parameter, gradient and state tensor
as it was, bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")

from torch_training import (  # noqa: E402
    assert_same_bits,
    loss_of,
    make_mlp,
    parameter_class_with_grad_hook,
)

from adamax_rs.torch import Adamax  # noqa: E402

nn = torch.nn


def outcome(call):
    """``(exception type, message)`` of ``call()`` with warnings raised as errors, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            call()
        except Exception as error:  # the comparison is the point
            return type(error), str(error)
    return None


# ---------------------------------------------------------------------------------------------
# The constructor: torch's checks, torch's exceptions


def torch_error_inputs():
    inputs = common_optimizers.optim_error_inputs_func_adamax(device="cpu", dtype=torch.float32)
    assert len(inputs) >= 8  # torch's list, so that an empty one is noticed
    return [pytest.param(case, id=case.optimizer_error_input.desc) for case in inputs]


@pytest.mark.parametrize("case", torch_error_inputs())
def test_torch_error_inputs_give_torchs_exceptions(case):
    given = case.optimizer_error_input
    params = given.params
    if params is None:
        params = [nn.Parameter(torch.randn(2, 2))]

    def construct_and_step(kind):
        def run():
            opt = kind(params, **given.kwargs)
            if case.error_on == common_optimizers.OptimizerErrorEnum.STEP_ERROR:
                opt.step()

        return run

    ours = outcome(construct_and_step(Adamax))
    theirs = outcome(construct_and_step(torch.optim.Adamax))
    assert theirs is not None, "torch's case no longer fails"
    assert issubclass(theirs[0], case.error_type)
    assert ours == theirs


def bad_constructor_arguments():
    p = nn.Parameter(torch.randn(3))
    leafless = torch.randn(3, requires_grad=True) * 2
    return {
        "negative lr": ([p], {"lr": -1e-3}),
        "nan lr": ([p], {"lr": math.nan}),
        "negative tensor lr": ([p], {"lr": torch.tensor(-0.1)}),
        "two-element tensor lr": ([p], {"lr": torch.tensor([0.1, 0.2])}),
        "string lr": ([p], {"lr": "0.1"}),
        "negative eps": ([p], {"eps": -1e-8}),
        "beta1 negative": ([p], {"betas": (-0.1, 0.9)}),
        "beta1 one": ([p], {"betas": (1.0, 0.9)}),
        "beta2 one": ([p], {"betas": (0.9, 1.0)}),
        "beta2 nan": ([p], {"betas": (0.9, math.nan)}),
        "one beta": ([p], {"betas": (0.9,)}),
        "negative weight decay": ([p], {"weight_decay": -0.1}),
        "a bare tensor": (p, {}),
        "no parameters": ([], {}),
        "not a tensor": ([p, 3.0], {}),
        "a non-leaf tensor": ([leafless], {}),
        "duplicates across groups": ([{"params": [p]}, {"params": [p]}], {}),
        "duplicates in a group": ([p, p], {}),
        "a group without params": ([{"lr": 0.1}], {}),
        "a set of parameters in a group": ([{"params": {p}}], {}),
    }


@pytest.mark.parametrize("case", sorted(bad_constructor_arguments()))
def test_bad_constructor_arguments_give_torchs_exceptions(case):
    params, kwargs = bad_constructor_arguments()[case]
    ours = outcome(lambda: Adamax(params, **kwargs))
    theirs = outcome(lambda: torch.optim.Adamax(params, **kwargs))
    assert theirs is not None
    assert ours == theirs


def test_a_group_added_as_a_set_gives_torchs_exception():
    # torch refuses a set: its order, and so the state dict's, changes from run to run.
    def add_a_set(kind):
        def run():
            opt = kind([nn.Parameter(torch.randn(2))])
            opt.add_param_group({"params": {nn.Parameter(torch.randn(3))}})

        return run

    ours = outcome(add_a_set(Adamax))
    theirs = outcome(add_a_set(torch.optim.Adamax))
    assert theirs is not None and theirs[0] is TypeError
    assert ours == theirs


def test_foreach_is_accepted_and_kept_in_the_groups():
    for foreach in (None, False, True):
        opt = Adamax([nn.Parameter(torch.randn(3))], foreach=foreach)
        assert opt.param_groups[0]["foreach"] is foreach


def test_torch_tensors_given_to_the_numpy_front_end_point_to_the_torch_one():
    import adamax_rs
    import adamax_rs.functional

    model = nn.Linear(3, 2)
    with pytest.raises(
        TypeError, match=r"got Tensor; for torch tensors use adamax_rs\.torch\.Adamax"
    ):
        adamax_rs.Adamax(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"got Parameter; for torch tensors use adamax_rs\.torch"):
        adamax_rs.functional.new_state(model.weight)
    with pytest.raises(TypeError, match=r"got Parameter; for torch tensors use adamax_rs\.torch"):
        adamax_rs.functional.adamax(
            [model.weight],
            [model.weight.detach()],
            [torch.zeros(2, 3)],
            [torch.zeros(2, 3)],
            [1],
            lr=0.1,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
        )
    # Anything else gets no such hint.
    with pytest.raises(TypeError) as error:
        adamax_rs.functional.new_state([1.0])
    assert "torch" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# What adamax_rs refuses and torch does not


def cpu_param():
    return nn.Parameter(torch.randn(3, 2))


def meta_param():
    return nn.Parameter(torch.randn(3, 2, device="meta"))


REFUSED_AT_CONSTRUCTION = {
    "a parameter on meta": (lambda: [cpu_param(), meta_param()], {}, "on meta"),
    "differentiable": (lambda: [cpu_param()], {"differentiable": True}, "differentiable=True"),
    "capturable": (lambda: [cpu_param()], {"capturable": True}, "capturable=True"),
    "differentiable in a group": (
        lambda: [{"params": [cpu_param()]}, {"params": [cpu_param()], "differentiable": True}],
        {},
        "param group 1: differentiable=True",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_AT_CONSTRUCTION))
def test_what_adamax_rs_cannot_do_is_refused_at_construction(case):
    params, kwargs, message = REFUSED_AT_CONSTRUCTION[case]
    with pytest.raises(ValueError, match=message) as error:
        Adamax(params(), **kwargs)
    assert "torch.optim.Adamax" in str(error.value)  # says what to use instead
    assert torch.optim.Adamax(params(), **kwargs) is not None  # which accepts it


def test_the_device_is_named():
    with pytest.raises(ValueError) as error:
        Adamax([cpu_param(), meta_param()])
    assert str(error.value).startswith("param group 0, parameter 1 is on meta;")
    assert "CPU only" in str(error.value)


def test_unsupported_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="parameter 0 has dtype torch.int32"):
        Adamax([torch.zeros(3, dtype=torch.int32)])


def test_sparse_parameters_are_refused():
    sparse = torch.sparse_coo_tensor([[0, 2]], [1.0, 2.0], (4,), check_invariants=True)
    sparse.requires_grad_()
    with pytest.raises(ValueError, match="sparse parameters are not supported"):
        Adamax([sparse])


# ---------------------------------------------------------------------------------------------
# Refusals after construction change nothing


def snapshot(opt):
    params = [p for g in opt.param_groups for p in g["params"]]
    return {
        "params": [p.detach().clone() for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "state": {
            i: {k: copy.deepcopy(v) for k, v in opt.state[p].items()}
            for i, p in enumerate(params)
            if p in opt.state
        },
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
    }


def assert_unchanged(before, opt):
    after = snapshot(opt)
    assert len(after["params"]) == len(before["params"])
    for i, (a, b) in enumerate(zip(before["params"], after["params"])):
        if a.is_meta:  # no data to compare
            assert b.is_meta and a.shape == b.shape
        else:
            assert_same_bits(b, a, f"parameter {i}")
    assert before["state"].keys() == after["state"].keys()
    for i, state in before["state"].items():
        assert state.keys() == after["state"][i].keys()
        for key, value in state.items():
            if type(value) is not torch.Tensor and isinstance(value, torch.Tensor):
                assert type(after["state"][i][key]) is type(value)  # an impostor, left there
            elif isinstance(value, torch.Tensor):
                assert_same_bits(after["state"][i][key], value, f"parameter {i}, {key}")
            else:
                assert after["state"][i][key] == value


def trained(steps=3):
    """A model trained a few steps (every parameter has state) and fresh gradients."""
    model = make_mlp()
    opt = Adamax(model.parameters(), lr=0.01)
    for step in range(steps):
        opt.zero_grad()
        loss_of(model, step, torch.float32).backward()
        opt.step()
    opt.zero_grad()
    loss_of(model, steps, torch.float32).backward()
    return model, opt


def test_sparse_gradients_give_torchs_error_and_change_nothing():
    messages = []
    for kind in (Adamax, torch.optim.Adamax):
        torch.manual_seed(0)
        embedding = nn.Embedding(10, 4, sparse=True)
        dense = nn.Linear(4, 1)
        opt = kind([*dense.parameters(), *embedding.parameters()], lr=0.1)
        dense(embedding(torch.tensor([1, 5]))).sum().backward()
        before = snapshot(opt)
        with pytest.raises(RuntimeError) as error:
            opt.step()
        messages.append(str(error.value))
        if kind is Adamax:
            assert_unchanged(before, opt)  # the dense layer was not updated either
            assert not opt.state
    assert messages[0] == messages[1] == "Adamax does not support sparse gradients"


def breakages():
    """Ways to spoil a trained optimizer between steps: what to do, the exception expected,
    and the start of its message (which names the group and parameter)."""

    def reshape_last(model, opt):
        model[4].bias.data = torch.zeros(5)
        model[4].bias.grad = torch.ones(5)

    def retype_middle(model, opt):
        model[2].weight.data = model[2].weight.data.double()
        model[2].weight.grad = torch.ones_like(model[2].weight)

    def move_to_meta(model, opt):
        opt.param_groups[0]["params"][3] = meta_param()
        opt.param_groups[0]["params"][3].grad = torch.ones(3, 2, device="meta")

    def wrong_state_shape(model, opt):
        opt.state[model[2].bias]["exp_inf"] = torch.zeros(3)

    def wrong_state_dtype(model, opt):
        opt.state[model[2].bias]["exp_avg"] = opt.state[model[2].bias]["exp_avg"].double()

    def negative_step(model, opt):
        opt.state[model[4].weight]["step"] = torch.tensor(-1.0)

    def fractional_step(model, opt):
        opt.state[model[4].weight]["step"] = torch.tensor(2.5)

    def missing_state_key(model, opt):
        del opt.state[model[4].weight]["exp_inf"]

    def state_not_a_tensor(model, opt):
        opt.state[model[0].bias]["exp_avg"] = [0.0] * 32

    def state_that_only_claims_to_be_a_tensor(model, opt):
        # isinstance() believes __class__; torch's exchange function then read it as a tensor
        # and crashed. The step asks the object's real type.
        class Impostor:
            __class__ = torch.Tensor  # type: ignore[assignment]

        assert isinstance(Impostor(), torch.Tensor)
        opt.state[model[0].bias]["exp_inf"] = Impostor()

    def negative_lr(model, opt):
        opt.param_groups[0]["lr"] = -0.1

    def wide_tensor_lr(model, opt):
        opt.param_groups[0]["lr"] = torch.tensor([0.1, 0.2])

    def three_betas(model, opt):
        opt.param_groups[0]["betas"] = (0.9, 0.99, 0.999)

    def beta_of_one(model, opt):
        opt.param_groups[0]["betas"] = (1.0, 0.999)

    def differentiable_later(model, opt):
        opt.param_groups[0]["differentiable"] = True

    def capturable_later(model, opt):
        opt.param_groups[0]["capturable"] = True

    def grad_of_a_view_over_the_parameter(model, opt):
        # Two parameters over one buffer: the step would race with itself.
        opt.param_groups[0]["params"].append(model[0].weight.detach()[:2].requires_grad_())
        opt.param_groups[0]["params"][-1].grad = torch.ones(2, 6)
        opt.state[opt.param_groups[0]["params"][-1]] = {
            "step": torch.tensor(3.0),
            "exp_avg": torch.zeros(2, 6),
            "exp_inf": torch.zeros(2, 6),
        }

    # A step count is memory the step writes: one shared with anything else of the step would
    # be written over (or would write over it).
    def step_count_in_the_parameter(model, opt):
        model[2].bias.data[1] = 3.0  # a valid count, so only the sharing is wrong
        opt.state[model[2].bias]["step"] = model[2].bias.data[1:2]

    def step_count_in_the_gradient(model, opt):
        model[2].weight.grad[0, 0] = 3.0
        opt.state[model[2].weight]["step"] = model[2].weight.grad[0, 0]

    def step_count_in_another_parameters_state(model, opt):
        opt.state[model[4].bias]["exp_avg"][0] = 3.0
        opt.state[model[0].weight]["step"] = opt.state[model[4].bias]["exp_avg"][:1]

    def one_step_count_for_two_parameters(model, opt):
        opt.state[model[4].weight]["step"] = opt.state[model[4].bias]["step"]

    return {
        "step count in the parameter": (
            step_count_in_the_parameter,
            ValueError,
            "group 0, parameter 3: the parameter shares memory with state['step']",
        ),
        "step count in the gradient": (
            step_count_in_the_gradient,
            ValueError,
            "group 0, parameter 2: the gradient shares memory with state['step']",
        ),
        "step count in another parameter's state": (
            step_count_in_another_parameters_state,
            ValueError,
            "group 0, parameter 0: state['step'] shares memory with exp_avg of group 0, "
            "parameter 5",
        ),
        "one step count for two parameters": (
            one_step_count_for_two_parameters,
            ValueError,
            "group 0, parameter 4: state['step'] shares memory with state['step'] of group 0, "
            "parameter 5",
        ),
        "parameter reshaped": (reshape_last, ValueError, "group 0, parameter 5:"),
        "parameter retyped": (retype_middle, TypeError, "group 0, parameter 2:"),
        "parameter on meta": (move_to_meta, ValueError, "group 0, parameter 3 is on meta;"),
        "state of the wrong shape": (wrong_state_shape, ValueError, "group 0, parameter 3:"),
        "state of the wrong dtype": (wrong_state_dtype, TypeError, "group 0, parameter 3:"),
        "negative step count": (negative_step, ValueError, "group 0, parameter 4:"),
        "fractional step count": (fractional_step, ValueError, "group 0, parameter 4:"),
        "state without exp_inf": (missing_state_key, ValueError, "group 0, parameter 4:"),
        "state that is a list": (state_not_a_tensor, TypeError, "group 0, parameter 1:"),
        "state that claims to be a tensor": (
            state_that_only_claims_to_be_a_tensor,
            TypeError,
            "group 0, parameter 1: exp_inf must be a torch.Tensor",
        ),
        "negative lr": (negative_lr, ValueError, "group 0:"),
        "two-element tensor lr": (wide_tensor_lr, ValueError, "group 0:"),
        "three betas": (three_betas, ValueError, "group 0:"),
        "beta1 of one": (beta_of_one, ValueError, "group 0:"),
        "differentiable set later": (differentiable_later, ValueError, "group 0:"),
        "capturable set later": (capturable_later, ValueError, "group 0:"),
        "two parameters over one buffer": (
            grad_of_a_view_over_the_parameter,
            ValueError,
            "",
        ),
    }


@pytest.mark.parametrize("case", sorted(breakages()))
def test_a_refused_step_changes_nothing(case):
    breakage, error_type, start = breakages()[case]
    model, opt = trained()
    breakage(model, opt)
    before = snapshot(opt)
    with pytest.raises(error_type) as error:
        opt.step()
    assert str(error.value).startswith(start), str(error.value)
    assert_unchanged(before, opt)
    # Step counts too: none moved.
    for state in opt.state.values():
        if isinstance(state.get("step"), torch.Tensor) and state["step"].numel() == 1:
            assert state["step"].item() in (3.0, -1.0, 2.5)


@pytest.mark.parametrize("bad", [0, 2, 5])
def test_a_refused_first_step_creates_no_state(bad):
    """The first step creates the state of every parameter, then updates; a parameter refused
    on the way (here one on meta, first, in the middle or last) leaves no state behind."""
    model = make_mlp()
    opt = Adamax(model.parameters(), lr=0.01)
    loss_of(model, 0, torch.float32).backward()
    opt.param_groups[0]["params"][bad] = meta_param()
    opt.param_groups[0]["params"][bad].grad = torch.ones(3, 2, device="meta")
    before = snapshot(opt)
    with pytest.raises(ValueError, match=f"group 0, parameter {bad} is on meta"):
        opt.step()
    assert_unchanged(before, opt)
    assert not opt.state


def test_a_refused_add_param_group_changes_nothing():
    model, opt = trained()
    before = snapshot(opt)
    for group in (
        {"params": [meta_param()]},
        {"params": [cpu_param()], "capturable": True},
        {"params": [model[0].weight]},  # already in group 0
    ):
        with pytest.raises(ValueError):
            opt.add_param_group(group)
        assert len(opt.param_groups) == 1
        assert_unchanged(before, opt)


# ---------------------------------------------------------------------------------------------
# Tensors whose memory does not hold their values: torch's lazy conjugate and negative views


def lazy_views():
    def conj_grad_from_autograd():
        z = nn.Parameter(torch.randn(4, dtype=torch.complex64))
        c = torch.randn(4, dtype=torch.complex64)
        (z.conj() * c).real.sum().backward()
        assert z.grad.is_conj()  # autograd's own gradient is a lazy conjugate
        return z

    def neg_grad():
        p = nn.Parameter(torch.randn(4))
        p.grad = torch.randn(4)._neg_view()
        return p

    def neg_parameter():
        p = nn.Parameter(torch.randn(4)._neg_view())
        assert p.is_neg()
        p.grad = torch.randn(4)
        return p

    def conj_parameter():
        p = nn.Parameter(torch.randn(4, dtype=torch.complex64).conj())
        assert p.is_conj()
        p.grad = torch.randn(4, dtype=torch.complex64)
        return p

    return {
        "conjugate gradient from autograd": conj_grad_from_autograd,
        "negative-view gradient": neg_grad,
        "negative-view parameter": neg_parameter,
        "conjugate parameter": conj_parameter,
    }


@pytest.mark.parametrize("case", sorted(lazy_views()))
def test_lazy_conjugate_and_negative_views_are_resolved_or_refused(case):
    """A lazy gradient is only read: the step uses its resolved values, as torch does. A lazy
    parameter would be written through its raw memory: the step refuses it (ValueError naming
    the parameter and the bit), changing nothing."""
    torch.manual_seed(1)
    p = lazy_views()[case]()
    resolved = nn.Parameter(p.detach().resolve_conj().resolve_neg().clone())
    resolved.grad = p.grad.resolve_conj().resolve_neg().clone()
    grad_before = p.grad.resolve_conj().resolve_neg().clone()
    opt = Adamax([p], lr=0.1)
    reference = torch.optim.Adamax([resolved], lr=0.1)
    before = snapshot(opt)
    if case.endswith("parameter"):
        bit = "conjugate" if "conjugate" in case else "negative"
        with pytest.raises(ValueError, match=f"group 0, parameter 0: the parameter .*{bit} bit"):
            opt.step()
        assert_unchanged(before, opt)
        assert p not in opt.state
        return
    opt.step()
    reference.step()
    assert_same_bits(p.detach(), resolved, "parameter")
    assert_same_bits(opt.state[p]["exp_avg"], reference.state[resolved]["exp_avg"], "exp_avg")
    assert_same_bits(p.grad.resolve_conj().resolve_neg(), grad_before, "gradient (unchanged)")


@pytest.mark.parametrize("bit", ["negative", "conjugate"])
def test_a_subclass_that_hides_its_lazy_bit_is_still_refused(bit):
    # The step asks torch's own is_neg and is_conj (those of torch.Tensor's base, TensorBase),
    # not the tensor's methods: a subclass that overrides them cannot make the step write
    # through a lazy view.
    class HidesItsBits(nn.Parameter):
        def is_neg(self):
            return False

        def is_conj(self):
            return False

    if bit == "negative":
        p = HidesItsBits(torch.randn(4)._neg_view())
        p.grad = torch.randn(4)
    else:
        p = HidesItsBits(torch.randn(4, dtype=torch.complex64).conj())
        p.grad = torch.randn(4, dtype=torch.complex64)
    assert not p.is_neg() and not p.is_conj()
    base = torch.Tensor.__base__  # TensorBase (torch >= 2.2), _TensorBase before
    assert base.is_neg(p) or base.is_conj(p)
    opt = Adamax([p], lr=0.1)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=f"group 0, parameter 0: the parameter .*{bit} bit"):
        opt.step()
    assert_unchanged(before, opt)
    assert p not in opt.state


@pytest.mark.parametrize("key", ["exp_avg", "exp_inf"])
def test_lazy_views_put_in_the_state_are_refused(key):
    # The same memory as the state's own tensor, seen negated: its description is unchanged, so
    # only the bit tells.
    p = nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    opt = Adamax([p], lr=0.1)
    opt.step()
    opt.state[p][key] = opt.state[p][key]._neg_view()
    before = snapshot(opt)
    with pytest.raises(ValueError, match=f"group 0, parameter 0: {key} .*negative bit"):
        opt.step()
    assert_unchanged(before, opt)


def test_a_negated_step_count_is_refused():
    # Its memory holds minus the count: read as it is, the step would count from the wrong sign.
    p = nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    opt = Adamax([p], lr=0.1)
    opt.step()
    opt.state[p]["step"] = opt.state[p]["step"]._neg_view()
    before = snapshot(opt)
    with pytest.raises(ValueError, match="group 0, parameter 0: its state's 'step' .*negative bit"):
        opt.step()
    assert_unchanged(before, opt)


@pytest.mark.parametrize("through", ["a tensor subclass", "a torch function mode"])
def test_python_code_cannot_move_memory_the_step_has_read(through):
    # The step reads each tensor's memory, then asks it for its lazy bits (torch's is_neg). Were
    # torch function on, that question would run Python code (a subclass's __torch_function__, a
    # mode's) after the first parameter's memory was read. The code here, run by is_neg asked of
    # the second parameter's tensors, moves the first's exp_avg to new memory (keeping the old
    # alive, so that nothing crashes): the step would then update the old memory while the state
    # holds the new. The step must instead update the state the optimizer holds at the end, as
    # torch.optim.Adamax does.
    from torch.overrides import TorchFunctionMode

    moved: list[torch.Tensor] = []
    armed = [False]

    def move_first_exp_avg(func, args):
        # Asked of the second parameter or its state: the first's memory has been read.
        asked = args[0] if args else None
        seconds = (second, *opt.state[second].values())
        if armed[0] and func.__name__ == "is_neg" and any(asked is t for t in seconds):
            armed[0] = False
            exp_avg = opt.state[first]["exp_avg"]
            moved.append(exp_avg.detach().clone())  # the old memory stays alive in `old`
            old.append(torch.empty(0).set_(exp_avg.untyped_storage()))
            exp_avg.set_(moved[-1])

    class Hook(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            move_first_exp_avg(func, args)
            return super().__torch_function__(func, types, args, kwargs or {})

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            move_first_exp_avg(func, args)
            return func(*args, **(kwargs or {}))

    old: list[torch.Tensor] = []
    torch.manual_seed(0)
    first, second = nn.Parameter(torch.randn(64)), nn.Parameter(torch.randn(16))
    reference_params = [first.detach().clone(), second.detach().clone()]
    reference_params = [nn.Parameter(t) for t in reference_params]
    opt = Adamax([first, second], lr=0.1)
    reference = torch.optim.Adamax(reference_params, lr=0.1, foreach=False)
    for step in range(3):
        grads = [torch.randn(64), torch.randn(16)]
        for p, q, g in zip([first, second], reference_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 2:
            if through == "a tensor subclass":
                opt.state[second]["exp_inf"] = opt.state[second]["exp_inf"].as_subclass(Hook)
            armed[0] = True
            with Mode() if through == "a torch function mode" else contextlib.nullcontext():
                opt.step()
            armed[0] = False
        else:
            opt.step()
        reference.step()
    for p, q in zip([first, second], reference_params):
        assert_same_bits(p.detach(), q.detach(), "parameter")
        for key in ("exp_avg", "exp_inf", "step"):
            ours = opt.state[p][key].as_subclass(torch.Tensor)
            assert_same_bits(ours, reference.state[q][key], key)


@pytest.mark.parametrize("hook", ["grad property", "__hash__"])
def test_a_step_re_entered_from_inside_a_step_says_so(hook):
    # Python code that the step runs starts a step of the same optimizer: a RuntimeError that
    # says so, not pyo3's bare "Already borrowed", and nothing changed. The code is a parameter
    # subclass's `grad` property (the step reads every parameter's gradient), or its __hash__
    # (the step hashes a parameter to find its state when the state dict is not in the
    # parameters' order: here the group's order is reversed after the first step).
    holder: list[Adamax] = []

    def step_again():
        if holder:
            holder.pop().step()

    class HashStepsAgain(nn.Parameter):
        def __hash__(self):
            step_again()
            return id(self)

    if hook == "grad property":
        StepsAgain = parameter_class_with_grad_hook(step_again)
    else:
        StepsAgain = HashStepsAgain
    first = nn.Parameter(torch.ones(3))
    first.grad = torch.ones(3)
    second = StepsAgain(torch.ones(3))
    second.grad = torch.ones(3)
    opt = Adamax([first, second], lr=0.1)
    opt.step()
    opt.param_groups[0]["params"].reverse()
    before = snapshot(opt)  # (it looks the parameters up too: arm the hook after it)
    holder.append(opt)
    with pytest.raises(RuntimeError, match="a step of this optimizer is already running on this"):
        opt.step()
    assert_unchanged(before, opt)


@pytest.mark.parametrize("role", ["parameter", "gradient"])
def test_a_tensor_without_memory_of_its_own_is_refused(role):
    # Found by review: a wrapper subclass (torch's _make_wrapper_subclass, as tensor-subclass
    # libraries make them) has elements but data_ptr() 0, and DLPack still describes it. The
    # kernel read and wrote near address 0 (a crash).
    class Wrapper(torch.Tensor):
        @staticmethod
        def __new__(cls, elem):
            t = torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype)
            t.elem = elem
            return t

        @classmethod
        def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
            def unwrap(a):
                return a.elem if isinstance(a, Wrapper) else a

            kwargs = {k: unwrap(v) for k, v in (kwargs or {}).items()}
            return func(*map(unwrap, args), **kwargs)

    if role == "parameter":
        p = Wrapper(torch.zeros(4))
        p.grad = torch.ones(4)
    else:
        p = nn.Parameter(torch.zeros(4))
        p.grad = Wrapper(torch.ones(4))
    assert p.data_ptr() == 0 if role == "parameter" else p.grad.data_ptr() == 0
    opt = Adamax([p], lr=0.1)
    with pytest.raises(TypeError, match=f"group 0, parameter 0: the {role} has no memory"):
        opt.step()
    assert not opt.state
