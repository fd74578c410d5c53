"""``FlatParameter``: many parameters stepped as one buffer.

A step over thousands of small parameters pays for each one: reading its arrays, checking them,
scheduling its update. ``FlatParameter(params)`` moves the values of ``params`` into one
contiguous buffer and their gradients into another, and gives each parameter views of its part
of them as its ``data`` and ``grad``; the optimizer then steps the two buffers as one parameter.
Each step checks that every member still holds its two views, by identity and against their
headers as made (a member whose ``data`` or ``grad`` was rebound, or whose view was reshaped in
place, would otherwise silently stop training or pair the wrong elements), which costs a few
tens of nanoseconds per member instead of the full per-parameter work. The links and those
checks live in Rust (``_core.FlatMembers``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import _core
from ._gradient_check import check_gradient_fits
from .parameter import Parameter

__all__ = ["FlatParameter"]

# The slots of the base class (its descriptors), read without the checks this class adds.
_parameter_data: Any = vars(Parameter)["data"]
_parameter_grad: Any = vars(Parameter)["grad"]


def _members_of(params: Any) -> list[Parameter]:
    """``params`` as a list of distinct, exact ``adamax_rs.Parameter`` objects."""
    if isinstance(params, (Parameter, np.ndarray, set, frozenset, Mapping)) or not isinstance(
        params, Iterable
    ):
        raise TypeError(
            "FlatParameter takes an ordered iterable (a list or tuple) of adamax_rs.Parameter "
            f"objects, got {type(params).__name__} (a set's order changes between runs, and the "
            "buffer's layout would with it)"
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
    return members


def _check_values(datas: list[np.ndarray], grads: list[Any]) -> None:
    """One dtype, writeable data, no two members sharing memory, and gradients that are
    ``None`` or arrays of their data's shape and dtype."""
    dtype = datas[0].dtype
    for index, (data, grad) in enumerate(zip(datas, grads)):
        if data.dtype != dtype:
            raise ValueError(
                f"FlatParameter members must share one dtype: member 0 is {dtype}, member "
                f"{index} is {data.dtype}"
            )
        if not data.flags.writeable:
            raise ValueError(f"FlatParameter member {index}: its data is read-only")
        if grad is not None:
            check_gradient_fits(f"FlatParameter member {index}", grad, data)
    _check_no_shared_memory(datas)


def _byte_extent(array: np.ndarray) -> tuple[int, int]:
    """The first byte a non-empty array reaches and the one past its last."""
    low = high = array.ctypes.data
    for length, stride in zip(array.shape, array.strides):
        if stride < 0:
            low += (length - 1) * stride
        else:
            high += (length - 1) * stride
    return low, high + array.itemsize


def _check_no_shared_memory(datas: list[np.ndarray]) -> None:
    """Refuse two members whose data share memory (tied weights): flattening would untie
    them. Extents are swept in order; only overlapping ones are compared exactly."""
    extents = sorted((_byte_extent(data), index) for index, data in enumerate(datas) if data.size)
    open_extents: list[tuple[int, int]] = []  # (end, index) of extents reaching past here
    for (start, end), index in extents:
        open_extents = [(e, i) for e, i in open_extents if e > start]
        for _, other in open_extents:
            if np.shares_memory(datas[other], datas[index]):
                first, second = sorted((other, index))
                raise ValueError(
                    f"FlatParameter members {first} and {second} share memory (tied "
                    "weights?); a FlatParameter would untie them: keep one of them"
                )
        open_extents.append((end, index))


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

    Every step checks that each member still holds its two views (by identity) and that the
    views were not changed in place (shape, strides, dtype, writeability), and raises
    ``ValueError`` naming the first member that fails, before anything changes.

    To the optimizer it is one parameter: its state is one pair of flat moments, and a state
    dict or checkpoint holds the flat buffer, not the members' layout. Load one into a
    ``FlatParameter`` built from the same members in the same order; nothing checks that. With
    ``state_dtype="8bit"`` the members share quantization blocks and the 4096-element
    threshold applies to the whole buffer, so small members get 8-bit state too.

    Parameters
    ----------
    params : list or tuple of Parameter
        Distinct, exact :class:`adamax_rs.Parameter` objects of one dtype, with writeable data
        sharing no memory with each other, in any shapes and memory layouts (each is copied
        into its part of the buffer in C order). Gradients already set must have their data's
        shape and dtype.
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
        For something other than an ordered iterable of exact ``adamax_rs.Parameter`` (a set
        is refused), or a member gradient that is not an array of its data's dtype.
    ValueError
        For no parameters, a parameter given twice, members of different dtypes, read-only
        member data, members sharing memory (tied weights), or a member gradient of another
        shape. Nothing is changed then.

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

    _links: _core.FlatMembers

    def __new__(cls, params: Iterable[Parameter], *, name: str | None = None) -> FlatParameter:
        members = _members_of(params)
        # Each member's slots are read once; what is checked is what is copied.
        datas = [member.data for member in members]
        grads = [member.grad for member in members]
        _check_values(datas, grads)
        sizes = [data.size for data in datas]
        ends = np.cumsum(sizes)
        data = np.empty(int(ends[-1]), dtype=datas[0].dtype)
        grad = np.zeros_like(data)
        data_views = []
        grad_views = []
        for values, gradient, end, size in zip(datas, grads, ends, sizes):
            start = int(end) - size
            data_view = data[start : int(end)].reshape(values.shape)
            grad_view = grad[start : int(end)].reshape(values.shape)
            data_view[...] = values
            if gradient is not None:
                grad_view[...] = gradient
            data_views.append(data_view)
            grad_views.append(grad_view)
        self = super().__new__(cls, data, name=name)
        _parameter_grad.__set__(self, grad)
        self._links = _core.FlatMembers(members, data_views, grad_views)
        # Everything is checked and copied: only now do the members change, all at once.
        self._links.bind()
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
        self._links.check()
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
        return self._links.members

    def check_zero_grad(self, where: str = "") -> None:
        """Raise ``TypeError`` if :meth:`zero_grad` cannot zero the gradient buffer in place
        (someone made it read-only), before anything changes."""
        if not _parameter_grad.__get__(self).flags.writeable:
            raise TypeError(
                f"{where}cannot zero the FlatParameter's gradient buffer in place: it was made "
                "read-only"
            )

    def zero_grad(self) -> None:
        """Fill the gradient buffer (every member's gradient) with zeros, in place."""
        self.check_zero_grad()
        _parameter_grad.__get__(self).fill(0)

    def __repr__(self) -> str:
        label = f"name={self.name!r}, " if self.name is not None else ""
        return (
            f"FlatParameter({label}members={len(self._links)}, size={self.data.size}, "
            f"dtype={self.data.dtype})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The members are pickled with their own copies of their values and gradients, and
        # flattened again on loading; attributes set on the instance come back too.
        extra = {key: value for key, value in vars(self).items() if key != "_links"}
        return (_rebuild, (type(self), list(self.members), self.name), {"__dict__": extra})

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "data" in state or "grad" in state:
            raise TypeError("a FlatParameter's data and grad are its buffers and cannot be set")
        super().__setstate__(state)

    def __copy__(self) -> FlatParameter:
        raise TypeError(
            "a FlatParameter cannot be copied shallowly: its members can belong to one "
            "FlatParameter only; use copy.deepcopy, which copies the members too"
        )


def _rebuild(cls: type[FlatParameter], members: list[Parameter], name: str | None) -> Any:
    return cls(members, name=name)
