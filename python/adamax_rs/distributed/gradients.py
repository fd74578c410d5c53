"""Data parallelism for any optimizer: average the gradients, or copy the parameters, across
the ranks, in one large MPI call per element type."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._gradient_check import check_gradient_fits
from ..dtypes import describe_supported, is_supported
from ._mpi import communicator
from .agreement import agree, checked_root, shape_row
from .layout import real_dtype, transport_dtype
from .mean import mean_in_place

__all__ = ["allreduce_gradients", "broadcast_parameters"]

# Reused between calls: a fresh buffer of hundreds of megabytes costs a page fault per 4 KiB
# on every call. One per element type, grown to the largest size asked for.
_buffers: dict[np.dtype, np.ndarray] = {}
_buffers_lock = threading.Lock()

_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64", "complex64", "complex128")


def _buffer(dtype: np.dtype, size: int) -> np.ndarray:
    cached = _buffers.get(dtype)
    if cached is None or cached.size < size:
        cached = np.empty(size, dtype)
        _buffers[dtype] = cached
    return cached[:size]


def _param_list(params: Any) -> list[Any]:
    if isinstance(params, np.ndarray) or (hasattr(params, "data") and hasattr(params, "grad")):
        raise TypeError(
            "params must be an iterable of Parameters (or of parameter-group dicts), got "
            f"{type(params).__name__}"
        )
    if isinstance(params, (set, frozenset)) or not isinstance(params, Iterable):
        raise TypeError(
            f"params must be a list of Parameters, got {type(params).__name__} (a set has no "
            "order, and every rank must list the parameters in the same order)"
        )
    out: list[Any] = []
    for item in params:
        if isinstance(item, Mapping):
            out.extend(item["params"])
        else:
            out.append(item)
    return out


def _label(index: int, param: Any) -> str:
    name = getattr(param, "name", None)
    return f"parameter {index}" + (f" ({name!r})" if isinstance(name, str) else "")


def _checked_data(index: int, param: Any) -> np.ndarray:
    where = _label(index, param)
    if not hasattr(param, "data") or not hasattr(param, "grad"):
        raise TypeError(
            f"{where}: expected a Parameter (an object with .data and .grad), got "
            f"{type(param).__name__}"
        )
    data = param.data
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{where}: .data must be a numpy.ndarray, got {type(data).__name__}")
    if not is_supported(data.dtype):
        raise TypeError(
            f"{where}: dtype {data.dtype} is not supported ({describe_supported()}, native "
            "byte order)"
        )
    return data


def _checked_grad(index: int, param: Any) -> np.ndarray | None:
    data = _checked_data(index, param)
    grad = param.grad
    if grad is None:
        return None
    where = _label(index, param)
    grad = check_gradient_fits(where, grad, data)
    if not grad.flags.writeable:
        raise ValueError(f"{where}: the gradient is read-only; it is averaged in place")
    if np.may_share_memory(grad, data):
        raise ValueError(f"{where}: the gradient shares memory with the parameter")
    return grad


def _signature(
    setting: int, arrays: Sequence[np.ndarray | None], datas: list[np.ndarray]
) -> np.ndarray:
    """``setting`` (the call's own argument: ``average``, ``root``), then per parameter: has a
    gradient, dtype, size, a digest of the whole shape, and its first 7 sizes (padded)."""
    rows = []
    for array, data in zip(arrays, datas):
        name = data.dtype.name
        kind = _DTYPE_NAMES.index(name) if name in _DTYPE_NAMES else -1
        ndim, whole, *shape = shape_row(data.shape)
        rows.append([int(array is not None), kind, ndim, int(data.size), whole, *shape])
    return np.concatenate([[setting], np.array(rows, np.int64).reshape(-1)]).astype(np.int64)


def _describe(labels: list[str], rows: list[np.ndarray], what: str, setting: str) -> str:
    settings = [int(row[0]) for row in rows]
    if len(set(settings)) > 1:
        shown = [bool(v) if setting == "average" else v for v in settings]
        listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(shown))
        return f"{setting} differs between ranks ({listed}); pass the same on every rank"
    rows = [row[1:] for row in rows]
    width = 12
    counts = [row.size // width for row in rows]
    if len(set(counts)) > 1:
        listed = ", ".join(f"rank {r}: {n}" for r, n in enumerate(counts))
        return f"the ranks passed different numbers of parameters ({listed})"
    tables = [row.reshape(-1, width) for row in rows]
    for i in range(counts[0]):
        entries = [t[i] for t in tables]
        if len({e[1:].tobytes() for e in entries}) > 1:
            return (
                f"{labels[i]} has a different shape or dtype on different ranks; every rank "
                "must pass the same parameters in the same order"
            )
        flags = [int(e[0]) for e in entries]
        if len(set(flags)) > 1:
            have = [r for r, f in enumerate(flags) if f]
            lack = [r for r, f in enumerate(flags) if not f]
            return (
                f"{labels[i]} has a {what} on ranks {have} but None on ranks {lack}; give it "
                f"one on every rank (zeros if it took no part in the loss) or on none"
            )
    return "the ranks disagree about the parameters"


def _buckets(datas: list[np.ndarray], chosen: list[int]) -> dict[np.dtype, list[int]]:
    """The indices in ``chosen``, grouped by the element type they travel in."""
    buckets: dict[np.dtype, list[int]] = {}
    for i in chosen:
        buckets.setdefault(real_dtype(datas[i].dtype), []).append(i)
    return buckets


def _real_size(data: np.ndarray) -> int:
    """The number of reals in ``data`` (two per complex number)."""
    return int(data.size) * (2 if data.dtype.kind == "c" else 1)


def _flat_view(buffer: np.ndarray, offset: int, data: np.ndarray) -> np.ndarray:
    """``buffer``'s part for ``data``'s elements, shaped like ``data`` (C order)."""
    part = buffer[offset : offset + _real_size(data)]
    if data.dtype.kind == "c":
        part = part.view(data.dtype)
    return part.reshape(data.shape)


def allreduce_gradients(params: Any, comm: Any = None, *, average: bool = True) -> None:
    """Average (or sum) every parameter's ``.grad`` across the ranks of ``comm``, in place.

    Collective: every rank calls it with the same parameters in the same order. The
    gradients are packed into one flat buffer per element type and reduced with one
    ``Allreduce`` each, then copied back into the gradient arrays (which stay the same
    objects).

    Parameters
    ----------
    params : iterable of Parameter, or of parameter-group dicts
        The parameters whose gradients to reduce (``optimizer.param_groups`` works too).
    comm : mpi4py.MPI.Intracomm, optional
        The ranks to reduce over; ``MPI.COMM_WORLD`` by default.
    average : bool, default True
        Divide the sum by the number of ranks (``sum / N`` in the gradient's type), giving
        the mean; with ``False`` the gradients become the sum.

    Raises
    ------
    TypeError, ValueError
        On the rank whose input is wrong (a gradient of another shape or dtype than its
        parameter, or not an array), naming the parameter. The other ranks raise
        :class:`OtherRankTypeError` / :class:`OtherRankValueError`, naming that rank. A
        parameter whose gradient is ``None`` on some ranks but not on others, or parameters
        that differ between ranks, are a ``ValueError`` on every rank. In every case no
        gradient has changed on any rank.

    Notes
    -----
    A parameter whose gradient is ``None`` on every rank keeps ``None``. float16 and
    bfloat16 gradients are summed in float32 (MPI cannot add 16-bit floats), divided by
    ``N`` in float32 and rounded once to their type: this is also what numpy does for
    ``(g0 + g1) / 2`` in float16 when the sum is exact. Complex gradients are reduced as
    pairs of reals, and each part multiplied by ``1 / N``, which is how numpy computes a
    complex ``sum / N``. The flat buffers are kept between calls (one per element type).
    """
    comm = communicator(comm)
    with _buffers_lock:
        error: BaseException | None = None
        grads: list[np.ndarray | None] = []
        datas: list[np.ndarray] = []
        labels: list[str] = []
        shared = None
        try:
            items = _param_list(params)
            labels = [_label(i, p) for i, p in enumerate(items)]
            grads = [_checked_grad(i, p) for i, p in enumerate(items)]
            datas = [p.data for p in items]
            if not isinstance(average, (bool, np.bool_)):
                raise TypeError(f"average must be a bool, got {type(average).__name__}")
            shared = _signature(int(average), grads, datas)
        except BaseException as caught:  # interrupts too: the other ranks must hear of it
            error = caught
        agree(
            comm,
            error,
            shared,
            lambda rows: _describe(labels, rows, "gradient", "average"),
            operation="allreduce_gradients",
        )
        from mpi4py import MPI

        ranks = comm.Get_size()
        present = {i: g for i, g in enumerate(grads) if g is not None}
        for dtype, indices in _buckets(datas, list(present)).items():
            transport = transport_dtype(dtype)
            sizes = [_real_size(datas[i]) for i in indices]
            buffer = _buffer(transport, sum(sizes))
            offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            for i, offset in zip(indices, offsets):
                np.copyto(_flat_view(buffer, offset, datas[i]), present[i], casting="unsafe")
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            if average:
                runs = [
                    (offset, offset + size)
                    for i, offset, size in zip(indices, offsets, sizes)
                    if datas[i].dtype.kind == "c"
                ]
                mean_in_place(buffer, ranks, runs)
            with np.errstate(over="ignore"):  # a float16 mean may overflow, as in numpy
                for i, offset in zip(indices, offsets):
                    np.copyto(present[i], _flat_view(buffer, offset, datas[i]), casting="unsafe")


def broadcast_parameters(params: Any, comm: Any = None, *, root: int = 0) -> None:
    """Copy every parameter's ``.data`` from rank ``root`` to all ranks, in place.

    Collective. Use it once after building the model, so that every rank starts from the
    same values (data parallelism and :class:`ShardedAdamax` assume they do).

    Parameters
    ----------
    params : iterable of Parameter, or of parameter-group dicts
        The same parameters, in the same order, on every rank.
    comm : mpi4py.MPI.Intracomm, optional
        ``MPI.COMM_WORLD`` by default.
    root : int, default 0
        The rank whose values everyone gets.

    Raises
    ------
    TypeError, ValueError
        As :func:`allreduce_gradients`, when the parameters differ between ranks or are not
        parameters; nothing changes on any rank.
    """
    comm = communicator(comm)
    with _buffers_lock:
        error: BaseException | None = None
        datas: list[np.ndarray] = []
        labels: list[str] = []
        shared = None
        try:
            root = checked_root(root, comm)
            items = _param_list(params)
            labels = [_label(i, p) for i, p in enumerate(items)]
            datas = [_checked_data(i, p) for i, p in enumerate(items)]
            for label, data in zip(labels, datas):
                if not data.flags.writeable:
                    raise ValueError(f"{label}: .data is read-only (not writeable)")
            shared = _signature(root, datas, datas)
        except BaseException as caught:  # interrupts too: the other ranks must hear of it
            error = caught
        agree(
            comm,
            error,
            shared,
            lambda rows: _describe(labels, rows, "value", "root"),
            operation="broadcast_parameters",
        )
        mine = comm.Get_rank() == root
        for dtype, indices in _buckets(datas, list(range(len(datas)))).items():
            bits = np.dtype(f"u{dtype.itemsize}")
            sizes = [_real_size(datas[i]) for i in indices]
            # Copied as raw bits: a broadcast must not round or canonicalise anything.
            buffer = _buffer(bits, sum(sizes))
            typed = buffer.view(dtype)
            offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            if mine:
                for i, offset in zip(indices, offsets):
                    np.copyto(_flat_view(typed, offset, datas[i]), datas[i])
            comm.Bcast(buffer, root=root)
            if not mine:
                for i, offset in zip(indices, offsets):
                    np.copyto(datas[i], _flat_view(typed, offset, datas[i]))
