"""adamax_rs.distributed: data-parallel training and ZeRO-1 sharded optimizer state, on MPI.

Needs mpi4py and an MPI library (``pip install "adamax_rs[mpi]"`` gives both, with MPICH's
``mpiexec``); ``import adamax_rs`` never imports them, and this package imports mpi4py only
when one of its functions first runs. Launch a script with ``mpiexec -n 4 python train.py``.

- :func:`allreduce_gradients`: average ``.grad`` over the ranks, for any optimizer.
- :func:`broadcast_parameters`: give every rank rank 0's parameter values.
- :class:`ShardedAdamax`: Adamax with each rank keeping 1/N of the state, with results
  identical to a single process.
- :func:`save_checkpoint`, :func:`load_checkpoint`: collective checkpoints (rank 0 writes,
  every rank reads), interchangeable with single-process ones.

Every function checks its input on each rank and lets the ranks agree before any data moves:
a bad input on one rank raises on every rank (:class:`OtherRankError` on the others), and
nothing changes anywhere.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, save_checkpoint
from .errors import OtherRankError, OtherRankTypeError, OtherRankValueError
from .gradients import allreduce_gradients, broadcast_parameters
from .sharded_adamax import ShardedAdamax

__all__ = [
    "OtherRankError",
    "OtherRankTypeError",
    "OtherRankValueError",
    "ShardedAdamax",
    "allreduce_gradients",
    "broadcast_parameters",
    "load_checkpoint",
    "save_checkpoint",
]
