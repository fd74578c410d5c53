"""``FlatParameter``: many parameters stepped as one buffer.

A step over thousands of small parameters pays for each one: reading its arrays, checking them,
scheduling its update. ``FlatParameter(params)`` moves the values of ``params`` into one
contiguous buffer and their gradients into another, and gives each parameter views of its part
of them as its ``data`` and ``grad``; the optimizer then steps the two buffers as one parameter.
Each step checks, by identity, that every member still holds its two views (a member whose
``data`` or ``grad`` was rebound would otherwise silently stop training), which costs a few
nanoseconds per member instead of the full per-parameter work.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _core
from .parameter import Parameter

__all__ = ["FlatParameter"]

# The slots of the base class (its descriptors), read and written without the checks this
# class adds.
_parameter_data: Any = vars(Parameter)["data"]
_parameter_grad: Any = vars(Parameter)["grad"]


def _members_of(params: Any) -> list[Parameter]:
    """``params`` as a list of distinct, exact ``adamax_rs.Parameter`` objects of one dtype."""
    if isinstance(params, (Parameter, np.ndarray)) or not isinstance(params, Iterable):
        raise TypeError(
            "FlatParameter takes an iterable of adamax_rs.Parameter objects, got "
            f"{type(params).__name__}"
        )
    members = list(params)
    if not members:
        raise ValueError("FlatParameter needs at least one parameter")
    seen: dict[int, int] = {}
    for index, member in enumerate(members):
        if type(member) is not Parameter:
            raise TypeError(
                f"FlatParameter member {index} must be an adamax_rs.Parameter (not a subclass, "
                f"nor another FlatParameter), got {type(member).__name__}"
            )
        if id(member) in seen:
            raise ValueError(
                f"FlatParameter members {seen[id(member)]} and {index} are the same parameter"
            )
        seen[id(member)] = index
    dtype = members[0].data.dtype
    for index, member in enumerate(members):
        if member.data.dtype != dtype:
            raise ValueError(
                f"FlatParameter members must share one dtype: member 0 is {dtype}, member "
                f"{index} is {member.data.dtype}"
            )
    return members


def _check_gradients(members: list[Parameter]) -> None:
    """Every member's gradient is ``None`` or an array its part of the flat gradient can take."""
    for index, member in enumerate(members):
        grad = member.grad
        if grad is None:
            continue
        if not isinstance(grad, np.ndarray):
            raise TypeError(
                f"FlatParameter member {index}: its grad must be a numpy.ndarray or None, got "
                f"{type(grad).__name__}"
            )
        if grad.shape != member.data.shape:
            raise ValueError(
                f"FlatParameter member {index}: its grad has shape {grad.shape}, its data "
                f"{member.data.shape}"
            )
        if not np.can_cast(grad.dtype, member.data.dtype, casting="same_kind"):
            raise TypeError(
                f"FlatParameter member {index}: its grad has dtype {grad.dtype}, which does not "
                f"convert to {member.data.dtype}"
            )


