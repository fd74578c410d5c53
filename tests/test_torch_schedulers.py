"""Every torch.optim.lr_scheduler class drives adamax_rs.torch.Adamax as it drives torch's.

For each class in ``torch.optim.lr_scheduler.__all__`` the same schedule runs on
``torch.optim.Adamax`` and on ``adamax_rs.torch.Adamax`` while both train a copy of one model
with real ``backward()``; parameters, state, learning rates and betas must be equal bit for bit
after every step. A class torch adds later and this file does not know fails the test that
lists them.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from torch_training import (  # noqa: E402
    STEPS,
    assert_same_training,
    loss_of,
    make_mlp,
)

from adamax_rs.torch import Adamax  # noqa: E402

L = torch.optim.lr_scheduler


class WarmupThenHalf(L.LRScheduler):
    """A user's own subclass of the base class: linear warm-up, then half the base lr."""

    def get_lr(self):
        epoch = self.last_epoch
        if epoch < 10:
            return [base * (epoch + 1) / 10 for base in self.base_lrs]
        return [base / 2 for base in self.base_lrs]


def chained(opt):
    return L.ChainedScheduler([L.ExponentialLR(opt, 0.97), L.StepLR(opt, 9, 0.5)], optimizer=opt)


def sequential(opt):
    return L.SequentialLR(
        opt,
        [L.LinearLR(opt, 0.1, total_iters=8), L.CosineAnnealingLR(opt, T_max=STEPS - 8)],
        milestones=[8],
    )


#: Each class with the arguments of one or more schedules: name -> (build, how to step).
#: ``step`` is "step", "metric" (ReduceLROnPlateau gets the loss) or "fraction" (an epoch
#: with a fraction, which CosineAnnealingWarmRestarts accepts).
SCHEDULES = {
    "LambdaLR": [(lambda o: L.LambdaLR(o, [lambda e: 0.95**e, lambda e: 1 / (1 + e)]), "step")],
    "MultiplicativeLR": [(lambda o: L.MultiplicativeLR(o, lambda e: 0.96), "step")],
    "StepLR": [(lambda o: L.StepLR(o, step_size=7, gamma=0.5), "step")],
    "MultiStepLR": [(lambda o: L.MultiStepLR(o, milestones=[5, 20, 41], gamma=0.3), "step")],
    "ConstantLR": [(lambda o: L.ConstantLR(o, factor=0.25, total_iters=15), "step")],
    "LinearLR": [(lambda o: L.LinearLR(o, 0.05, 1.0, total_iters=30), "step")],
    "ExponentialLR": [(lambda o: L.ExponentialLR(o, gamma=0.93), "step")],
    "SequentialLR": [(sequential, "step")],
    "CosineAnnealingLR": [(lambda o: L.CosineAnnealingLR(o, T_max=25, eta_min=1e-4), "step")],
    "ChainedScheduler": [(chained, "step")],
    "ReduceLROnPlateau": [
        (lambda o: L.ReduceLROnPlateau(o, factor=0.5, patience=1, threshold=0.05), "metric"),
        (lambda o: L.ReduceLROnPlateau(o, "max", factor=0.7, patience=0, cooldown=2), "metric"),
    ],
    "CyclicLR": [
        # cycle_momentum=True cycles beta1 (Adamax has betas, not momentum).
        (lambda o: L.CyclicLR(o, 1e-3, 0.05, step_size_up=7, cycle_momentum=True), "step"),
        (
            lambda o: L.CyclicLR(
                o,
                [1e-3, 2e-3],
                [0.03, 0.06],
                step_size_up=5,
                step_size_down=9,
                mode="triangular2",
                base_momentum=0.6,
                max_momentum=0.95,
            ),
            "step",
        ),
        (
            lambda o: L.CyclicLR(
                o,
                1e-3,
                0.04,
                step_size_up=6,
                mode="exp_range",
                gamma=0.97,
                cycle_momentum=False,
            ),
            "step",
        ),
    ],  # fmt: skip
    "CosineAnnealingWarmRestarts": [
        (lambda o: L.CosineAnnealingWarmRestarts(o, T_0=6, T_mult=2, eta_min=1e-4), "step"),
        (lambda o: L.CosineAnnealingWarmRestarts(o, T_0=5), "fraction"),
    ],
    "OneCycleLR": [
        (lambda o: L.OneCycleLR(o, max_lr=[0.05, 0.08], total_steps=STEPS), "step"),
        (
            lambda o: L.OneCycleLR(
                o,
                max_lr=0.04,
                total_steps=STEPS,
                three_phase=True,
                anneal_strategy="linear",
                base_momentum=0.7,
                max_momentum=0.93,
            ),
            "step",
        ),
    ],  # fmt: skip
    "PolynomialLR": [(lambda o: L.PolynomialLR(o, total_iters=40, power=2.0), "step")],
    "LRScheduler": [(WarmupThenHalf, "step")],
}

