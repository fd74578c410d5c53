"""`ShardedAdamax`: Adamax with its state split across MPI ranks (ZeRO stage 1)."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

from .. import functional
from .._gradient_check import check_gradient_fits
from ..adamax import Adamax
from ..checkpoint import load_checkpoint as _load_checkpoint
from ..checkpoint import save_checkpoint as _save_checkpoint
from ..dtypes import BLOCKWISE, is_half, state_dtype_for
from ._mpi import communicator
from .agreement import agree, checked_root, describe_root
from .consistency import (
    describe_layouts,
    describe_loaded,
    describe_step,
    layout_row,
    loaded_row,
    step_row,
)
from .layout import ShardLayout, Slot, flat_real, memory_order
from .mean import mean_in_place
from .shard import HYPERPARAMETER_KEYS, Shard, hyperparameters

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["ShardedAdamax"]

PathLikeStr = Union[str, "PathLike[str]"]


def _abort(comm: MPI.Intracomm, error: BaseException) -> None:
    """Stop every rank: this one failed after data moved, so the ranks now differ."""
    rank, size = comm.Get_rank(), comm.Get_size()
    sys.stderr.write(
        f"adamax_rs.distributed: rank {rank} of {size} failed while the ranks were exchanging "
        f"data ({type(error).__name__}: {error}); the ranks can no longer be kept identical, "
        "so the job is aborted\n"
    )
    traceback.print_exception(type(error), error, error.__traceback__)
    sys.stderr.flush()
    # The message is in the pipe to the launcher, but MPICH's launcher can tear the job down
    # on Abort before it has passed that on (the whole message was lost in 2 runs of 15 on a
    # loaded machine): a moment for it to drain costs nothing next to a job that is ending.
    time.sleep(_ABORT_GRACE_SECONDS)
    comm.Abort(1)


#: Seconds a failing rank waits, after writing why, before it aborts the job.
_ABORT_GRACE_SECONDS = 0.5


class ShardedAdamax(Adamax):
    r"""Adamax over MPI ranks, each keeping 1/N of the optimizer state (ZeRO stage 1).

    Every rank builds it with the same parameters (same shapes, dtypes and order, and the same
    values: see :func:`broadcast_parameters`), computes gradients on its own data, and calls
    :meth:`step`. A step sums the gradients with ``Reduce_scatter`` so that each rank receives
    only its shard, divides by the number of ranks, updates its shard of the parameters with
    Adamax, and shares the updated values with ``Allgatherv``. Every rank then holds the same
    parameters, bit for bit: those a single process would compute with
    ``adamax_rs.Adamax`` from the mean gradient.

    Parameters
    ----------
    params : iterable of Parameter or iterable of dict
        As for :class:`adamax_rs.Adamax`. Each parameter's array must be C- or F-contiguous:
        a rank's shard is a view of its memory.
    comm : mpi4py.MPI.Intracomm, optional
        The ranks to shard over; ``MPI.COMM_WORLD`` by default.
    **adamax_kwargs
        ``lr``, ``betas``, ``eps``, ``weight_decay``, ``maximize``, ``eps_inside_max``,
        ``decoupled_weight_decay``, ``state_dtype`` (not ``"8bit"``: a ``ValueError``),
        ``master_weights``, ``stochastic_rounding``: as for :class:`adamax_rs.Adamax`, by
        keyword. (Stochastic rounding draws from each element's values, not its position, so
        a sharded run rounds exactly as a single process does.)

    Attributes
    ----------
    param_groups : list of dict
        As in ``Adamax``: changes (a learning-rate schedule) take effect at the next step.
        They must be the same on every rank; a step refuses to run if they differ.
    comm : mpi4py.MPI.Intracomm
        The communicator.
    shard_optimizer : adamax_rs.Adamax
        The Adamax that updates this rank's pieces (1-D views of the parameters); its
        ``state`` is this rank's shard of the state. ``state`` itself stays empty: the full
        state exists only in :meth:`state_dict`.

    Notes
    -----
    How the work is cut: the parameters of all groups, in order, are flattened (each in its
    memory order) and concatenated, one flat buffer per element type (float32, float64, ...;
    complex parameters count as pairs of reals). Each such buffer is cut into N contiguous
    ranges of equal length to within one element, one per rank. So each rank holds 1/N of
    the state of each type; a parameter may be split between ranks, and a range may span
    groups.

    The mean gradient is ``sum / N`` in the gradient's type, the sum over ranks computed by
    MPI; float16 and bfloat16 gradients are summed and divided in float32 and rounded once.
    Whenever that sum is exact (for example gradients that are small multiples of a power of
    two), the result is the same, bit for bit, as a single process stepping
    ``adamax_rs.Adamax`` with ``sum(grads) / N``.

    Every collective method (the constructor, :meth:`step`, :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`add_param_group`, :meth:`save_checkpoint`,
    :meth:`load_checkpoint`) checks its input on each rank first, then lets the ranks agree
    with one small ``Allgather``; if any rank's input is wrong, every rank raises (the
    culprit its own ``TypeError``/``ValueError``, the others an
    :class:`~adamax_rs.distributed.OtherRankError` subclass naming it), nothing changes on
    any rank, and the next good call works. If a rank fails *after* data moved (it runs out
    of memory while creating its state, say), the ranks could no longer be kept identical:
    the job is aborted with ``MPI_Abort`` rather than left to hang or diverge.

    Each rank keeps, besides its 1/N of the state, one flat buffer of the gradients' size
    (plus 1/N of it), reused every step: see :meth:`local_buffer_bytes`.

    Examples
    --------
    Launched with ``mpiexec -n 2 python train.py``::

        from adamax_rs import Parameter
        from adamax_rs.distributed import ShardedAdamax

        w = Parameter(np.zeros((1000, 10), np.float32))
        opt = ShardedAdamax([w], lr=1e-3)
        w.grad = local_gradient(w.data)   # from this rank's part of the batch
        opt.step()                        # every rank now holds the same w
    """

    def __init__(self, params: Any, comm: Any = None, **adamax_kwargs: Any) -> None:
        if comm is not None and isinstance(comm, (int, float)):
            raise TypeError(
                f"comm must be an mpi4py intracommunicator, got {type(comm).__name__}; "
                "pass the hyperparameters by keyword (ShardedAdamax(params, lr=...))"
            )
        self.comm = communicator(comm)
        self._collective_lock = threading.RLock()
        self._phase_seconds: dict[str, float] = {}
        error: BaseException | None = None
        shared = None
        try:
            super().__init__(params, **adamax_kwargs)
            if self.state_dtype == BLOCKWISE:
                raise ValueError(
                    "ShardedAdamax does not support state_dtype='8bit': a shard can start in "
                    "the middle of a block of 256, so its blocks and scales would not be the "
                    "single process's, and its state dict has no place for codes and scales; "
                    "use state_dtype='bfloat16' (rounded stochastically by default) to save "
                    "memory, or adamax_rs.Adamax"
                )
            layout = ShardLayout.of([g["params"] for g in self.param_groups], self.comm.Get_size())
            shared = layout_row(layout, self._options())
            # Built before the agreement (its buffers are the largest allocation here): a rank
            # that cannot build its shard fails with the others, instead of leaving them to
            # wait for it in the next collective call.
            self._shard = self._new_shard(
                layout, [p.data for g in self.param_groups for p in g["params"]]
            )
        except BaseException as caught:  # interrupts too: the other ranks must hear of it
            error = caught
        agree(self.comm, error, shared, describe_layouts, operation="ShardedAdamax()")

    # -- what every method checks -------------------------------------------------------------

    @property
    def shard_optimizer(self) -> Adamax:
        """The Adamax over this rank's pieces (its state is this rank's shard)."""
        return self._shard.inner

    def _options(self) -> dict[str, Any]:
        return {
            "state_dtype": self.state_dtype,
            "master_weights": self.master_weights,
            "stochastic_rounding": self.stochastic_rounding,
        }

    def _new_shard(
        self,
        layout: ShardLayout,
        arrays: list[np.ndarray],
        groups: list[dict[str, Any]] | None = None,
    ) -> Shard:
        """A shard of ``layout`` over ``arrays``, with the hyperparameters of ``groups``
        (``param_groups`` by default)."""
        params = [p for g in self.param_groups for p in g["params"]]
        hyper = [hyperparameters(g) for g in (groups or self.param_groups)]
        return Shard(layout, self.comm.Get_rank(), params, arrays, hyper, self._options())

    def _check_structure(self) -> None:
        """Raise unless ``param_groups`` still lists the parameters the shard was built for."""
        layout = self._shard.layout
        if len(self.param_groups) != len(layout.group_sizes):
            raise ValueError(
                f"the optimizer has {len(self.param_groups)} parameter groups but was built "
                f"with {len(layout.group_sizes)}; add groups with add_param_group, which "
                "re-shards the state on every rank"
            )
        params = self._shard.params
        number = 0
        for g, group in enumerate(self.param_groups):
            listed = group.get("params")
            if (
                not isinstance(listed, list)
                or len(listed) != layout.group_sizes[g]
                or any(p is not params[number + i] for i, p in enumerate(listed))
            ):
                raise ValueError(
                    f"group {g}: its parameter list changed since the optimizer was built; "
                    "add parameters with add_param_group"
                )
            number += len(listed)

    def _checkedhyperparameters(self) -> list[dict[str, Any]]:
        out = []
        for g, group in enumerate(self.param_groups):
            for key in HYPERPARAMETER_KEYS:
                if key not in group:
                    raise ValueError(f"group {g}: missing hyperparameter {key!r}")
            hyper = hyperparameters(group)
            try:
                # The public functional form checks types and ranges exactly as a step does;
                # with no arrays it changes nothing.
                functional.adamax([], [], [], [], [], **hyper)
            except (TypeError, ValueError) as error:
                raise type(error)(f"group {g}: {error}") from None
            out.append(hyper)
        return out

    def _rebound_array(self, slot: Slot, data: Any) -> np.ndarray:
        """Check an array that replaced a parameter's ``.data`` since the last step."""
        where = slot.where()
        if not isinstance(data, np.ndarray):
            raise TypeError(f"{where}: .data must be a numpy.ndarray, got {type(data).__name__}")
        if data.dtype != slot.dtype:
            raise TypeError(
                f"{where}: .data was replaced by an array of dtype {data.dtype}, the optimizer "
                f"was built for {slot.dtype}"
            )
        if data.shape != slot.shape:
            raise ValueError(
                f"{where}: .data was replaced by an array of shape {list(data.shape)}, the "
                f"optimizer was built for {list(slot.shape)}"
            )
        if data.size > 1 and memory_order(data, where) != slot.order:
            raise ValueError(
                f"{where}: .data was replaced by an array in another memory order; assign into "
                "the parameter instead (p.data[...] = values)"
            )
        if not data.flags.aligned:
            raise TypeError(f"{where}: .data is not aligned to its element size")
        return data

    def _replaced_arrays(self) -> dict[int, np.ndarray]:
        """The parameters whose ``.data`` was replaced since it was last checked, checked."""
        shard = self._shard
        replaced: dict[int, np.ndarray] = {}
        for slot, param, array in zip(shard.layout.slots, shard.params, shard.arrays):
            if param.data is not array:
                replaced[slot.number] = self._rebound_array(slot, param.data)
        return replaced

    def _current_arrays(self, replaced: dict[int, np.ndarray]) -> list[np.ndarray]:
        return [replaced.get(n, a) for n, a in enumerate(self._shard.arrays)]

    def _checked_gradients(self) -> list[np.ndarray | None]:
        """Each parameter's gradient (or ``None``), checked."""
        shard = self._shard
        grads: list[np.ndarray | None] = []
        for slot, param in zip(shard.layout.slots, shard.params):
            where = slot.where()
            data = param.data
            if not data.flags.writeable:
                raise ValueError(f"{where}: the parameter is read-only (not writeable)")
            grad = param.grad
            if grad is None:
                grads.append(None)
                continue
            if grad is data:
                raise ValueError(f"{where}: the gradient is the parameter array itself")
            check_gradient_fits(where, grad, data)
            if np.may_share_memory(grad, data):
                raise ValueError(f"{where}: the parameter shares memory with the gradient")
            grads.append(grad)
        return grads

    def _rebind(self, replaced: dict[int, np.ndarray]) -> None:
        """Point the pieces of replaced parameters at their new arrays."""
        shard = self._shard
        for number, data in replaced.items():
            shard.arrays[number] = data
        for piece, piece_param in zip(shard.pieces, shard.piece_params):
            if piece.slot.number in replaced:
                flat = flat_real(replaced[piece.slot.number], piece.slot.order)
                piece_param.data = flat[piece.start : piece.stop]

    # -- the step -----------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Adamax step on the mean gradient over the ranks. Collective.

        Parameters
        ----------
        closure : callable, optional
            Called once on each rank before the update (it may compute this rank's gradients);
            its return value is returned. If it raises on any rank, no rank updates.

        Returns
        -------
        object
            What ``closure`` returned, or ``None``.

        Raises
        ------
        TypeError, ValueError
            On the rank whose gradients or hyperparameters are wrong, with the messages of
            ``Adamax.step``; the other ranks raise :class:`OtherRankTypeError` or
            :class:`OtherRankValueError` naming it. A ``ValueError`` on every rank when a
            parameter has a gradient on some ranks but ``None`` on others, or the
            hyperparameters differ between ranks. In every case nothing changed on any rank.
        """
        with self._collective_lock:
            loss = None
            error: BaseException | None = None
            grads: list[np.ndarray | None] = []
            replaced: dict[int, np.ndarray] = {}
            hyper: list[dict[str, Any]] = []
            shared = None
            try:
                if closure is not None:
                    loss = closure()
                self._check_structure()
                hyper = self._checkedhyperparameters()
                replaced = self._replaced_arrays()
                grads = self._checked_gradients()
                shared = step_row(hyper, grads)
            except BaseException as caught:  # interrupts too: the other ranks must hear of it
                error = caught
            agree(self.comm, error, shared, self._describe_step, operation="step")
            self._rebind(replaced)
            if any(g is not None for g in grads):
                try:
                    self._exchange_and_update(grads, hyper)
                except BaseException as failure:
                    _abort(self.comm, failure)
            return loss

    def _timed(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        self._phase_seconds[phase] = self._phase_seconds.get(phase, 0.0) + now - started
        return now

    def _exchange_and_update(
        self, grads: list[np.ndarray | None], hyper: list[dict[str, Any]]
    ) -> None:
        from mpi4py import MPI

        shard, comm = self._shard, self.comm
        ranks = comm.Get_size()
        if ranks == 1:
            self._update_alone(grads, hyper)
            return
        t = time.perf_counter()
        active = [any(grads[s.number] is not None for s in b.slots) for b in shard.buckets]
        for bucket, on in zip(shard.buckets, active):
            if not on:
                continue
            for slot in bucket.slots:
                grad = grads[slot.number]
                if grad is not None:
                    np.copyto(slot.shaped(bucket.flat), grad, casting="unsafe")
            t = self._timed("pack", t)
            comm.Reduce_scatter(bucket.flat, bucket.shard_sum, bucket.counts, op=MPI.SUM)
            t = self._timed("reduce_scatter", t)
            mean_in_place(bucket.shard_sum, ranks, bucket.complex_runs)
            if bucket.shard_grad is not bucket.shard_sum:
                with np.errstate(over="ignore"):  # a float16 mean may overflow, as in numpy
                    np.copyto(bucket.shard_grad, bucket.shard_sum, casting="unsafe")
            t = self._timed("mean", t)
        for piece, piece_param, view in zip(shard.pieces, shard.piece_params, shard.piece_grads):
            piece_param.grad = view if grads[piece.slot.number] is not None else None
        for inner_group, values in zip(shard.inner.param_groups, hyper):
            inner_group.update(values)
        shard.inner.step()
        t = self._timed("update", t)
        for b, (bucket, on) in enumerate(zip(shard.buckets, active)):
            if not on:
                continue
            for piece, piece_param in zip(shard.pieces, shard.piece_params):
                if piece.slot.bucket == b and grads[piece.slot.number] is not None:
                    start = piece.slot.offset + piece.start
                    bucket.gathered[start : start + piece.size] = piece_param.data
            comm.Allgatherv(
                MPI.IN_PLACE, [bucket.gather_bits, (bucket.counts, bucket.displacements)]
            )
            t = self._timed("allgather", t)
            for slot in bucket.slots:
                begin, end = slot.offset, slot.offset + slot.size
                if grads[slot.number] is None or (bucket.lo <= begin and end <= bucket.hi):
                    continue  # not stepped, or all of it this rank's: updated in place already
                target = flat_real(shard.arrays[slot.number], slot.order)
                for a, b in ((begin, min(end, bucket.lo)), (max(begin, bucket.hi), end)):
                    if a < b:  # the parts other ranks updated
                        target[a - begin : b - begin] = bucket.gathered[a:b]
            t = self._timed("unpack", t)

    def _update_alone(self, grads: list[np.ndarray | None], hyper: list[dict[str, Any]]) -> None:
        """One rank: the mean is the gradient itself, and there is nobody to exchange with.
        The pieces are whole parameters; their gradients are views of the caller's arrays
        where the memory order allows, copies in the parameter's order otherwise."""
        shard = self._shard
        t = time.perf_counter()
        for piece, piece_param in zip(shard.pieces, shard.piece_params):
            slot, grad = piece.slot, grads[piece.slot.number]
            if grad is not None and not (
                grad.flags.aligned
                and (grad.flags.c_contiguous if slot.order == "C" else grad.flags.f_contiguous)
            ):
                grad = grad.flatten(order=slot.order)
            piece_param.grad = None if grad is None else flat_real(grad, slot.order)
        for inner_group, values in zip(shard.inner.param_groups, hyper):
            inner_group.update(values)
        shard.inner.step()
        self._timed("update", t)

    def _describe_step(self, rows: list[np.ndarray]) -> str:
        return describe_step(rows, len(self.param_groups), self._shard.layout.slots)

    # -- state --------------------------------------------------------------------------------

    def local_state_bytes(self) -> int:
        """The bytes of optimizer state held on this rank: about 1/N of the whole.

        Counts ``exp_avg``, ``exp_inf`` (and master copies) of this rank's pieces, for the
        parameters that have been stepped. Not collective.
        """
        total = 0
        for entry in self._shard.inner.state.values():
            total += sum(v.nbytes for v in entry.values() if isinstance(v, np.ndarray))
        return int(total)

    def local_buffer_bytes(self) -> int:
        """The bytes of the communication buffers kept on this rank between steps: one flat
        copy of the gradients (float32 for 16-bit ones) and this rank's range of the mean."""
        return self._shard.nbytes()

    def _gather_plan(self, root: int | None) -> _GatherPlan:
        """Every buffer that gathering the state (:meth:`_gather_state`) needs, allocated and
        filled with this rank's part. Not collective: it runs before the ranks agree, so that
        a rank that runs out of memory here fails with the others instead of leaving them
        waiting in the exchange."""
        shard = self._shard
        slots = shard.layout.slots
        steps = np.full(len(slots), -1, np.int64)
        entries = []
        for piece, piece_param in zip(shard.pieces, shard.piece_params):
            entry = shard.inner.state.get(piece_param)
            entries.append(entry or None)
            if entry:
                steps[piece.slot.number] = entry["step"]
        mine = root is None or self.comm.Get_rank() == root
        buckets: list[list[tuple[str, np.ndarray, np.ndarray | None]]] = []
        for b, bucket in enumerate(shard.buckets):
            state_dtype = state_dtype_for(bucket.dtype, self.state_dtype)
            keys = ["exp_avg", "exp_inf"]
            if self.master_weights and is_half(bucket.dtype):
                keys.append("master")
            per_key = []
            for key in keys:
                local = np.zeros(bucket.hi - bucket.lo, state_dtype)
                for piece, entry in zip(shard.pieces, entries):
                    if entry and piece.slot.bucket == b:
                        start = piece.slot.offset + piece.start - bucket.lo
                        local[start : start + piece.size] = entry[key]
                full = np.empty(sum(bucket.counts), state_dtype) if mine else None
                per_key.append((key, local, full))
            buckets.append(per_key)
        return _GatherPlan(root, steps, buckets)

    def _gather_state(self, plan: _GatherPlan) -> dict[int, dict[str, Any]] | None:
        """The state of every parameter, numbered as in ``Adamax.state_dict``, on every rank
        (``plan.root is None``) or only on ``plan.root`` (``None`` elsewhere). Collective; a
        failure here (an interrupt) aborts the job, since the ranks are mid-exchange."""
        try:
            return self._exchange_state(plan)
        except BaseException as failure:
            _abort(self.comm, failure)
            raise  # pragma: no cover (Abort does not return)

    def _exchange_state(self, plan: _GatherPlan) -> dict[int, dict[str, Any]] | None:
        from mpi4py import MPI

        shard, comm, root = self._shard, self.comm, plan.root
        comm.Allreduce(MPI.IN_PLACE, plan.steps, op=MPI.MAX)
        full_arrays: list[dict[str, np.ndarray]] = []
        for bucket, per_key in zip(shard.buckets, plan.buckets):
            arrays: dict[str, np.ndarray] = {}
            for key, local, full in per_key:
                bits = np.dtype(f"u{local.dtype.itemsize}")
                spec = (
                    None
                    if full is None
                    else [full.view(bits), (bucket.counts, bucket.displacements)]
                )
                if root is None:
                    comm.Allgatherv(local.view(bits), spec)
                else:
                    comm.Gatherv(local.view(bits), spec, root=root)
                if full is not None:
                    arrays[key] = full
            full_arrays.append(arrays)
        if not (root is None or comm.Get_rank() == root):
            return None
        state: dict[int, dict[str, Any]] = {}
        for slot in shard.layout.slots:
            if plan.steps[slot.number] < 0:
                continue
            entry_out: dict[str, Any] = {"step": int(plan.steps[slot.number])}
            for key, full in full_arrays[slot.bucket].items():
                entry_out[key] = slot.shaped(full)
            state[slot.number] = entry_out
        return state

    def state_dict(self) -> dict[str, Any]:
        """The full state, on every rank, in exactly ``adamax_rs.Adamax.state_dict()``'s format.

        Collective: the ranks exchange their shards (``Allgatherv``), so every rank briefly
        holds the whole state. A single-process ``Adamax`` over the same parameters, or a
        ``ShardedAdamax`` on any number of ranks, can load it.

        Returns
        -------
        dict
            ``{"state": {index: {"step", "exp_avg", "exp_inf"[, "master"]}},
            "param_groups": [...]}``, parameters numbered from 0 across groups; the arrays
            have their parameter's shape and memory order.
        """
        with self._collective_lock:
            error: BaseException | None = None
            plan = None
            try:
                self._check_structure()
                plan = self._gather_plan(None)
                groups = super().state_dict()["param_groups"]  # ``self.state`` is empty
            except BaseException as caught:  # interrupts too: the other ranks must hear of it
                error = caught
            agree(self.comm, error, operation="state_dict")
            assert plan is not None
            state = self._gather_state(plan)
            assert state is not None
            return {"state": state, "param_groups": groups}

    def _scratch(self) -> Adamax:
        """A single-process Adamax over the same parameters, with no state: it checks a full
        state dict exactly as ``Adamax.load_state_dict`` does."""
        groups = [{"params": g["params"]} for g in self.param_groups]
        return Adamax(groups, **self._options())

    def _install_from(self, load: Callable[[Adamax], None], operation: str) -> None:
        """Load into a scratch optimizer (:meth:`_scratch`) with ``load``, then (once every
        rank succeeded) keep this rank's slices of its state and its groups. Collective."""
        error: BaseException | None = None
        shard = None
        shared = None
        try:
            self._check_structure()
            scratch = self._scratch()
            arrays = self._current_arrays(self._replaced_arrays())
            load(scratch)
            shard = self._new_shard(self._shard.layout, arrays, scratch.param_groups)
            shard.load(scratch.state)
            shared = loaded_row(scratch)
        except BaseException as caught:  # interrupts too: the other ranks must hear of it
            error = caught
        agree(self.comm, error, shared, describe_loaded, operation=operation)
        assert shard is not None
        self._shard = shard
        self.param_groups = [
            {"params": mine["params"], **{k: v for k, v in saved.items() if k != "params"}}
            for saved, mine in zip(scratch.param_groups, self.param_groups)
        ]

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a full state dict (from ``Adamax.state_dict()`` or :meth:`state_dict`, on any
        number of ranks) and keep this rank's shard. Collective.

        Every rank passes the whole dict; it is checked exactly as
        ``adamax_rs.Adamax.load_state_dict`` checks it, and the step counts and
        hyperparameters must be the same on every rank.

        Raises
        ------
        TypeError, ValueError
            As ``Adamax.load_state_dict`` on the rank where the dict is wrong, and an
            ``OtherRankError`` subclass on the others; nothing changes on any rank.
        """
        with self._collective_lock:
            self._install_from(
                lambda scratch: scratch.load_state_dict(state_dict), "load_state_dict"
            )

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a parameter group, as ``Adamax.add_param_group``. Collective.

        The parameters are appended to the flattened order, so the shard boundaries move:
        the state is gathered and re-sharded (every rank briefly holds the whole state).
        """
        if not hasattr(self, "_shard"):  # called while the base class builds the groups
            super().add_param_group(param_group)
            return
        with self._collective_lock:
            error: BaseException | None = None
            layout = None
            shared = None
            plan = None
            shard = None
            replaced: dict[int, np.ndarray] = {}
            before = len(self.param_groups)
            try:
                self._check_structure()
                replaced = self._replaced_arrays()
                plan = self._gather_plan(None)
                super().add_param_group(param_group)
                layout = ShardLayout.of(
                    [g["params"] for g in self.param_groups], self.comm.Get_size()
                )
                shared = layout_row(layout, self._options())
                added = [p.data for p in self.param_groups[-1]["params"]]
                arrays = self._current_arrays(replaced) + added
                shard = self._new_shard(layout, arrays)
            except BaseException as caught:  # interrupts too: the other ranks must hear of it
                error = caught
            try:
                agree(self.comm, error, shared, describe_layouts, operation="add_param_group")
            except BaseException:
                del self.param_groups[before:]
                raise
            assert plan is not None and shard is not None
            self._rebind(replaced)
            full = self._gather_state(plan)
            assert full is not None
            try:
                by_param = {id(self._shard.params[n]): entry for n, entry in full.items()}
                shard.load(_ById(by_param))
            except BaseException as failure:  # the state moved: the ranks must not diverge
                _abort(self.comm, failure)
            self._shard = shard

    # -- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, path: PathLikeStr, *, root: int = 0) -> None:
        """Write the full state to ``path`` with ``adamax_rs.save_checkpoint``, from rank
        ``root`` only. Collective.

        The file is exactly what a single-process ``adamax_rs.Adamax`` over the same
        parameters would write (it records the optimizer as ``Adamax``), so
        ``adamax_rs.load_checkpoint`` loads it into one, and :meth:`load_checkpoint` into a
        ``ShardedAdamax`` on any number of ranks. Only ``root`` holds the whole state while
        writing. If the write fails, every rank raises.
        """
        with self._collective_lock:
            error: BaseException | None = None
            plan = None
            try:
                self._check_structure()
                root = checked_root(root, self.comm)
                plan = self._gather_plan(root)
            except BaseException as caught:  # interrupts too: the other ranks must hear of it
                error = caught
            agree(
                self.comm,
                error,
                np.array([root if error is None else -1], np.int64),
                describe_root,
                operation="save_checkpoint",
            )
            assert plan is not None
            state = self._gather_state(plan)
            del plan
            error = None
            if state is not None:
                try:
                    groups = super().state_dict()["param_groups"]
                    scratch = self._scratch()
                    scratch.load_state_dict({"state": state, "param_groups": groups})
                    del state
                    _save_checkpoint(scratch, path)
                except BaseException as caught:  # interrupts too: the others must hear of it
                    error = caught
            # Also a barrier: when this returns on any rank, the file is complete.
            agree(self.comm, error, operation="save_checkpoint (writing)")

    def load_checkpoint(self, path: PathLikeStr) -> None:
        """Read a checkpoint written by ``adamax_rs.save_checkpoint`` for an ``Adamax`` (or
        by :meth:`save_checkpoint`) and keep this rank's shard. Collective: every rank reads
        the file, so it must be visible to all of them (a shared file system)."""
        with self._collective_lock:
            self._install_from(lambda scratch: _load_checkpoint(scratch, path), "load_checkpoint")


@dataclass
class _GatherPlan:
    """The buffers of one gathering of the state, allocated before the ranks agree."""

    root: int | None
    steps: np.ndarray
    #: Per bucket, per state key: (key, this rank's range filled, the whole or ``None``).
    buckets: list[list[tuple[str, np.ndarray, np.ndarray | None]]]


class _ById(Mapping[Any, Mapping[str, Any]]):
    """A mapping keyed by object identity (parameters compare element-wise or by identity)."""

    def __init__(self, entries: Mapping[int, Mapping[str, Any]]) -> None:
        self._entries = entries

    def __getitem__(self, key: Any) -> Mapping[str, Any]:
        return self._entries[id(key)]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._entries.get(id(key), default)

    def __iter__(self) -> Any:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
