"""Every scheduler resumes exactly from its state dict, saved through JSON at any step.

The reference is the same schedule run without a break: after a save at step k, a load into a
freshly built optimizer and scheduler, and the remaining steps, every learning rate and every
beta1 must equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from typing import Any, Callable

import numpy as np
import pytest

from adamax_rs import Adamax, Parameter
from adamax_rs import lr_scheduler as S

STEPS = 40
# A metric for ReduceLROnPlateau: improvements, plateaus and a rise, one value per step.
METRICS = [
    1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8,
    0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.4,
    0.4, 0.4, 0.3, 0.35, 0.35, 0.35, 0.35, 0.35, 0.2, 0.2,
    0.2, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1,
]  # fmt: skip


def make_optimizer() -> Adamax:
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    return Adamax([{"params": [a]}, {"params": [b], "lr": 0.02, "beta1": 0.85}], lr=0.1)


def warm_then_cosine(o: Adamax) -> S.SequentialLR:
    return S.SequentialLR(
        o,
        [
            S.LinearLR(o, start_factor=0.1, total_iters=5),
            S.StepLR(o, step_size=3, gamma=0.7),
            S.CosineAnnealingLR(o, T_max=9, eta_min=0.001),
        ],
        milestones=[5, 14],
    )


def chain(o: Adamax) -> S.ChainedScheduler:
    return S.ChainedScheduler(
        [
            S.ConstantLR(o, factor=0.5, total_iters=6),
            S.ExponentialLR(o, gamma=0.95),
            S.MultiStepLR(o, milestones=[4, 11, 11, 30], gamma=0.6),
        ]
    )


# name -> a function of the optimizer that builds the scheduler (the same one every time).
CASES: dict[str, Callable[[Adamax], Any]] = {
    "LambdaLR": lambda o: S.LambdaLR(o, [lambda e: 1 / (e + 1), lambda e: 0.97**e]),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda e: 0.9 if e % 3 else 1.05),
    "StepLR": lambda o: S.StepLR(o, step_size=7, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[3, 7, 7, 20], gamma=0.3),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.4, total_iters=6),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.25, end_factor=0.9, total_iters=10),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.93),
    # Arguments given as numpy scalars come back as numpy scalars (float32 arithmetic).
    "ExponentialLR-numpy": lambda o: S.ExponentialLR(o, gamma=np.float32(0.93)),
    "MultiStepLR-numpy": lambda o: S.MultiStepLR(
        o, milestones=np.array([3, 9, 9]), gamma=np.float32(0.7)
    ),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=25, power=1.5),
    # T_max well below STEPS: the chained form goes through its "past the period" branch.
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=12, eta_min=0.001),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
    "CosineAnnealingWarmRestarts-mult1": lambda o: S.CosineAnnealingWarmRestarts(
        o, T_0=5, eta_min=0.002
    ),
    "CyclicLR-triangular": lambda o: S.CyclicLR(
        o, base_lr=0.001, max_lr=[0.01, 0.02], step_size_up=4, step_size_down=3
    ),
    "CyclicLR-triangular2": lambda o: S.CyclicLR(
        o, base_lr=0.001, max_lr=0.01, step_size_up=3, mode="triangular2"
    ),
    "CyclicLR-exp_range": lambda o: S.CyclicLR(
        o,
        base_lr=[0.001, 0.002],
        max_lr=0.01,
        step_size_up=5,
        mode="exp_range",
        gamma=0.97,
        base_momentum=[0.7, 0.75],
        max_momentum=0.9,
    ),
    "CyclicLR-scale_fn": lambda o: S.CyclicLR(
        o,
        base_lr=0.001,
        max_lr=0.01,
        step_size_up=3,
        scale_fn=lambda x: 1 / (1 + 0.1 * x),
        scale_mode="iterations",
    ),
    "CyclicLR-no-momentum": lambda o: S.CyclicLR(
        o, base_lr=0.001, max_lr=0.01, step_size_up=4, cycle_momentum=False
    ),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=0.01, total_steps=STEPS),
    "OneCycleLR-three_phase": lambda o: S.OneCycleLR(
        o,
        max_lr=[0.01, 0.03],
        total_steps=STEPS + 5,
        three_phase=True,
        anneal_strategy="linear",
    ),
    "SequentialLR": warm_then_cosine,
    "ChainedScheduler": chain,
    "ChainedScheduler-of-SequentialLR": lambda o: S.ChainedScheduler(
        [warm_then_cosine(o), S.ExponentialLR(o, gamma=0.98)]
    ),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, patience=2, factor=0.5, cooldown=1),
    "ReduceLROnPlateau-max-abs": lambda o: S.ReduceLROnPlateau(
        o, mode="max", patience=1, factor=0.7, threshold=0.05, threshold_mode="abs", min_lr=0.03
    ),
}


def step(scheduler: Any, index: int) -> None:
    if isinstance(scheduler, S.ReduceLROnPlateau):
        # For mode="max" the metric rises where the one for "min" falls.
        metric = METRICS[index] if scheduler.mode == "min" else -METRICS[index]
        scheduler.step(metric)
    else:
        scheduler.step()


def rates(optimizer: Adamax, scheduler: Any) -> tuple[list[float], list[float], list[float]]:
    """Each group's lr and beta1, and what the scheduler says it set."""
    groups = optimizer.param_groups
    return [g["lr"] for g in groups], [g["beta1"] for g in groups], list(scheduler.get_last_lr())


