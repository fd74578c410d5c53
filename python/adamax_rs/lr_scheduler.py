"""Learning-rate schedulers with the names, signatures and semantics of torch's.

These mirror ``torch.optim.lr_scheduler``.

They work with any :class:`adamax_rs.Optimizer` (several parameter groups included) by writing
``group["lr"]`` between steps; the optimizer reads it again at its next step. Schedulers that
cycle momentum (:class:`CyclicLR`, :class:`OneCycleLR`) cycle ``group["beta1"]``, as torch does
for Adam-style optimizers.

Use them exactly as in torch::

    opt = Adamax(params, lr=0.01)
    sched = CosineAnnealingLR(opt, T_max=100)
    for epoch in range(100):
        train_one_epoch(opt)
        sched.step()

Every scheduler's ``state_dict()`` is made of JSON values only (no pickle needed to store it),
nested schedulers' states included. To resume, build the optimizer and the scheduler as at the
start, then load both: the schedule goes on exactly, bit for bit, as if it had not stopped::

    opt = Adamax(params, lr=0.01)
    sched = CosineAnnealingLR(opt, T_max=100)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])

Functions given to a scheduler (``lr_lambda``, ``scale_fn``) are not saved: pass the same ones
to the constructor again.
"""

from __future__ import annotations

import math
import numbers
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from .optimizer import Optimizer

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "SequentialLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
]

Lambda = Callable[[int], float]


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an adamax_rs.Optimizer")


