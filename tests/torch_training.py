"""Helpers for the torch tests: bit-for-bit comparisons, a small model and its data.

Imported by tests/test_torch_*.py after they have checked that torch is installed.
"""

from __future__ import annotations

import copy

import torch

from adamax_rs.torch import Adamax

nn = torch.nn
#: Steps of each side-by-side training run.
STEPS = 60


def bits(tensor):
    """The tensor's values as integers of the same width: equal bits, equal integers (so that
    -0.0 differs from 0.0 and NaNs compare)."""
    t = tensor.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(ints)


def assert_same_bits(ours, reference, what):
    assert ours.dtype == reference.dtype, f"{what}: dtype {ours.dtype} != {reference.dtype}"
    assert ours.shape == reference.shape, f"{what}: shape"
    if not torch.equal(bits(ours), bits(reference)):
        worst = (ours.detach() - reference.detach()).abs().max().item()
        raise AssertionError(f"{what}: not bit for bit equal (largest difference {worst:g})")


def assert_same_training(ours_opt, ref_opt, step):
    """Every parameter and every state tensor of the two optimizers, bit for bit."""
    ours_params = [p for g in ours_opt.param_groups for p in g["params"]]
    ref_params = [p for g in ref_opt.param_groups for p in g["params"]]
    assert len(ours_params) == len(ref_params)
    for i, (p, q) in enumerate(zip(ours_params, ref_params)):
        assert_same_bits(p, q, f"step {step}, parameter {i}")
        assert (p in ours_opt.state) == (q in ref_opt.state), f"step {step}, parameter {i}: state"
        if q not in ref_opt.state:
            continue
        mine, theirs = ours_opt.state[p], ref_opt.state[q]
        assert sorted(mine) == sorted(theirs) == ["exp_avg", "exp_inf", "step"]
        for key in ("step", "exp_avg", "exp_inf"):
            assert_same_bits(mine[key], theirs[key], f"step {step}, parameter {i}, {key}")


class UpcastLinear(nn.Linear):
    """A linear layer computed in float32 from 16-bit parameters. (torch's bfloat16 matrix
    product dies on an illegal instruction on some CPUs; the gradients are 16-bit all the same.)
    """

    def forward(self, x):
        return nn.functional.linear(x.float(), self.weight.float(), self.bias.float())


def parameter_class_with_grad_hook(hook):
    """An ``nn.Parameter`` subclass whose ``grad`` property calls ``hook()`` and then reads the
    gradient as torch does (through ``torch.Tensor``'s base type): Python code that a step runs
    when it reads a parameter's gradient."""
    base = torch.Tensor.__base__  # TensorBase (torch >= 2.2), _TensorBase before

    class GradHooked(nn.Parameter):
        @property
        def grad(self):
            hook()
            return base.grad.__get__(self)

        @grad.setter
        def grad(self, value):
            base.grad.__set__(self, value)

    return GradHooked


def make_mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    linear = UpcastLinear if dtype in (torch.float16, torch.bfloat16) else nn.Linear
    return nn.Sequential(linear(6, 32), nn.Tanh(), linear(32, 16), nn.GELU(), linear(16, 3)).to(
        dtype
    )


def batch(step, dtype=torch.float32, size=24):
    """A regression batch that depends only on the step number."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, 6, generator=generator, dtype=torch.float64)
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2]), x[:, 3:].sum(1)], dim=1)
    # Now and then an outlier, so that exp_inf meets large gradients too.
    if step % 7 == 3:
        x[0] *= 40
    return x.to(dtype), y.to(dtype)


def loss_of(model, step, dtype):
    x, y = batch(step, dtype)
    return nn.functional.mse_loss(model(x).to(dtype), y)


def train_side_by_side(
    model,
    ours_groups,
    ref_groups,
    *,
    ours_kwargs,
    ref_kwargs,
    dtype,
    steps=STEPS,
    after_backward=None,
    schedulers=None,
):
    """Train ``model`` (ours) and a deep copy (reference) for ``steps`` steps; compare every
    step. ``ours_groups``/``ref_groups`` map a model to its parameters or parameter groups."""
    ref_model = copy.deepcopy(model)
    ours = Adamax(ours_groups(model), **ours_kwargs)
    ref = torch.optim.Adamax(ref_groups(ref_model), **ref_kwargs)
    scheds = schedulers(ours, ref) if schedulers else None
    for step in range(steps):
        for m, opt in ((model, ours), (ref_model, ref)):
            opt.zero_grad()
            loss_of(m, step, dtype).backward()
            if after_backward is not None:
                after_backward(m, step)
            opt.step()
        if scheds is not None:
            for s in scheds:
                s.step()
        assert_same_training(ours, ref, step)
    return ours, ref


def all_params(model):
    return model.parameters()
