"""Learning-rate schedules: closed forms computed here, and torch's own where installed."""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
import pytest

from adamax_rs import Adamax, Parameter
from adamax_rs import lr_scheduler as S

EPOCHS = 25
BASES = (0.1, 0.02)


def make_optimizer():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    return Adamax([{"params": [a]}, {"params": [b], "lr": BASES[1]}], lr=BASES[0])


def lrs(opt, make_scheduler, epochs=EPOCHS, metrics=None):
    """The learning rate of each group at epochs 0..epochs-1, and beta1 alongside."""
    sched = make_scheduler(opt)
    seen, betas = [], []
    for epoch in range(epochs):
        seen.append([g["lr"] for g in opt.param_groups])
        betas.append([g["beta1"] for g in opt.param_groups])
        assert sched.get_last_lr() == seen[-1]
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[epoch])
    return np.array(seen), np.array(betas)


def expect(closed_form):
    return np.array([[closed_form(base, e) for base in BASES] for e in range(EPOCHS)])


def restarts(e, t0, mult):
    """(T_cur, T_i) of cosine annealing with warm restarts at integer epoch e."""
    t_i, t_cur = t0, e
    while t_cur >= t_i:
        t_cur -= t_i
        t_i *= mult
    return t_cur, t_i


def triangle(e, up):
    cycle = math.floor(1 + e / (2 * up))
    x = abs(e / up - 2 * cycle + 1)
    return max(0.0, 1 - x)