class FlatParameter(Parameter):
    """Many parameters stepped as one: their values and gradients in two contiguous buffers.

    Building it copies the values (and gradients, where set) of ``params`` into two new
    buffers and rebinds each parameter's ``data`` and ``grad`` to views of its part of them,
    of its own shape. Give the optimizer the ``FlatParameter`` instead of the parameters: a
    step then updates the whole buffer in one pass, at the cost of one large parameter, and
    every member sees its new values through its view.

    The members keep training only while they hold their views, so:

    - write gradients into them in place (``p.grad[...] = g``, ``np.copyto(p.grad, g)``, or
      ``out=p.grad``), never ``p.grad = g``;
    - change values in place too (``p.data[...] = values``; checkpoints load this way).

    Every step checks that each member still holds its two views, by identity, and raises
    ``ValueError`` naming the first that does not, before anything changes.

    Parameters
    ----------
    params : iterable of Parameter
        Distinct, exact :class:`adamax_rs.Parameter` objects of one dtype, in any shapes and
        memory layouts (each is copied into its part of the buffer in C order).
    name : str, optional
        A label shown in ``repr``.

    Attributes
    ----------
    data : numpy.ndarray
        The flat buffer of all values (1-D, members in order). Write it in place only.
    grad : numpy.ndarray
        The flat buffer of all gradients. It is always there: a member without a gradient
        contributes zeros, and ``Optimizer.zero_grad()`` fills it with zeros whatever its
        ``set_to_none``, so every member is updated at every step (with a zero gradient, the
        moments still decay and the parameter still moves).
    members : tuple of Parameter
        The parameters, in buffer order.

    Raises
    ------
    TypeError
        For something other than an iterable of exact ``adamax_rs.Parameter``, or a member
        gradient that is not an array of a compatible dtype.
    ValueError
        For no parameters, a parameter given twice, members of different dtypes, or a
        member gradient of another shape. Nothing is changed then.

    Examples
    --------
    >>> import numpy as np
    >>> from adamax_rs import Adamax, FlatParameter, Parameter
    >>> biases = [Parameter(np.zeros(16, dtype=np.float32)) for _ in range(1000)]
    >>> flat = FlatParameter(biases)
    >>> opt = Adamax([flat], lr=1e-2)
    >>> for b in biases:
    ...     b.grad[...] = 1.0
    >>> opt.step()
    >>> round(float(biases[0].data[0]), 6)
    -0.01
    """

    _members: tuple[Parameter, ...]
    _data_views: tuple[np.ndarray, ...]
    _grad_views: tuple[np.ndarray, ...]

    def __new__(cls, params: Iterable[Parameter], *, name: str | None = None) -> FlatParameter:
        members = _members_of(params)
        _check_gradients(members)
        dtype = members[0].data.dtype
        sizes = [member.data.size for member in members]
        ends = np.cumsum(sizes)
        data = np.empty(int(ends[-1]), dtype=dtype)
        grad = np.zeros_like(data)
        data_views = []
        grad_views = []
        for member, end, size in zip(members, ends, sizes):
            start = int(end) - size
            data_view = data[start : int(end)].reshape(member.data.shape)
            grad_view = grad[start : int(end)].reshape(member.data.shape)
            data_view[...] = member.data
            if member.grad is not None:
                np.copyto(grad_view, member.grad, casting="same_kind")
            data_views.append(data_view)
            grad_views.append(grad_view)
        self = super().__new__(cls, data, name=name)
        _parameter_grad.__set__(self, grad)
        self._members = tuple(members)
        self._data_views = tuple(data_views)
        self._grad_views = tuple(grad_views)
        # Everything is checked and copied: only now do the members change.
        for member, data_view, grad_view in zip(members, data_views, grad_views):
            member.data = data_view
            member.grad = grad_view
        return self

    @property
    def data(self) -> np.ndarray:
        data: np.ndarray = _parameter_data.__get__(self)
        return data

    @data.setter
    def data(self, value: Any) -> None:
        raise TypeError(
            "a FlatParameter's data is its members' buffer and cannot be rebound; write it in "
            "place (flat.data[...] = values)"
        )

    @property
    def grad(self) -> np.ndarray:
        _core.check_flat_members(self._members, self._data_views, self._grad_views)
        grad: np.ndarray = _parameter_grad.__get__(self)
        return grad

    @grad.setter
    def grad(self, value: Any) -> None:
        raise TypeError(
            "a FlatParameter's grad is its members' gradient buffer and cannot be rebound; "
            "write the members' gradients in place (p.grad[...] = g), and zero it with "
            "zero_grad()"
        )

    @property
    def members(self) -> tuple[Parameter, ...]:
        """The parameters whose values this buffer holds, in order."""
        return self._members

    def zero_grad(self) -> None:
        """Fill the gradient buffer (every member's gradient) with zeros, in place."""
        _parameter_grad.__get__(self).fill(0)

    def __repr__(self) -> str:
        label = f"name={self.name!r}, " if self.name is not None else ""
        return (
            f"FlatParameter({label}members={len(self._members)}, size={self.data.size}, "
            f"dtype={self.data.dtype})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The members are pickled with their own copies of their values and gradients, and
        # flattened again on loading.
        return (_rebuild, (list(self._members), self.name))


def _rebuild(members: list[Parameter], name: str | None) -> FlatParameter:
    return FlatParameter(members, name=name)
