"""mpi4py, imported the first time a distributed function runs (``import adamax_rs`` never
imports it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["communicator"]

INSTALL_HINT = (
    "adamax_rs.distributed needs mpi4py and an MPI library: pip install 'adamax_rs[mpi]' "
    "(mpi4py with the mpich wheel), or install mpi4py built against your cluster's MPI"
)


def communicator(comm: Any) -> MPI.Intracomm:
    """``comm``, or ``MPI.COMM_WORLD`` for ``None``; a ``TypeError`` for anything that is not
    an intracommunicator (this check is local: it runs before any rank could be told)."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(
            f"comm must be an mpi4py intracommunicator such as MPI.COMM_WORLD, got "
            f"{type(comm).__name__}"
        )
    return comm