CASES = {
    "LambdaLR": (lambda o: S.LambdaLR(o, lambda e: 1 / (e + 1)), lambda b, e: b / (e + 1)),
    "MultiplicativeLR": (lambda o: S.MultiplicativeLR(o, lambda e: 0.95), lambda b, e: b * 0.95**e),
    "StepLR": (lambda o: S.StepLR(o, step_size=3, gamma=0.5), lambda b, e: b * 0.5 ** (e // 3)),
    "MultiStepLR": (
        lambda o: S.MultiStepLR(o, milestones=[2, 5, 5], gamma=0.1),
        lambda b, e: b * 0.1 ** bisect_right([2, 5, 5], e),
    ),
    "ConstantLR": (
        lambda o: S.ConstantLR(o, factor=0.5, total_iters=4),
        lambda b, e: b * (0.5 if e < 4 else 1.0),
    ),
    "LinearLR": (
        lambda o: S.LinearLR(o, start_factor=0.25, total_iters=4),
        lambda b, e: b * (0.25 + 0.75 * min(e, 4) / 4),
    ),
    "ExponentialLR": (lambda o: S.ExponentialLR(o, gamma=0.9), lambda b, e: b * 0.9**e),
    "PolynomialLR": (
        lambda o: S.PolynomialLR(o, total_iters=6, power=2.0),
        lambda b, e: b * (1 - min(e, 6) / 6) ** 2,
    ),
    "CosineAnnealingLR": (
        lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
        lambda b, e: 0.001 + (b - 0.001) * (1 + math.cos(math.pi * e / 10)) / 2,
    ),
    "CosineAnnealingWarmRestarts": (
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.0),
        lambda b, e: b * (1 + math.cos(math.pi * restarts(e, 3, 2)[0] / restarts(e, 3, 2)[1])) / 2,
    ),
    "CyclicLR": (
        lambda o: S.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=4),
        lambda b, e: 0.001 + (0.01 - 0.001) * triangle(e, 4),
    ),
    "SequentialLR": (
        lambda o: S.SequentialLR(
            o, [S.ConstantLR(o, factor=0.1, total_iters=2), S.ExponentialLR(o, gamma=0.9)], [2]
        ),
        lambda b, e: b * 0.1 if e < 2 else b * 0.9 ** (e - 2),
    ),
    "ChainedScheduler": (
        lambda o: S.ChainedScheduler(
            [S.ConstantLR(o, factor=0.1, total_iters=3), S.ExponentialLR(o, gamma=0.9)]
        ),
        lambda b, e: b * 0.9**e * (0.1 if e < 3 else 1.0),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_schedule_matches_closed_form(name):
    make, closed_form = CASES[name]
    got, _ = lrs(make_optimizer(), make)
    want = np.array([[closed_form(b, e) for b in BASES] for e in range(EPOCHS)])
    if name == "CyclicLR":  # one base_lr for both groups
        want = np.array([[closed_form(None, e)] * 2 for e in range(EPOCHS)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_cyclic_lr_moves_beta1_against_the_rate():
    _, betas = lrs(make_optimizer(), CASES["CyclicLR"][0])
    want = [0.9 - (0.9 - 0.8) * triangle(e, 4) for e in range(EPOCHS)]
    np.testing.assert_allclose(betas[:, 0], want, rtol=1e-12)


def test_one_cycle_lr_phases():
    total, peak = 20, 0.01
    got, betas = lrs(
        make_optimizer(), lambda o: S.OneCycleLR(o, max_lr=peak, total_steps=total), total
    )
    start, end_warm = peak / 25, 0.3 * total - 1
    low = start / 1e4

    def cos(a, b, pct):
        return b + (a - b) / 2 * (math.cos(math.pi * pct) + 1)

    want = [
        cos(start, peak, e / end_warm)
        if e <= end_warm
        else cos(peak, low, (e - end_warm) / (total - 1 - end_warm))
        for e in range(total)
    ]
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-12)
    assert betas[0, 0] == pytest.approx(0.95) and min(betas[:, 0]) == pytest.approx(0.85)


def test_reduce_lr_on_plateau():
    opt = make_optimizer()
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    got, _ = lrs(
        opt,
        lambda o: S.ReduceLROnPlateau(o, patience=2, factor=0.5, cooldown=1),
        len(metrics),
        metrics,
    )
    # Bad epochs after the 0.9: 2, 3, 4 -> the third exceeds patience at epoch 4, then one
    # cooldown epoch; 0.8 is an improvement at epoch 5; again cut when epoch 8 is the 3rd bad.
    cuts = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(got[:, 0], [BASES[0] * 0.5**c for c in cuts])


def test_schedulers_write_initial_lr_and_accept_state_dicts():
    opt = make_optimizer()
    sched = S.StepLR(opt, step_size=2)
    assert [g["initial_lr"] for g in opt.param_groups] == list(BASES)
    for _ in range(3):
        sched.step()
    saved = sched.state_dict()
    assert "optimizer" not in saved and saved["last_epoch"] == 3
    other = S.StepLR(make_optimizer(), step_size=2)
    other.load_state_dict(saved)
    assert other.last_epoch == 3 and other.get_last_lr() == sched.get_last_lr()


def test_scheduler_refuses_a_non_optimizer():
    with pytest.raises(TypeError, match="adamax_rs.Optimizer"):
        S.StepLR(object(), step_size=1)


def test_scheduled_lr_reaches_the_step():
    p = Parameter(np.zeros(1))
    opt = Adamax([p], lr=1.0)
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(3):
        p.grad = np.ones(1)
        before = p.data.copy()
        opt.step()
        moves.append(float(before[0] - p.data[0]))
        sched.step()
    # With a constant gradient every Adamax step moves by the learning rate (to ~1e-8).
    np.testing.assert_allclose(moves, [1.0, 0.5, 0.25], rtol=1e-6)


TORCH_CASES = {
    "LambdaLR": ("LambdaLR", {"lr_lambda": lambda e: 1 / (e + 1)}),
    "MultiplicativeLR": ("MultiplicativeLR", {"lr_lambda": lambda e: 0.95}),
    "StepLR": ("StepLR", {"step_size": 3, "gamma": 0.5}),
    "MultiStepLR": ("MultiStepLR", {"milestones": [2, 5, 5], "gamma": 0.1}),
    "ConstantLR": ("ConstantLR", {"factor": 0.5, "total_iters": 4}),
    "LinearLR": ("LinearLR", {"start_factor": 0.25, "total_iters": 4}),
    "ExponentialLR": ("ExponentialLR", {"gamma": 0.9}),
    "PolynomialLR": ("PolynomialLR", {"total_iters": 6, "power": 2.0}),
    "CosineAnnealingLR": ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.001}),
    "CosineAnnealingWarmRestarts": ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2}),
    "CyclicLR": (
        "CyclicLR",
        {"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 3, "mode": "triangular2"},
    ),
    "CyclicLR-exp": (
        "CyclicLR",
        {"base_lr": 0.001, "max_lr": 0.01, "step_size_up": 3, "mode": "exp_range", "gamma": 0.9},
    ),
    "OneCycleLR": ("OneCycleLR", {"max_lr": 0.01, "total_steps": 25}),
    "OneCycleLR-3": (
        "OneCycleLR",
        {
            "max_lr": [0.01, 0.02],
            "total_steps": 25,
            "three_phase": True,
            "anneal_strategy": "linear",
        },
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_schedule_matches_torch(name):
    torch = pytest.importorskip("torch")
    cls, kwargs = TORCH_CASES[name]
    tp = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    topt = torch.optim.Adamax(
        [{"params": [tp[0]]}, {"params": [tp[1]], "lr": BASES[1]}], lr=BASES[0]
    )
    tsched = getattr(torch.optim.lr_scheduler, cls)(topt, **kwargs)
    opt = make_optimizer()
    sched = getattr(S, cls)(opt, **kwargs)
    for _ in range(EPOCHS):
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-12, abs=1e-15)
        assert [g["beta1"] for g in opt.param_groups] == pytest.approx(
            [g["betas"][0] for g in topt.param_groups], rel=1e-12
        )
        topt.step()
        tsched.step()
        sched.step()


def test_sequential_and_plateau_match_torch():
    torch = pytest.importorskip("torch")
    tp = [torch.nn.Parameter(torch.zeros(2))]
    topt = torch.optim.Adamax(tp, lr=0.1)
    tl = torch.optim.lr_scheduler
    tseq = tl.SequentialLR(
        topt, [tl.LinearLR(topt, 0.1, total_iters=3), tl.CosineAnnealingLR(topt, 8)], [3]
    )
    opt = Adamax([Parameter(np.zeros(2))], lr=0.1)
    seq = S.SequentialLR(
        opt, [S.LinearLR(opt, 0.1, total_iters=3), S.CosineAnnealingLR(opt, 8)], [3]
    )
    for _ in range(EPOCHS):
        assert seq.get_last_lr() == pytest.approx(tseq.get_last_lr(), rel=1e-12)
        topt.step()
        tseq.step()
        seq.step()
    topt2 = torch.optim.Adamax(tp, lr=0.1)
    opt2 = Adamax([Parameter(np.zeros(2))], lr=0.1)
    tplat = tl.ReduceLROnPlateau(
        topt2, patience=1, factor=0.3, threshold_mode="abs", threshold=0.05
    )
    plat = S.ReduceLROnPlateau(opt2, patience=1, factor=0.3, threshold_mode="abs", threshold=0.05)
    for metric in [1.0, 0.97, 0.96, 0.9, 0.9, 0.89, 0.5, 0.5, 0.5, 0.5]:
        tplat.step(metric)
        plat.step(metric)
        assert plat.get_last_lr() == pytest.approx(tplat.get_last_lr(), rel=1e-12)
