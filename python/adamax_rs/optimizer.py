"""`Optimizer`: parameter groups, per-parameter state, state dicts and locking.

The base class knows nothing about Adamax. It owns what every torch-style optimizer shares:
turning the user's ``params`` into parameter groups, refusing duplicates, keeping the state of
each parameter, taking and restoring snapshots, and serialising calls with a lock that a
``fork()`` cannot leave held in the child.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Callable

import numpy as np

from ._core import ParameterState, StateEntry
from ._fork import track
from .dtypes import describe_supported, is_supported, torch_hint
from .flat import FlatParameter

__all__ = ["Optimizer", "ParameterState", "StateEntry"]

ParamGroup = dict[str, Any]

# The state and its entries behave like torch's dicts of dicts.
MutableMapping.register(ParameterState)
MutableMapping.register(StateEntry)


def _describe(obj: object) -> str:
    return type(obj).__name__


def _check_parameter(param: Any, where: str) -> None:
    """Raise unless ``param`` has a writeable, supported ndarray in ``.data``, and a ``.grad``."""
    if isinstance(param, np.ndarray):
        raise TypeError(
            f"{where}: got a bare numpy.ndarray; wrap it as adamax_rs.Parameter(array) so the "
            "optimizer has somewhere to read its gradient from"
        )
    if not hasattr(param, "data") or not hasattr(param, "grad"):
        raise TypeError(
            f"{where}: expected a Parameter (an object with .data and .grad), "
            f"got {_describe(param)}"
        )
    data = param.data
    if not isinstance(data, np.ndarray):
        raise TypeError(
            f"{where}: .data must be a numpy.ndarray, got {_describe(data)}{torch_hint(data)}"
        )
    if not is_supported(data.dtype):
        raise TypeError(
            f"{where}: dtype {data.dtype} is not supported ({describe_supported()}, "
            "native byte order)"
        )
    if not data.flags.aligned:
        raise TypeError(
            f"{where}: .data is not aligned to its element size (a view at an odd byte "
            "offset); pass an aligned copy (numpy.array(data))"
        )
    if not data.flags.writeable:
        raise ValueError(f"{where}: .data is read-only (not writeable)")


def _as_param_list(params: Any, where: str) -> list[Any]:
    if isinstance(params, np.ndarray):
        raise TypeError(f"{where}: got a bare numpy.ndarray; wrap it as adamax_rs.Parameter(array)")
    if hasattr(params, "data") and hasattr(params, "grad"):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where}: parameters must be in an ordered collection (a list), not a set: "
            "a set's order changes between runs and state dicts would not line up"
        )
    if isinstance(params, Mapping) or not isinstance(params, Iterable):
        raise TypeError(f"{where}: 'params' must be a list of parameters, got {_describe(params)}")
    return list(params)


class Optimizer:
    """Base class of optimizers over numpy parameters, with the API of ``torch.optim.Optimizer``.

    Parameters
    ----------
    params : iterable of Parameter or iterable of dict
        The parameters to optimise, or parameter groups: dicts with a ``"params"`` key holding a
        list of parameters, and hyperparameters that override ``defaults`` for that group. Any
        other keys in a group dict are kept.
    defaults : dict
        The hyperparameters a group gets when it does not set them.

    Attributes
    ----------
    param_groups : list of dict
        The parameter groups. Hyperparameters may be changed here between steps (a learning rate
        schedule does exactly that); each step reads them again.
    defaults : dict
        The default hyperparameters.
    state : ParameterState
        Per-parameter state, keyed by parameter: ``state[p]`` is a mapping with ``"step"`` and
        the arrays listed by :meth:`state_keys`.

    Notes
    -----
    Every public method takes the optimizer's lock, so one optimizer may be shared between
    threads; different optimizers step in parallel. ``os.fork()`` waits for a step running on
    another thread to finish, and the child gets a fresh lock.
    """

    def __init__(self, params: Any, defaults: Mapping[str, Any]) -> None:
        self.defaults: dict[str, Any] = dict(defaults)
        self.state = ParameterState(list(self.state_keys()))
        self.param_groups: list[ParamGroup] = []
        self._lock = threading.RLock()

        if isinstance(params, np.ndarray) or (hasattr(params, "data") and hasattr(params, "grad")):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of parameters "
                f"or dicts, but got {_describe(params)}"
                + ("; wrap arrays as adamax_rs.Parameter" if isinstance(params, np.ndarray) else "")
            )
        if isinstance(params, (set, frozenset)) or isinstance(params, Mapping):
            raise TypeError(
                "params argument given to the optimizer should be an ordered iterable "
                f"(a list) of parameters or dicts, but got {_describe(params)}"
            )
        if not isinstance(params, Iterable):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of parameters "
                f"or dicts, but got {_describe(params)}"
            )
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        groups = items if isinstance(items[0], Mapping) else [{"params": items}]
        # Build every group before keeping any, so a bad one leaves no half-made optimizer.
        built: list[ParamGroup] = []
        for index, group in enumerate(groups):
            if not isinstance(group, Mapping):
                raise TypeError(
                    f"param group {index}: expected a dict, got {_describe(group)} "
                    "(do not mix parameters and group dicts in one list)"
                )
            built.append(self._build_group(group, index, built))
        self.param_groups = built
        track(self)

    # -- hooks for subclasses -------------------------------------------------------------

    def state_keys(self) -> tuple[str, ...]:
        """The names of the arrays each parameter's state holds (besides ``"step"``)."""
        return ()

    def _normalize_group(
        self, group: ParamGroup, where: str, *, fill_defaults: bool = True
    ) -> ParamGroup:
        """Check a group's hyperparameters (filling missing ones from ``defaults`` when
        ``fill_defaults``); return the group dict to keep, without ``"params"``."""
        if fill_defaults:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        return group

    def _check_state(self, param: Any, state: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Validate one parameter's loaded state; return the state to keep (owned copies)."""
        return {
            key: np.array(value, copy=True) if isinstance(value, np.ndarray) else value
            for key, value in state.items()
        }

    # -- groups -----------------------------------------------------------------------------

    def _build_group(
        self, group: Mapping[str, Any], index: int, earlier: list[ParamGroup]
    ) -> ParamGroup:
        where = f"param group {index}"
        if "params" not in group:
            raise ValueError(f"{where}: a parameter group needs a 'params' key")
        params = _as_param_list(group["params"], where)
        seen: set[int] = set()
        for position, param in enumerate(params):
            _check_parameter(param, f"{where}, parameter {position}")
            if id(param) in seen:
                raise ValueError(
                    f"{where}: parameter {position} appears more than once in the group"
                )
            seen.add(id(param))
        for other in earlier:
            if any(id(p) in seen for p in other["params"]):
                raise ValueError("some parameters appear in more than one parameter group")
        built = {key: value for key, value in group.items() if key != "params"}
        built = self._normalize_group(built, f"{where}: ")
        return {"params": params, **built}

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a parameter group (a dict with ``"params"`` and optional hyperparameters).

        Parameters
        ----------
        param_group : dict
            ``{"params": [...], "lr": ..., ...}``; missing hyperparameters come from
            ``defaults``.

        Raises
        ------
        TypeError
            If it is not a dict, or a parameter is not a Parameter of a supported dtype.
        ValueError
            If a hyperparameter is out of range, or a parameter is already in a group.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(f"param group must be a dict, got {_describe(param_group)}")
        with self._lock:
            group = self._build_group(param_group, len(self.param_groups), self.param_groups)
            self.param_groups.append(group)

    # -- steps ------------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; subclasses implement it."""
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters, all or nothing.

        Parameters
        ----------
        set_to_none : bool, default True
            Set each ``grad`` to ``None`` (the optimizer then skips that parameter until it gets
            a gradient again). With ``False``, fill existing gradients with zeros in place
            instead. A :class:`FlatParameter`'s gradient buffer is filled with zeros either way
            (its members hold views of it).

        Raises
        ------
        TypeError
            If a parameter's ``grad`` cannot be set to ``None`` (a read-only attribute, or a
            setter that refuses it with a TypeError), or, with ``set_to_none=False``, a
            gradient is not an array that can be written. Every parameter is checked before any
            gradient changes; whatever a ``grad`` setter raises, the gradients already set to
            ``None`` are put back first.
        ValueError
            If a parameter's ``grad`` setter refuses ``None`` with a ValueError.
        """
        with self._lock:
            places = [
                (f"group {g}, parameter {i}", param)
                for g, group in enumerate(self.param_groups)
                for i, param in enumerate(group["params"])
                if not isinstance(param, FlatParameter)
            ]
            # A FlatParameter always has its gradient buffer (its members hold views of it):
            # it is zeroed in place either way, last, once nothing else can fail.
            flats = [
                (f"group {g}, parameter {i}: ", param)
                for g, group in enumerate(self.param_groups)
                for i, param in enumerate(group["params"])
                if isinstance(param, FlatParameter)
            ]
            for where, flat in flats:
                flat.check_zero_grad(where)
            if set_to_none:
                self._set_grads_to_none(places)
                for _, flat in flats:
                    flat.zero_grad()
                return
            grads = [(where, param.grad) for where, param in places]
            for where, grad in grads:
                if grad is None:
                    continue
                if not isinstance(grad, np.ndarray):
                    raise TypeError(
                        f"{where}: cannot zero a gradient of type {_describe(grad)} in place"
                    )
                if not grad.flags.writeable:
                    raise TypeError(
                        f"{where}: cannot zero the gradient in place: it is read-only; use "
                        "zero_grad() to set gradients to None instead"
                    )
            for _, grad in grads:
                if grad is not None:
                    grad[...] = 0
            for _, flat in flats:
                flat.zero_grad()

    @staticmethod
    def _set_grads_to_none(places: list[tuple[str, Any]]) -> None:
        """Set every ``grad`` to None, or, if any getter or setter raises (whatever it raises,
        a KeyboardInterrupt included), put back the ones already set and raise."""
        # Setting is the only reliable test of whether a grad can be set (a read-only property,
        # a C attribute without a setter, a setter that validates): undo the ones done if one
        # fails.
        done: list[tuple[Any, Any]] = []
        where, param = "", None
        try:
            for place in places:
                where, param = place
                previous = param.grad
                param.grad = None
                done.append((param, previous))
        except BaseException as error:
            for undone, grad in reversed(done):
                undone.grad = grad
            if isinstance(error, AttributeError):
                raise TypeError(
                    f"{where}: cannot set .grad to None on a {_describe(param)} ({error}); "
                    "use zero_grad(set_to_none=False) to zero it in place"
                ) from None
            if isinstance(error, (TypeError, ValueError)):
                kind = TypeError if isinstance(error, TypeError) else ValueError
                raise kind(
                    f"{where}: setting .grad to None on a {_describe(param)} failed: {error}; "
                    "no gradient was changed"
                ) from error
            raise

    # -- state dicts ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return a snapshot of the state and hyperparameters.

        Returns
        -------
        dict
            ``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}`` with
            parameters numbered from 0 in order across groups. Arrays are copies: later steps do
            not change the snapshot.
        """
        with self._lock:
            groups: list[dict[str, Any]] = []
            state: dict[int, dict[str, Any]] = {}
            index = 0
            for group in self.param_groups:
                packed = {key: value for key, value in group.items() if key != "params"}
                indices = []
                for param in group["params"]:
                    entry = self.state.get(param)
                    if entry:
                        state[index] = {
                            key: value.copy(order="K") if isinstance(value, np.ndarray) else value
                            for key, value in entry.items()
                        }
                    indices.append(index)
                    index += 1
                packed["params"] = indices
                groups.append(packed)
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore state and hyperparameters saved by :meth:`state_dict`.

        The optimizer must have the same number of groups, each with the same number of
        parameters, as the one that was saved. Everything is checked before anything is changed:
        on any error the optimizer is left exactly as it was.

        Raises
        ------
        TypeError
            If ``state_dict`` or a part of it has the wrong type, or an array the wrong dtype.
        ValueError
            If the structure does not match this optimizer, or a value is out of range.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {_describe(state_dict)}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict has no {key!r} key")
        extra = sorted(map(str, set(state_dict) - {"state", "param_groups"}))
        if extra:
            raise ValueError(f"state_dict has unexpected keys {extra}")
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)):
            raise TypeError(
                f"state_dict['param_groups'] must be a list, got {_describe(saved_groups)}"
            )
        if not isinstance(saved_state, Mapping):
            raise TypeError(f"state_dict['state'] must be a dict, got {_describe(saved_state)}")
        with self._lock:
            if len(saved_groups) != len(self.param_groups):
                raise ValueError(
                    f"loaded state dict has {len(saved_groups)} parameter groups, "
                    f"this optimizer has {len(self.param_groups)}"
                )
            by_index: dict[int, Any] = {}
            new_groups: list[ParamGroup] = []
            for g, (mine, saved) in enumerate(zip(self.param_groups, saved_groups)):
                where = f"param group {g}"
                if not isinstance(saved, Mapping) or "params" not in saved:
                    raise ValueError(f"{where}: a saved group must be a dict with a 'params' key")
                saved_params = saved["params"]
                if not isinstance(saved_params, (list, tuple)):
                    raise TypeError(f"{where}: 'params' must be a list of indices")
                if len(saved_params) != len(mine["params"]):
                    raise ValueError(
                        f"{where}: loaded state dict has {len(saved_params)} parameters in this "
                        f"group, this optimizer has {len(mine['params'])}"
                    )
                for saved_index, param in zip(saved_params, mine["params"]):
                    if isinstance(saved_index, bool) or not isinstance(
                        saved_index, (int, np.integer)
                    ):
                        raise TypeError(f"{where}: parameter indices must be integers")
                    if int(saved_index) in by_index:
                        raise ValueError(f"{where}: parameter index {saved_index} appears twice")
                    by_index[int(saved_index)] = param
                hyper = {key: value for key, value in saved.items() if key != "params"}
                hyper = self._normalize_group(dict(hyper), f"{where}: ", fill_defaults=False)
                new_groups.append({"params": mine["params"], **hyper})
            new_state = ParameterState(list(self.state_keys()))
            for key, entry in saved_state.items():
                if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
                    raise TypeError(f"state key {key!r} must be a parameter index (an int)")
                if int(key) not in by_index:
                    raise ValueError(
                        f"state has an entry for parameter index {key}, which no group lists"
                    )
                if not isinstance(entry, Mapping):
                    raise TypeError(
                        f"state of parameter {key} must be a dict, got {_describe(entry)}"
                    )
                param = by_index[int(key)]
                new_state[param] = self._check_state(param, entry, f"state of parameter {key}")
            self.param_groups = new_groups
            self.state = new_state

    # -- display ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for index, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {index}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)