def through_json(state: Any) -> Any:
    """``state`` as a checkpoint would store it: strict JSON (no NaN or infinity)."""
    return json.loads(json.dumps(state, allow_nan=False))


def assert_json_values(value: Any, where: str = "state_dict()") -> None:
    """Only dicts with str keys, lists, str, int, finite float, bool and None."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{where} has the non-str key {key!r}"
            assert_json_values(item, f"{where}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_json_values(item, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} is {value}, not a JSON number"
    else:
        assert value is None or type(value) in (str, int, bool), (
            f"{where} is a {type(value).__name__}, not a JSON value"
        )


def uninterrupted(make: Callable[[Adamax], Any]) -> list[tuple[list[float], ...]]:
    optimizer = make_optimizer()
    scheduler = make(optimizer)
    seen = [rates(optimizer, scheduler)]
    for i in range(STEPS):
        step(scheduler, i)
        seen.append(rates(optimizer, scheduler))
    return seen


def test_every_scheduler_has_a_case():
    classes = {name.split("-")[0] for name in CASES}
    assert classes == set(S.__all__) - {"LRScheduler"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_at_every_step_matches_the_uninterrupted_run(name):
    make = CASES[name]
    want = uninterrupted(make)
    assert len({repr(w[0]) for w in want}) > 1, "the case should move the rate"
    for k in range(STEPS + 1):
        optimizer = make_optimizer()
        scheduler = make(optimizer)
        for i in range(k):
            step(scheduler, i)
        saved_optimizer = copy.deepcopy(optimizer.state_dict())
        saved = scheduler.state_dict()
        assert_json_values(saved)
        saved = through_json(saved)
        del optimizer, scheduler

        # As a training script resumes: build both afresh, then load both.
        optimizer = make_optimizer()
        scheduler = make(optimizer)
        optimizer.load_state_dict(saved_optimizer)
        scheduler.load_state_dict(saved)
        assert rates(optimizer, scheduler) == want[k], f"{name}: right after loading at step {k}"
        for i in range(k, STEPS):
            step(scheduler, i)
            assert rates(optimizer, scheduler) == want[i + 1], (
                f"{name}: saved at step {k}, wrong at step {i + 1}"
            )


@pytest.mark.parametrize("name", ["SequentialLR", "ChainedScheduler", "MultiStepLR"])
def test_state_dict_is_a_snapshot(name):
    """Later steps do not change a state dict already taken."""
    scheduler = CASES[name](make_optimizer())
    for i in range(8):
        step(scheduler, i)
    saved = scheduler.state_dict()
    frozen = json.dumps(saved, sort_keys=True)
    for i in range(8, 20):
        step(scheduler, i)
    assert json.dumps(saved, sort_keys=True) == frozen


def test_nested_schedulers_save_their_inner_schedulers():
    optimizer = make_optimizer()
    sequential = warm_then_cosine(optimizer)
    for i in range(16):
        step(sequential, i)
    saved = sequential.state_dict()
    inner = [s.state_dict() for s in sequential._schedulers]
    assert saved["_schedulers"] == inner
    # Milestones 5 and 14: epochs 1-4 step the first, 6-13 the second, 15-16 the third.
    assert [s["last_epoch"] for s in inner] == [4, 8, 2]


def test_load_refuses_a_state_of_another_scheduler_and_changes_nothing():
    optimizer = make_optimizer()
    cosine = S.CosineAnnealingLR(optimizer, T_max=10)
    step_lr = S.StepLR(make_optimizer(), step_size=2)
    for _ in range(3):
        cosine.step()
        step_lr.step()
    before = json.dumps(cosine.state_dict(), sort_keys=True)
    with pytest.raises(ValueError, match="step_size"):
        cosine.load_state_dict(step_lr.state_dict())
    with pytest.raises(TypeError, match="dict"):
        cosine.load_state_dict([("last_epoch", 3)])  # type: ignore[arg-type]
    assert json.dumps(cosine.state_dict(), sort_keys=True) == before


def test_sequential_load_is_all_or_nothing():
    """A bad inner state leaves every inner scheduler and the outer one as they were."""
    optimizer = make_optimizer()
    sequential = warm_then_cosine(optimizer)
    for i in range(7):
        step(sequential, i)
    other = warm_then_cosine(make_optimizer())
    for i in range(20):
        step(other, i)
    bad = through_json(other.state_dict())
    bad["_schedulers"][2] = {"last_epoch": 3}
    before = json.dumps(sequential.state_dict(), sort_keys=True)
    with pytest.raises(ValueError, match="CosineAnnealingLR"):
        sequential.load_state_dict(bad)
    assert json.dumps(sequential.state_dict(), sort_keys=True) == before
    bad["_schedulers"] = bad["_schedulers"][:2]
    with pytest.raises(ValueError, match="has 2 schedulers, this one has 3"):
        sequential.load_state_dict(bad)
    assert json.dumps(sequential.state_dict(), sort_keys=True) == before


def test_resumed_schedules_match_torch():
    """The uninterrupted runs themselves follow torch (nested ones included)."""
    torch = pytest.importorskip("torch")
    tl = torch.optim.lr_scheduler

    def torch_optimizer():
        tp = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
        return torch.optim.Adamax(
            [{"params": [tp[0]]}, {"params": [tp[1]], "lr": 0.02, "betas": (0.85, 0.999)}],
            lr=0.1,
        )

    def torch_sequential(o):
        return tl.SequentialLR(
            o,
            [
                tl.LinearLR(o, start_factor=0.1, total_iters=5),
                tl.StepLR(o, step_size=3, gamma=0.7),
                tl.CosineAnnealingLR(o, T_max=9, eta_min=0.001),
            ],
            milestones=[5, 14],
        )

    def torch_chain(o):
        return tl.ChainedScheduler(
            [
                tl.ConstantLR(o, factor=0.5, total_iters=6),
                tl.ExponentialLR(o, gamma=0.95),
                tl.MultiStepLR(o, milestones=[4, 11, 11, 30], gamma=0.6),
            ]
        )

    for name, make_torch in [("SequentialLR", torch_sequential), ("ChainedScheduler", torch_chain)]:
        want = uninterrupted(CASES[name])
        topt = torch_optimizer()
        tsched = make_torch(topt)
        for i in range(STEPS + 1):
            got = [g["lr"] for g in topt.param_groups]
            np.testing.assert_allclose(want[i][0], got, rtol=1e-12, err_msg=f"{name} at {i}")
            topt.step()
            tsched.step()


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (a tuple is not a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


# Left out: numpy scalars the schedule computes (float32 rates) are restored as Python floats
# of the same value; the resume test above checks that the schedule goes on bit for bit.
@pytest.mark.parametrize("name", sorted(name for name in CASES if "numpy" not in name))
def test_loading_restores_every_attribute_with_its_type(name):
    """Counters stay Counters, tuples tuples, infinities infinite, inner schedulers too."""
    optimizer = make_optimizer()
    original = CASES[name](optimizer)
    for i in range(13):
        step(original, i)
    loaded = CASES[name](make_optimizer())
    loaded.load_state_dict(through_json(original.state_dict()))
    pairs = [(original, loaded)]
    while pairs:
        a, b = pairs.pop()
        assert type(a) is type(b)
        pairs += zip(getattr(a, "_schedulers", []), getattr(b, "_schedulers", []))
        for key, value in vars(a).items():
            if key in ("optimizer", "_schedulers") or callable(value) or key == "lr_lambdas":
                continue
            assert same(value, vars(b)[key]), f"{type(a).__name__}.{key}"


def test_chained_scheduler_repr_names_its_schedulers():
    optimizer = make_optimizer()
    text = repr(chain(optimizer))
    assert text.startswith("ChainedScheduler([ConstantLR(last_epoch=0")
    assert "ExponentialLR" in text and "MultiStepLR" in text


def test_an_attribute_that_is_not_a_json_value_is_named():
    class Custom(S.StepLR):
        def __init__(self, optimizer):
            self.hook = object()
            super().__init__(optimizer, step_size=2)

    with pytest.raises(TypeError, match=r"Custom\.hook: object .* _not_saved"):
        Custom(make_optimizer()).state_dict()


@pytest.mark.parametrize(
    "build, key, value, error, message",
    [
        (lambda o: S.StepLR(o, 3), "last_epoch", math.nan, ValueError, "must be finite"),
        (lambda o: S.StepLR(o, 3), "last_epoch", math.inf, ValueError, "must be finite"),
        (lambda o: S.StepLR(o, 3), "last_epoch", True, TypeError, "got a bool"),
        (lambda o: S.ReduceLROnPlateau(o), "mode", "foo", ValueError, "mode foo is unknown"),
        (lambda o: S.ReduceLROnPlateau(o), "threshold_mode", "x", ValueError, "threshold mode"),
        (lambda o: S.ReduceLROnPlateau(o), "factor", 2.0, ValueError, "Factor should be"),
        (lambda o: S.ConstantLR(o), "factor", 7, ValueError, "between 0 and 1"),
        (lambda o: S.LinearLR(o), "start_factor", 0.0, ValueError, "Starting multiplicative"),
        (lambda o: S.LinearLR(o), "end_factor", -1.0, ValueError, "Ending multiplicative"),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 4), "T_i", 0, ValueError, "T_i must be"),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 4), "T_0", 0, ValueError, "positive integer"),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 4), "T_mult", 0, ValueError, "T_mult >= 1"),
    ],
)
def test_load_refuses_what_the_constructor_refuses(build, key, value, error, message):
    # Only the kind of each value was checked, so these loaded and the schedule went wrong
    # later: frozen, a rate of 7x, a "max" mode, or a ZeroDivisionError at the next step.
    scheduler = build(make_optimizer())
    saved = scheduler.state_dict()
    assert key in saved
    saved[key] = value
    before = repr(scheduler.state_dict())
    with pytest.raises(error, match=message):
        scheduler.load_state_dict(saved)
    assert repr(scheduler.state_dict()) == before


@pytest.mark.parametrize(
    "build, epochs",
    [
        (lambda o: S.StepLR(o, 2), np.arange(1, 6)),
        (lambda o: S.ExponentialLR(o, 0.9), [1, 2.5, 4]),
        (lambda o: S.CosineAnnealingWarmRestarts(o, 3, 2), [0.5, 1.25, 7.75]),
    ],
)
def test_states_made_by_step_with_an_epoch_load_back(build, epochs):
    # step(epoch) keeps what it is given (numpy ints, fractional epochs); the state it makes
    # must load back, into the same scheduler and a fresh one.
    scheduler = build(make_optimizer())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "passing an epoch to step", DeprecationWarning)
        for epoch in epochs:
            scheduler.step(epoch)
    saved = scheduler.state_dict()
    scheduler.load_state_dict(saved)
    fresh = build(make_optimizer())
    fresh.load_state_dict(json.loads(json.dumps(saved, default=float)))
    assert fresh.get_last_lr() == scheduler.get_last_lr()