CASES = [
    pytest.param(name, index, id=f"{name}-{index}")
    for name, schedules in sorted(SCHEDULES.items())
    for index in range(len(schedules))
]


def test_every_scheduler_class_of_torch_is_covered():
    assert set(SCHEDULES) == set(L.__all__)


def two_groups(model):
    first, _, second, _, third = model
    return [
        {"params": [*first.parameters(), *second.parameters()]},
        {"params": third.parameters(), "lr": 0.02, "betas": (0.8, 0.99)},
    ]


def hyperparameters(opt):
    return [(float(g["lr"]), tuple(float(b) for b in g["betas"])) for g in opt.param_groups]


@pytest.mark.parametrize("name, index", CASES)
def test_schedule_trains_as_with_torch(name, index):
    """torch's default path on the CPU (the for-loop) is the reference here; the foreach path is
    compared in test_torch_parity.py."""
    build, how = SCHEDULES[name][index]
    model = make_mlp()
    ref_model = make_mlp()
    ours = Adamax(two_groups(model), lr=0.01)
    ref = torch.optim.Adamax(two_groups(ref_model), lr=0.01, foreach=False)
    ours_schedule, ref_schedule = build(ours), build(ref)
    seen = set()
    for step in range(STEPS):
        losses = []
        for m, opt in ((model, ours), (ref_model, ref)):
            opt.zero_grad()
            loss = loss_of(m, step, torch.float32)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == losses[1]
        for schedule in (ours_schedule, ref_schedule):
            if how == "metric":
                schedule.step(losses[0] if step % 4 else math.inf)
            elif how == "fraction":
                schedule.step(step * 0.7)
            else:
                schedule.step()
        assert hyperparameters(ours) == hyperparameters(ref), f"step {step}"
        assert_same_training(ours, ref, step)
        seen.add(tuple(hyperparameters(ours)))
    assert len(seen) > 1, "the schedule never changed anything"
    if getattr(ref_schedule, "cycle_momentum", False):
        assert len({betas[0] for lr_betas in seen for _, betas in lr_betas}) > 2, "no cycling"


def test_schedule_on_a_tensor_lr_fills_it_in_place():
    """Schedulers write a tensor lr with ``fill_``; the optimizer reads it at every step."""
    model, ref_model = make_mlp(), make_mlp()
    lr = torch.tensor(0.02, dtype=torch.float64)
    ours = Adamax(model.parameters(), lr=lr.clone())
    ref = torch.optim.Adamax(ref_model.parameters(), lr=lr.clone(), foreach=False)
    schedules = [L.StepLR(o, step_size=5, gamma=0.5) for o in (ours, ref)]
    tensor = ours.param_groups[0]["lr"]
    for step in range(30):
        for m, opt in ((model, ours), (ref_model, ref)):
            opt.zero_grad()
            loss_of(m, step, torch.float32).backward()
            opt.step()
        for schedule in schedules:
            schedule.step()
        assert_same_training(ours, ref, step)
    assert ours.param_groups[0]["lr"] is tensor
    assert tensor.item() == 0.02 * 0.5**6
