"""Agreeing on a verdict before any data moves.

Every collective operation here first checks its input locally, then runs :func:`agree`: one
small ``Allgather`` of the operation's name, an error code and a digest of whatever must be
the same on every rank (hyperparameters, which parameters have gradients, shapes). If any rank
failed, the ranks are in different operations, or the digests differ, every rank raises, and
all of them raise before the first byte of data is exchanged. So a bad input can neither leave
a rank waiting in a collective that the others skipped (a deadlock) nor let some ranks update
while others do not (divergence).

The local phase catches every exception, ``KeyboardInterrupt`` and ``SystemExit`` included:
a rank that left without agreeing would leave the others waiting forever. The rank where it
happened raises it again, unchanged, once the others know.

The operation's name is part of the agreement because the agreement messages of two
operations look alike: a rank in ``step`` while another is in ``state_dict`` (two threads
calling collectives in different orders, say) would otherwise pair up and go on into
exchanges that do not match.

Only on failure is more exchanged: the failing rank's message, and the full rows of the
values that differ, so that the error can say what differs where.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Callable

import numpy as np

from .errors import OtherRankError, OtherRankTypeError, OtherRankValueError

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["agree", "checked_root", "describe_root", "shape_row"]

_OK, _TYPE, _VALUE, _OTHER, _INTERRUPTED = 0, 1, 2, 3, 4
_PEER_ERRORS: dict[int, type[OtherRankError]] = {
    _TYPE: OtherRankTypeError,
    _VALUE: OtherRankValueError,
    _OTHER: OtherRankError,
    _INTERRUPTED: OtherRankError,
}


def _code(error: BaseException | None) -> int:
    if error is None:
        return _OK
    if isinstance(error, TypeError):
        return _TYPE
    if isinstance(error, ValueError):
        return _VALUE
    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit, GeneratorExit
        return _INTERRUPTED
    return _OTHER


def _text_row(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)


def digest(values: np.ndarray) -> int:
    """A 63-bit digest of an array's bytes, the same on every rank for the same values."""
    raw = hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=8).digest()
    return int.from_bytes(raw, "little") >> 1


def _broadcast_text(comm: MPI.Intracomm, root: int, text: str) -> str:
    data = np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)
    length = np.array([data.size], dtype=np.int64)
    comm.Bcast(length, root=root)
    buffer = data.copy() if comm.Get_rank() == root else np.empty(int(length[0]), np.uint8)
    comm.Bcast(buffer, root=root)
    return buffer.tobytes().decode("utf-8", "replace")


def gather_rows(comm: MPI.Intracomm, row: np.ndarray) -> list[np.ndarray]:
    """Every rank's int64 ``row`` (lengths may differ), on every rank."""
    mine = np.ascontiguousarray(row, dtype=np.int64)
    lengths = np.empty(comm.Get_size(), np.int64)
    comm.Allgather(np.array([mine.size], np.int64), lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    table = np.empty(int(offsets[-1]), np.int64)
    comm.Allgatherv(mine, [table, (lengths.tolist(), offsets[:-1].tolist())])
    return [table[offsets[r] : offsets[r + 1]] for r in range(comm.Get_size())]


def agree(
    comm: MPI.Intracomm,
    error: BaseException | None,
    shared: np.ndarray | None = None,
    describe: Callable[[list[np.ndarray]], str] | None = None,
    *,
    operation: str,
) -> None:
    """Raise on every rank if ``error`` is set on any rank, the ranks are in different
    operations, or ``shared`` differs between ranks.

    Collective: every rank of ``comm`` must call it at the same point.

    Parameters
    ----------
    comm : MPI.Intracomm
        The ranks that must agree.
    error : BaseException or None
        This rank's local verdict: the exception its checks raised (of any kind, interrupts
        included), or ``None``.
    shared : numpy.ndarray of int64, optional
        Values that must be the same on every rank (compared by digest).
    describe : callable, optional
        Given every rank's ``shared`` row, returns the message saying what differs.
    operation : str
        The name of the collective operation, as the user called it (``"step"``).

    Raises
    ------
    BaseException
        On a failing rank, its own ``error``, unchanged.
    ValueError
        On every rank, when the ranks are in different operations (checked first: nothing
        else the ranks sent can be compared then).
    OtherRankTypeError, OtherRankValueError, OtherRankError
        On the other ranks, when some rank failed: the class matches the first failing
        rank's error, and the message quotes it.
    ValueError
        On every rank, when no rank failed but ``shared`` differs between ranks.
    """
    size = comm.Get_size()
    local = np.array(
        [
            digest(_text_row(operation)),
            _code(error),
            digest(shared) if shared is not None and error is None else 0,
        ],
        np.int64,
    )
    table = np.empty((size, 3), np.int64)
    comm.Allgather(local, table)
    if len(set(table[:, 0].tolist())) > 1:
        rows = gather_rows(comm, _text_row(operation))
        names = [row.astype(np.uint8).tobytes().decode("utf-8", "replace") for row in rows]
        listed = ", ".join(f"rank {r}: {name}" for r, name in enumerate(names))
        mismatch = ValueError(
            f"the ranks are in different collective operations ({listed}), so none of them "
            "ran and nothing changed; every rank must call the same collective operations in "
            "the same order (from one thread at a time)"
        )
        if error is not None:
            raise error  # this rank's own failure (an interrupt, say) comes first here
        raise mismatch
    table = table[:, 1:]
    failed = [int(r) for r in np.flatnonzero(table[:, 0])]
    if failed:
        root = failed[0]
        text = _broadcast_text(comm, root, f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        also = f" (ranks {', '.join(map(str, failed[1:]))} failed too)" if failed[1:] else ""
        kind = _PEER_ERRORS[int(table[root, 0])]
        raise kind(f"rank {root} of {size} failed{also}, so nothing changed: {text}", tuple(failed))
    if shared is not None and len(set(table[:, 1].tolist())) > 1:
        rows = gather_rows(comm, shared)
        message = describe(rows) if describe is not None else "the ranks disagree"
        raise ValueError(message)


def checked_root(root: object, comm: MPI.Intracomm) -> int:
    """``root`` if it is a rank of ``comm``: a ``TypeError`` unless an int, else a
    ``ValueError`` unless in ``[0, size)``."""
    if isinstance(root, bool) or not isinstance(root, int):
        raise TypeError(f"root must be an int, got {type(root).__name__}")
    if not 0 <= root < comm.Get_size():
        raise ValueError(f"root must be a rank in [0, {comm.Get_size()}), got {root}")
    return root


def shape_row(shape: tuple[int, ...]) -> list[int]:
    """A shape as 9 values for a row that the ranks compare: the number of axes, a digest of
    the whole shape, and the first 7 sizes (padded with -1) for messages."""
    first = list(shape)[:7] + [-1] * (7 - min(7, len(shape)))
    return [len(shape), digest(np.array(shape, np.int64)), *first]


def describe_root(rows: list[np.ndarray]) -> str:
    """The message when the ranks passed different roots (rows of one value: the root)."""
    listed = ", ".join(f"rank {r}: {int(row[0])}" for r, row in enumerate(rows))
    return f"root differs between ranks ({listed}); pass the same root on every rank"
