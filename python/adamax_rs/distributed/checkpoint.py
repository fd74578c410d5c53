"""Checkpoints in data-parallel training: rank 0 writes, every rank reads.

``adamax_rs.save_checkpoint`` and ``adamax_rs.load_checkpoint`` are single-process: called on
every rank, every rank would write the same file. These collective versions write once, and
make every rank raise if the write or any rank's read fails.
"""

from __future__ import annotations

from os import PathLike
from typing import Any, Union

import numpy as np

from ..checkpoint import load_checkpoint as _load_checkpoint
from ..checkpoint import save_checkpoint as _save_checkpoint
from ..optimizer import Optimizer
from ._mpi import communicator
from .agreement import agree, checked_root, describe_root
from .sharded_adamax import ShardedAdamax

__all__ = ["save_checkpoint", "load_checkpoint"]

PathLikeStr = Union[str, "PathLike[str]"]


def save_checkpoint(
    optimizer: Optimizer, path: PathLikeStr, comm: Any = None, *, root: int = 0
) -> None:
    """Write ``optimizer``'s checkpoint to ``path`` from rank ``root`` only. Collective.

    Parameters
    ----------
    optimizer : ShardedAdamax or Optimizer
        A :class:`ShardedAdamax` (its state is gathered on ``root``, and the file is the one
        a single-process ``adamax_rs.Adamax`` would write), or an optimizer that holds the
        same full state on every rank (data parallelism with :func:`allreduce_gradients`).
    path : str or os.PathLike
        The file, as for ``adamax_rs.save_checkpoint``.
    comm : mpi4py.MPI.Intracomm, optional
        For an optimizer that is not a ``ShardedAdamax``: ``MPI.COMM_WORLD`` by default.
    root : int, default 0
        The rank that writes.

    Raises
    ------
    TypeError, ValueError
        On every rank, if ``root`` is not an int, not a rank of ``comm``, or not the same on
        every rank; nothing is written.
    Exception
        Whatever ``adamax_rs.save_checkpoint`` raises on ``root``; the other ranks raise an
        :class:`OtherRankError` subclass. When this returns, the file is complete.
    """
    if isinstance(optimizer, ShardedAdamax):
        optimizer.save_checkpoint(path, root=root)
        return
    comm = communicator(comm)
    error: BaseException | None = None
    try:
        root = checked_root(root, comm)
    except BaseException as caught:
        error = caught
    agree(
        comm,
        error,
        np.array([root if error is None else -1], np.int64),
        describe_root,
        operation="save_checkpoint",
    )
    try:
        if comm.Get_rank() == root:
            _save_checkpoint(optimizer, path)
    except BaseException as caught:  # interrupts too: the other ranks must hear of it
        error = caught
    # Also a barrier: when this returns on any rank, the file is complete.
    agree(comm, error, operation="save_checkpoint (writing)")


def load_checkpoint(optimizer: Optimizer, path: PathLikeStr, comm: Any = None) -> None:
    """Read ``path`` into ``optimizer`` on every rank. Collective.

    Every rank reads the file (it must be on a file system they all see). If any rank
    fails, every rank raises and no optimizer changes.

    Parameters
    ----------
    optimizer : ShardedAdamax or Optimizer
        A :class:`ShardedAdamax` keeps its shard of the checkpoint, which may come from a
        single-process ``Adamax`` or from a ``ShardedAdamax`` on any number of ranks; any other
        optimizer loads it whole, as ``adamax_rs.load_checkpoint`` does.
    path : str or os.PathLike
        The checkpoint file.
    comm : mpi4py.MPI.Intracomm, optional
        For an optimizer that is not a ``ShardedAdamax``: ``MPI.COMM_WORLD`` by default.
    """
    if isinstance(optimizer, ShardedAdamax):
        optimizer.load_checkpoint(path)
        return
    comm = communicator(comm)
    error: BaseException | None = None
    backup = None
    try:
        backup = optimizer.state_dict()  # a full copy: it may run out of memory
        _load_checkpoint(optimizer, path)
    except BaseException as caught:  # interrupts too: the other ranks must hear of it
        error = caught
    try:
        agree(comm, error, operation="load_checkpoint")
    except BaseException:
        if error is None and backup is not None:
            optimizer.load_state_dict(backup)  # another rank failed: undo this rank's load
        raise