def _per_group(value: Any, optimizer: Optimizer, name: str) -> list[Any]:
    """A value for each parameter group: a list/tuple of one per group, or one for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(
                f"expected {len(optimizer.param_groups)} values for {name}, got {len(value)}"
            )
        return list(value)
    return [value] * len(optimizer.param_groups)


# -- state dicts as JSON values ------------------------------------------------------------
#
# A checkpoint stores scheduler states as JSON, so state_dict() turns the few Python values
# JSON has no type for into one-key dicts tagged with the type, and load_state_dict() turns
# them back: the loaded scheduler then holds exactly the values (and types) it saved.
_TUPLE, _COUNTER, _FLOAT = "__tuple__", "__counter__", "__float__"
_TAGS = (_TUPLE, _COUNTER, _FLOAT)
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _to_json(value: Any, where: str) -> Any:
    """``value`` as JSON values (a new object: later changes to ``value`` do not reach it)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    # numpy's scalars too (a user may pass milestones or rates as numpy numbers).
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(value, Counter):
        return {_COUNTER: [[_to_json(k, where), n] for k, n in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        if len(value) == 1 and next(iter(value)) in _TAGS:
            raise TypeError(f"cannot save {where}: a dict whose only key is {next(iter(value))}")
        return {k: _to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(
        f"cannot save {where}: {type(value).__name__} {value!r} is not a JSON value (a scheduler "
        "class lists the attributes its constructor restores in _not_saved)"
    )


def _from_json(value: Any, where: str) -> Any:
    """The inverse of :func:`_to_json`; a clear exception for anything it cannot produce."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_from_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        raise TypeError(f"{where}: {type(value).__name__} is not a JSON value")
    if len(value) == 1 and next(iter(value)) in _TAGS:
        ((tag, inner),) = value.items()
        if tag == _FLOAT:
            if inner not in _NON_FINITE:
                raise ValueError(f"{where}: {inner!r} is not one of {sorted(_NON_FINITE)}")
            return _NON_FINITE[inner]
        if not isinstance(inner, (list, tuple)):
            raise TypeError(f"{where}: {tag} needs a list, got {type(inner).__name__}")
        if tag == _TUPLE:
            return tuple(_from_json(v, f"{where}[{i}]") for i, v in enumerate(inner))
        counter: Counter[Any] = Counter()
        for pair in inner:
            if (
                not isinstance(pair, (list, tuple))
                or len(pair) != 2
                or isinstance(pair[1], bool)
                or not isinstance(pair[1], int)
            ):
                raise ValueError(f"{where}: a counter entry must be [key, count], got {pair!r}")
            counter[_from_json(pair[0], where)] = pair[1]
        return counter
    return {str(k): _from_json(v, f"{where}[{k!r}]") for k, v in value.items()}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, numbers.Real):
        return "a number"
    for kind in (str, Counter, tuple, list, dict):
        if isinstance(value, kind):
            return f"a {kind.__name__}"
    return "None" if value is None else f"a {type(value).__name__}"


def _restored_like(saved: Any, current: Any, where: str) -> Any:
    """``saved``, checked against the scheduler's own value: same kind, same length.

    Numbers come back with the type of the current value where that is a numpy scalar (an
    argument given as ``np.float32(0.9)``), so that the arithmetic after loading is the same.
    """
    if current is None:
        return saved
    if _kind(saved) != _kind(current):
        raise TypeError(f"{where} must be {_kind(current)}, got {_kind(saved)}: {saved!r}")
    number_type: Any = type(current)
    if isinstance(current, numbers.Real) and number_type not in (bool, int, float):
        return number_type(saved)
    if isinstance(current, (list, tuple)):
        if len(saved) != len(current):
            raise ValueError(f"{where} must have {len(current)} entries, got {len(saved)}")
        items = [
            _restored_like(s, c, f"{where}[{i}]") for i, (s, c) in enumerate(zip(saved, current))
        ]
        return tuple(items) if isinstance(current, tuple) else items
    if isinstance(current, dict) and not isinstance(current, Counter):
        if set(saved) != set(current):
            raise ValueError(f"{where} must have the keys {sorted(current)}, got {sorted(saved)}")
        return {
            key: _restored_like(saved[key], current[key], f"{where}[{key!r}]") for key in current
        }
    return saved


class LRScheduler:
    """Base class: keeps ``last_epoch`` and writes ``get_lr()`` into each group's ``lr``.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose learning rates to schedule.
    last_epoch : int, default -1
        The index of the last epoch; -1 starts from the beginning and records each group's
        current ``lr`` as ``"initial_lr"``. Resuming (``last_epoch >= 0``) needs
        ``"initial_lr"`` in every group.
    """

    _get_lr_called_within_step = False
    #: Attributes that :meth:`state_dict` leaves out; subclasses extend it.
    _not_saved: tuple[str, ...] = ("optimizer",)

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when "
                        "resuming an optimizer"
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self.step()

    def get_lr(self) -> list[float]:
        """The learning rates for ``last_epoch`` (subclasses implement it)."""
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rates the last :meth:`step` set, one per group."""
        return self._last_lr

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch (or jump to ``epoch``, deprecated in torch) and set the rates."""
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            warnings.warn(
                "passing an epoch to step() is deprecated (as in torch)",
                DeprecationWarning,
                stacklevel=2,
            )
            self.last_epoch = epoch
            closed_form = getattr(self, "_get_closed_form_lr", None)
            values = closed_form() if closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state as JSON values, for :meth:`load_state_dict`.

        Every attribute is saved except the optimizer and those a class lists in
        ``_not_saved`` (functions, which the constructor receives again, and inner schedulers,
        which the classes holding them save themselves). Tuples, ``Counter`` objects and
        infinite floats are stored as one-key tagged dicts, so ``json.dumps(...,
        allow_nan=False)`` accepts the result and loading restores them exactly.

        Returns
        -------
        dict
            A new dict of JSON values: later steps do not change it.

        Raises
        ------
        TypeError
            If an attribute holds something that is not a JSON value.
        """
        name = type(self).__name__
        return {
            key: _to_json(value, f"{name}.{key}")
            for key, value in vars(self).items()
            if key not in self._not_saved
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`, also one that went through JSON.

        Load it into a scheduler constructed as the saved one was (same arguments, same
        functions), on an optimizer given the saved optimizer's state dict: every later rate
        then equals the uninterrupted run's. Everything is checked before anything changes.

        Parameters
        ----------
        state_dict : dict
            What :meth:`state_dict` returned, or its JSON round trip.

        Raises
        ------
        TypeError
            If ``state_dict`` is not a dict or holds a value of the wrong kind.
        ValueError
            If its keys are not this scheduler's (a state of another scheduler class or of
            another configuration), or a list has the wrong length.
        """
        for scheduler, attributes in self._checked_state(state_dict):
            scheduler.__dict__.update(attributes)

    def _checked_state(
        self, state_dict: Mapping[str, Any]
    ) -> list[tuple[LRScheduler, dict[str, Any]]]:
        """The attributes to set on this (and any inner) scheduler; changes nothing."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name} state_dict must be a dict, got {type(state_dict).__name__}")
        mine = {key: value for key, value in vars(self).items() if key not in self._not_saved}
        missing = sorted(set(mine) - set(state_dict))
        unexpected = sorted(map(str, set(state_dict) - set(mine)))
        if missing or unexpected:
            raise ValueError(
                f"not a state of this {name}: missing keys {missing}, unexpected keys {unexpected}"
            )
        restored = {}
        for key, current in mine.items():
            where = f"{name} state_dict[{key!r}]"
            restored[key] = _restored_like(_from_json(state_dict[key], where), current, where)
        try:
            self._check_restored(restored)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{name} state_dict: {error}") from None
        return [(self, restored)]

    def _check_restored(self, values: dict[str, Any]) -> None:
        """Refuse restored attributes the constructor would have refused (a kind check alone
        lets ``last_epoch=nan`` or ``mode="foo"`` through, and the schedule goes wrong later,
        silently or with a ZeroDivisionError). Subclasses add their own arguments' checks."""
        # An int, or any real number `step(epoch)` was given (numpy ints, fractional epochs),
        # but finite: NaN or infinity would freeze the schedule.
        epoch = values.get("last_epoch")
        if epoch is not None and not math.isfinite(epoch):
            raise ValueError(f"last_epoch must be finite, got {epoch!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


class _LambdaScheduler(LRScheduler):
    """Shared by the schedulers driven by user functions of the epoch."""

    # The user's functions come again from the constructor (torch does not save them either).
    _not_saved = LRScheduler._not_saved + ("lr_lambdas",)

    def __init__(
        self, optimizer: Optimizer, lr_lambda: Lambda | Sequence[Lambda], last_epoch: int = -1
    ) -> None:
        _check_optimizer(optimizer)
        self.lr_lambdas: list[Lambda] = _per_group(lr_lambda, optimizer, "lr_lambda")
        super().__init__(optimizer, last_epoch)


class LambdaLR(_LambdaScheduler):
    """``lr = initial_lr * lr_lambda(epoch)``.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    lr_lambda : callable or list of callable
        ``epoch -> factor``; one for all groups or one per group.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def get_lr(self) -> list[float]:
        return [base * f(self.last_epoch) for f, base in zip(self.lr_lambdas, self.base_lrs)]


class MultiplicativeLR(_LambdaScheduler):
    """``lr *= lr_lambda(epoch)`` at each step after the first.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    lr_lambda : callable or list of callable
        ``epoch -> factor``; one for all groups or one per group.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch > 0:
            return [g["lr"] * f(self.last_epoch) for f, g in zip(self.lr_lambdas, groups)]
        return [g["lr"] for g in groups]


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    step_size : int
        Epochs between decays.
    gamma : float, default 0.1
        The decay factor.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [g["lr"] for g in groups]
        return [g["lr"] * self.gamma for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each epoch listed in ``milestones``.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    milestones : iterable of int
        Epochs at which to decay (a repeated epoch decays several times).
    gamma : float, default 0.1
        The decay factor.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch not in self.milestones:
            return [g["lr"] for g in groups]
        return [g["lr"] * self.gamma ** self.milestones[self.last_epoch] for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        passed = bisect_right(sorted(self.milestones.elements()), self.last_epoch)
        return [base * self.gamma**passed for base in self.base_lrs]


def _check_constant_factor(factor: float) -> None:
    if not 0 <= factor <= 1.0:
        raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")


class ConstantLR(LRScheduler):
    """Scale the rate by ``factor`` until epoch ``total_iters``, then restore it.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    factor : float, default 1/3
        The scale, in ``[0, 1]``.
    total_iters : int, default 5
        The epoch at which the full rate returns.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_constant_factor(factor)
        self.factor, self.total_iters = factor, total_iters
        super().__init__(optimizer, last_epoch)

    def _check_restored(self, values: dict[str, Any]) -> None:
        super()._check_restored(values)
        _check_constant_factor(values["factor"])

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [g["lr"] * self.factor for g in groups]
        if self.last_epoch != self.total_iters:
            return [g["lr"] for g in groups]
        return [g["lr"] * (1.0 / self.factor) for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        done = self.last_epoch >= self.total_iters
        return [base * (self.factor + done * (1 - self.factor)) for base in self.base_lrs]


def _check_linear_factors(start_factor: float, end_factor: float) -> None:
    if not 0 < start_factor <= 1.0:
        raise ValueError(
            "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."
        )
    if not 0 <= end_factor <= 1.0:
        raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")


class LinearLR(LRScheduler):
    """Scale the rate linearly from ``start_factor`` to ``end_factor`` over ``total_iters``.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    start_factor : float, default 1/3
        The scale at epoch 0, in ``(0, 1]``.
    end_factor : float, default 1.0
        The scale from epoch ``total_iters`` on, in ``[0, 1]``.
    total_iters : int, default 5
        The number of epochs the ramp takes.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_linear_factors(start_factor, end_factor)
        self.start_factor, self.end_factor, self.total_iters = start_factor, end_factor, total_iters
        super().__init__(optimizer, last_epoch)

    def _check_restored(self, values: dict[str, Any]) -> None:
        super()._check_restored(values)
        _check_linear_factors(values["start_factor"], values["end_factor"])

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [g["lr"] * self.start_factor for g in groups]
        if self.last_epoch > self.total_iters:
            return [g["lr"] for g in groups]
        span = self.end_factor - self.start_factor
        ratio = 1.0 + span / (self.total_iters * self.start_factor + (self.last_epoch - 1) * span)
        return [g["lr"] * ratio for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        done = min(self.total_iters, self.last_epoch) / self.total_iters
        factor = self.start_factor + (self.end_factor - self.start_factor) * done
        return [base * factor for base in self.base_lrs]


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every epoch.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    gamma : float
        The decay factor per epoch.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [g["lr"] for g in groups]
        return [g["lr"] * self.gamma for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class PolynomialLR(LRScheduler):
    """Decay the rate to zero over ``total_iters`` epochs as ``(1 - t / total) ** power``.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    total_iters : int, default 5
        The epoch at which the rate reaches zero.
    power : float, default 1.0
        The polynomial's power.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_iters, self.power = total_iters, power
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self.last_epoch == 0 or self.last_epoch > self.total_iters:
            return [g["lr"] for g in groups]
        decay = (
            (1.0 - self.last_epoch / self.total_iters)
            / (1.0 - (self.last_epoch - 1) / self.total_iters)
        ) ** self.power
        return [g["lr"] * decay for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        left = 1.0 - min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * left**self.power for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Anneal from the initial rate to ``eta_min`` along a half cosine of ``T_max`` epochs.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    T_max : int
        Epochs in half a period.
    eta_min : float, default 0.0
        The lowest rate.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        t, T, low = self.last_epoch, self.T_max, self.eta_min
        if t == 0:
            return [g["lr"] for g in groups]
        if self._step_count == 1 and t > 0:
            return [
                low + (base - low) * (1 + math.cos(t * math.pi / T)) / 2 for base in self.base_lrs
            ]
        if (t - 1 - T) % (2 * T) == 0:
            return [
                g["lr"] + (base - low) * (1 - math.cos(math.pi / T)) / 2
                for base, g in zip(self.base_lrs, groups)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (g["lr"] - low) + low for g in groups]

    def _get_closed_form_lr(self) -> list[float]:
        cosine = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * cosine for base in self.base_lrs]


def _check_restart_periods(T_0: int, T_mult: int) -> None:  # noqa: N803 (torch's names)
    if isinstance(T_0, bool) or not isinstance(T_0, int) or T_0 <= 0:
        raise ValueError(f"Expected positive integer T_0, but got {T_0}")
    if isinstance(T_mult, bool) or not isinstance(T_mult, int) or T_mult < 1:
        raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")


class CosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing restarted every ``T_0`` epochs, each period ``T_mult`` times longer.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    T_0 : int
        Epochs before the first restart.
    T_mult : int, default 1
        Growth factor of the period after each restart.
    eta_min : float, default 0.0
        The lowest rate.
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        _check_restart_periods(T_0, T_mult)
        self.T_0, self.T_i, self.T_mult, self.eta_min = T_0, T_0, T_mult, eta_min
        self.T_cur: float = last_epoch
        super().__init__(optimizer, last_epoch)

    def _check_restored(self, values: dict[str, Any]) -> None:
        super()._check_restored(values)
        _check_restart_periods(values["T_0"], values["T_mult"])
        if isinstance(values["T_i"], bool) or not isinstance(values["T_i"], int):
            raise TypeError(f"T_i must be an int, got {values['T_i']!r}")
        if values["T_i"] < values["T_0"]:
            raise ValueError(f"T_i must be at least T_0 ({values['T_0']}), got {values['T_i']}")

    def get_lr(self) -> list[float]:
        cosine = (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
        return [self.eta_min + (base - self.eta_min) * cosine for base in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """Advance one epoch, or go to a (possibly fractional) ``epoch``."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur - self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
            if epoch >= self.T_0:
                if self.T_mult == 1:
                    self.T_cur = epoch % self.T_0
                else:
                    n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                    self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                    self.T_i = self.T_0 * self.T_mult**n
            else:
                self.T_i = self.T_0
                self.T_cur = epoch
        self.last_epoch = math.floor(epoch)
        self._step_count = getattr(self, "_step_count", 0) + 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def _momentum_key(optimizer: Optimizer) -> str:
    if "beta1" in optimizer.defaults:
        return "beta1"
    if "momentum" in optimizer.defaults:
        return "momentum"
    raise ValueError("optimizer must support momentum (beta1 or momentum) with cycle_momentum")


class CyclicLR(LRScheduler):
    """Cycle the rate between ``base_lr`` and ``max_lr`` (and ``beta1`` the opposite way).

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule (its groups' ``lr`` is set to ``base_lr`` at the start).
    base_lr, max_lr : float or list of float
        The bounds of the cycle, for all groups or per group.
    step_size_up, step_size_down : int
        Steps in the rising and falling half (``step_size_down`` defaults to the first).
    mode : {"triangular", "triangular2", "exp_range"}
        The amplitude policy (ignored with ``scale_fn``).
    gamma : float, default 1.0
        The factor of ``exp_range``.
    scale_fn : callable, optional
        A custom amplitude ``x -> scale``, applied per cycle or per step (``scale_mode``).
    scale_mode : {"cycle", "iterations"}
        What ``scale_fn`` receives.
    cycle_momentum : bool, default True
        Also cycle ``beta1`` between ``max_momentum`` and ``base_momentum``.
    base_momentum, max_momentum : float or list of float
        The bounds of ``beta1``.
    last_epoch : int, default -1
        The last step's index (-1 starts from the beginning).
    """

    _not_saved = LRScheduler._not_saved + ("scale_fn_custom",)

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | Sequence[float],
        max_lr: float | Sequence[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.8,
        max_momentum: float | Sequence[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        base_lrs = _per_group(base_lr, optimizer, "base_lr")
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups):
                group["lr"] = lr
        self.max_lrs = _per_group(max_lr, optimizer, "max_lr")
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        self.mode, self.gamma = mode, gamma
        self.scale_fn_custom = scale_fn
        self.scale_mode = (
            scale_mode
            if scale_fn is not None
            else ("iterations" if mode == "exp_range" else "cycle")
        )
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self._momentum = _momentum_key(optimizer)
            self.base_momentums = _per_group(base_momentum, optimizer, "base_momentum")
            self.max_momentums = _per_group(max_momentum, optimizer, "max_momentum")
            if last_epoch == -1:
                for m, group in zip(self.max_momentums, optimizer.param_groups):
                    group[self._momentum] = m
        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def scale_fn(self, x: float) -> float:
        """The amplitude scale of cycle (or iteration) ``x``."""
        if self.scale_fn_custom is not None:
            return float(self.scale_fn_custom(x))
        if self.mode == "triangular":
            return 1.0
        if self.mode == "triangular2":
            return float(1 / (2.0 ** (x - 1)))
        return float(self.gamma**x)

    def get_lr(self) -> list[float]:
        cycle = math.floor(1 + self.last_epoch / self.total_size)
        x = 1.0 + self.last_epoch / self.total_size - cycle
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
        where = cycle if self.scale_mode == "cycle" else self.last_epoch
        lrs = [
            base + (top - base) * scale_factor * self.scale_fn(where)
            for base, top in zip(self.base_lrs, self.max_lrs)
        ]
        if self.cycle_momentum:
            for group, low, high in zip(
                self.optimizer.param_groups, self.base_momentums, self.max_momentums
            ):
                group[self._momentum] = high - (high - low) * scale_factor * self.scale_fn(where)
        return lrs


class OneCycleLR(LRScheduler):
    """The 1cycle policy: warm up to ``max_lr``, then anneal far below the start.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    max_lr : float or list of float
        The peak rate, for all groups or per group.
    total_steps : int, optional
        The length of the cycle, or give ``epochs`` and ``steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
        The length of the cycle as their product.
    pct_start : float, default 0.3
        The fraction of the cycle spent warming up.
    anneal_strategy : {"cos", "linear"}
        The shape of each phase.
    cycle_momentum : bool, default True
        Also cycle ``beta1`` between ``max_momentum`` and ``base_momentum``.
    base_momentum, max_momentum : float or list of float
        The bounds of ``beta1``.
    div_factor : float, default 25.0
        ``initial_lr = max_lr / div_factor``.
    final_div_factor : float, default 1e4
        ``min_lr = initial_lr / final_div_factor``.
    three_phase : bool, default False
        Anneal back to ``initial_lr`` before the final descent.
    last_epoch : int, default -1
        The last step's index (-1 starts from the beginning).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if epochs <= 0 or steps_per_epoch <= 0:
                raise ValueError("Expected positive integer epochs and steps_per_epoch")
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        if not 0 <= pct_start <= 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self.anneal_strategy = anneal_strategy
        total = float(self.total_steps)
        if three_phase:
            self._schedule_phases = [
                (pct_start * total - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (
                    2 * pct_start * total - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ),
                (total - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._schedule_phases = [
                (pct_start * total - 1, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (total - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        max_lrs = _per_group(max_lr, optimizer, "max_lr")
        if last_epoch == -1:
            for top, group in zip(max_lrs, optimizer.param_groups):
                group["initial_lr"] = top / div_factor
                group["max_lr"] = top
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self._momentum = _momentum_key(optimizer)
            if last_epoch == -1:
                for high, low, group in zip(
                    _per_group(max_momentum, optimizer, "max_momentum"),
                    _per_group(base_momentum, optimizer, "base_momentum"),
                    optimizer.param_groups,
                ):
                    group[self._momentum] = high
                    group["max_momentum"] = high
                    group["base_momentum"] = low
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"Tried to step {step} times. The specified number of total steps is "
                f"{self.total_steps}"
            )
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            lr = momentum = 0.0
            for i, (end, lr_from, lr_to, m_from, m_to) in enumerate(self._schedule_phases):
                if step <= end or i == len(self._schedule_phases) - 1:
                    pct = (step - start) / (end - start)
                    lr = self._anneal(group[lr_from], group[lr_to], pct)
                    if self.cycle_momentum:
                        momentum = self._anneal(group[m_from], group[m_to], pct)
                    break
                start = end
            lrs.append(lr)
            if self.cycle_momentum:
                group[self._momentum] = momentum
        return lrs


class _NestingScheduler(LRScheduler):
    """Shared by the schedulers that drive other schedulers: their states nest."""

    _schedulers: list[LRScheduler]
    _not_saved = LRScheduler._not_saved + ("_schedulers",)

    def state_dict(self) -> dict[str, Any]:
        """This scheduler's state, with each inner scheduler's under ``"_schedulers"``.

        Returns
        -------
        dict
            JSON values, as :meth:`LRScheduler.state_dict`.
        """
        state = super().state_dict()
        state["_schedulers"] = [scheduler.state_dict() for scheduler in self._schedulers]
        return state

    def _checked_state(
        self, state_dict: Mapping[str, Any]
    ) -> list[tuple[LRScheduler, dict[str, Any]]]:
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name} state_dict must be a dict, got {type(state_dict).__name__}")
        if "_schedulers" not in state_dict:
            raise ValueError(f"not a state of this {name}: no '_schedulers' key")
        inner = state_dict["_schedulers"]
        if not isinstance(inner, (list, tuple)):
            raise TypeError(f"{name} state_dict['_schedulers'] must be a list")
        if len(inner) != len(self._schedulers):
            raise ValueError(
                f"{name} state_dict has {len(inner)} schedulers, this one has "
                f"{len(self._schedulers)}"
            )
        own = {key: value for key, value in state_dict.items() if key != "_schedulers"}
        updates = super()._checked_state(own)
        for i, (scheduler, saved) in enumerate(zip(self._schedulers, inner)):
            try:
                updates += scheduler._checked_state(saved)
            except (TypeError, ValueError) as error:
                where = f"{name} scheduler {i} ({type(scheduler).__name__})"
                raise type(error)(f"{where}: {error}") from None
        return updates


class SequentialLR(_NestingScheduler):
    """Run ``schedulers`` one after another, switching at each of ``milestones``.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer all the schedulers belong to.
    schedulers : list of LRScheduler
        The schedulers, in order.
    milestones : list of int
        The epochs at which the next scheduler takes over (one fewer than schedulers).
    last_epoch : int, default -1
        The last epoch's index (-1 starts from the beginning).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        if len(schedulers) < 1:
            raise ValueError("SequentialLR expects at least one scheduler")
        for i, scheduler in enumerate(schedulers):
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"SequentialLR expects all schedulers to belong to the same optimizer, but "
                    f"got scheduler {type(scheduler).__name__} at index {i} with a different one"
                )
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got {len(schedulers)} schedulers "
                f"and {len(milestones)} milestones"
            )
        self._schedulers = list(schedulers)
        self._milestones = list(milestones)
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        for scheduler in self._schedulers:
            scheduler.last_epoch -= 1
        self._schedulers[0]._initial_step()
        self._last_lr = self._schedulers[0].get_last_lr()

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch with the scheduler in charge of it."""
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                scheduler.step(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


class ChainedScheduler(_NestingScheduler):
    """Step every scheduler in ``schedulers`` at each step (their effects compose).

    Parameters
    ----------
    schedulers : list of LRScheduler
        Schedulers of one optimizer.
    optimizer : Optimizer, optional
        That optimizer (taken from the first scheduler when not given).
    """

    def __init__(
        self, schedulers: Sequence[LRScheduler], optimizer: Optimizer | None = None
    ) -> None:
        if len(schedulers) < 1:
            raise ValueError("ChainedScheduler expects at least one scheduler")
        optimizer = optimizer or schedulers[0].optimizer
        for i, scheduler in enumerate(schedulers):
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    "ChainedScheduler expects all schedulers to belong to the same optimizer, "
                    f"but got scheduler {type(scheduler).__name__} at index {i} with a "
                    "different one"
                )
        self._schedulers = list(schedulers)
        self.optimizer = optimizer
        self._last_lr = [g["lr"] for g in self._schedulers[-1].optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        """Step every scheduler once."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = [g["lr"] for g in self._schedulers[-1].optimizer.param_groups]

    def __repr__(self) -> str:
        # No epoch of its own: each inner scheduler keeps one.
        return f"ChainedScheduler([{', '.join(map(repr, self._schedulers))}])"


def _check_plateau_options(factor: float, mode: str, threshold_mode: str) -> None:
    if not factor < 1.0:
        raise ValueError("Factor should be < 1.0.")
    if mode not in ("min", "max"):
        raise ValueError(f"mode {mode} is unknown!")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"threshold mode {threshold_mode} is unknown!")


class ReduceLROnPlateau(LRScheduler):
    """Cut the rate by ``factor`` when a metric has stopped improving for ``patience`` epochs.

    Call ``step(metric)`` once per epoch with the metric to watch.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to schedule.
    mode : {"min", "max"}
        Whether the metric should fall or rise.
    factor : float, default 0.1
        The cut, below 1.
    patience : int, default 10
        Epochs without improvement tolerated before a cut.
    threshold : float, default 1e-4
        The smallest change that counts as an improvement.
    threshold_mode : {"rel", "abs"}
        Whether ``threshold`` is relative to the best value or absolute.
    cooldown : int, default 0
        Epochs to wait after a cut before counting again.
    min_lr : float or list of float, default 0
        The lowest rate, for all groups or per group.
    eps : float, default 1e-8
        Cuts smaller than this are skipped.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | Sequence[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        _check_optimizer(optimizer)
        _check_plateau_options(factor, mode, threshold_mode)
        self.optimizer = optimizer
        self.factor, self.patience, self.cooldown, self.eps = factor, patience, cooldown, eps
        self.min_lrs = _per_group(min_lr, optimizer, "min_lr")
        self.mode, self.threshold, self.threshold_mode = mode, threshold, threshold_mode
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def _check_restored(self, values: dict[str, Any]) -> None:
        super()._check_restored(values)
        _check_plateau_options(values["factor"], values["mode"], values["threshold_mode"])

    def is_better(self, a: float, best: float) -> bool:
        """Whether metric ``a`` improves on ``best`` by more than the threshold."""
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record this epoch's ``metrics`` and reduce the rates if they have plateaued."""
        current = float(metrics)
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, low in zip(self.optimizer.param_groups, self.min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, low)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
