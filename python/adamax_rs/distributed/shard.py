"""What one rank keeps for its shard: its pieces of the parameters as ``Parameter`` objects,
the Adamax that updates them, and the buffers the exchanges use. Kept between steps (the
optimizer caches per object), rebuilt only when the layout or the loaded state changes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..adamax import Adamax
from ..optimizer import ParameterState, StateEntry
from ..parameter import Parameter
from .layout import Piece, ShardLayout, flat_real, transport_dtype

__all__ = [
    "HYPERPARAMETER_KEYS",
    "NUMERIC_KEYS",
    "FLAG_KEYS",
    "Buffers",
    "Shard",
    "hyperparameters",
]

#: The hyperparameters of a group, as ``adamax_rs.Adamax`` documents them.
NUMERIC_KEYS = ("lr", "beta1", "beta2", "eps", "weight_decay")
FLAG_KEYS = ("maximize", "eps_inside_max", "decoupled_weight_decay")
HYPERPARAMETER_KEYS = NUMERIC_KEYS + FLAG_KEYS


def hyperparameters(group: Mapping[str, Any]) -> dict[str, Any]:
    """A group's hyperparameters, without ``"params"`` or any extra key."""
    return {key: group[key] for key in HYPERPARAMETER_KEYS}


class Buffers:
    """The buffers of one element type on this rank, kept between steps."""

    def __init__(self, layout: ShardLayout, index: int, rank: int, pieces: list[Piece]) -> None:
        bucket = layout.buckets[index]
        self.dtype = bucket.dtype
        self.counts = bucket.counts()
        self.displacements = bucket.displacements()
        self.lo, self.hi = bucket.bounds[rank], bucket.bounds[rank + 1]
        transport = transport_dtype(bucket.dtype)
        # The whole bucket: gradients go out of it, and updated parameters come back into it.
        # Alone, nothing is exchanged: no buffers at all.
        alone = layout.ranks == 1
        self.flat = np.zeros(0 if alone else bucket.size, transport)
        # This rank's range of the summed gradients, and the mean in the parameters' type.
        self.shard_sum = np.zeros(0 if alone else self.hi - self.lo, transport)
        self.shard_grad = (
            np.zeros(0 if alone else self.hi - self.lo, bucket.dtype)
            if transport != bucket.dtype
            else self.shard_sum
        )
        # Parameters travel back as raw bits (a copy must not round anything); a 16-bit
        # bucket uses the first half of the float32 buffer's memory.
        bits = np.dtype(f"u{bucket.dtype.itemsize}")
        self.gather_bits = self.flat.view(bits)[: bucket.size]
        self.gathered = self.gather_bits.view(bucket.dtype)
        self.slots = [s for s in layout.slots if s.bucket == index]
        # Where this rank's range holds complex numbers (their mean is computed differently).
        self.complex_runs: list[tuple[int, int]] = []
        for piece in pieces:
            if piece.slot.bucket != index or piece.slot.dtype.kind != "c" or not piece.size:
                continue
            start = piece.slot.offset + piece.start - self.lo
            if self.complex_runs and self.complex_runs[-1][1] == start:
                start = self.complex_runs.pop()[0]
            self.complex_runs.append((start, piece.slot.offset + piece.stop - self.lo))

    def nbytes(self) -> int:
        extra = self.shard_grad.nbytes if self.shard_grad is not self.shard_sum else 0
        return int(self.flat.nbytes + self.shard_sum.nbytes + extra)


class Shard:
    """Everything one rank keeps for a layout: its pieces as Parameters, their inner Adamax,
    and the buffers. Built completely before it replaces the previous one."""

    def __init__(
        self,
        layout: ShardLayout,
        rank: int,
        params: list[Any],
        arrays: list[np.ndarray],
        hyper: list[dict[str, Any]],
        options: dict[str, Any],
    ) -> None:
        self.layout = layout
        self.params = params
        # The arrays the pieces view: each parameter's ``.data`` when it was last checked.
        self.arrays = arrays
        self.pieces = layout.pieces(rank)
        self.piece_params: list[Parameter] = []
        for piece in self.pieces:
            slot = piece.slot
            flat = flat_real(arrays[slot.number], slot.order)
            name = getattr(params[slot.number], "name", None) or slot.where()
            self.piece_params.append(
                Parameter(
                    flat[piece.start : piece.stop], name=f"{name}[{piece.start}:{piece.stop}]"
                )
            )
        self.buckets = [Buffers(layout, b, rank, self.pieces) for b in range(len(layout.buckets))]
        self.piece_grads = []
        for piece in self.pieces:
            bucket = self.buckets[piece.slot.bucket]
            start = piece.slot.offset + piece.start - bucket.lo
            self.piece_grads.append(bucket.shard_grad[start : start + piece.size])
        groups: list[dict[str, Any]] = [{"params": [], **h} for h in hyper]
        for piece, piece_param in zip(self.pieces, self.piece_params):
            groups[piece.slot.group]["params"].append(piece_param)
        self.inner = Adamax(groups, **options)

    def piece_state(self, piece: Piece, full: StateEntry | Mapping[str, Any]) -> dict[str, Any]:
        """The part of a full-size state entry that ``piece`` keeps."""
        out: dict[str, Any] = {}
        for key, value in full.items():
            if isinstance(value, np.ndarray):
                out[key] = flat_real(value, piece.slot.order)[piece.start : piece.stop]
            else:
                out[key] = value
        return out

    def load(self, full_state: ParameterState | Mapping[Any, Mapping[str, Any]]) -> None:
        """Give the inner optimizer the slices of ``full_state`` (keyed by the user's
        parameters) that this rank keeps; validated and copied by ``Adamax.load_state_dict``."""
        numbers: dict[int, int] = {}
        groups: list[dict[str, Any]] = []
        for group in self.inner.param_groups:
            indices = []
            for piece_param in group["params"]:
                numbers[id(piece_param)] = len(numbers)
                indices.append(numbers[id(piece_param)])
            groups.append({**hyperparameters(group), "params": indices})
        state: dict[int, dict[str, Any]] = {}
        for piece, piece_param in zip(self.pieces, self.piece_params):
            entry = full_state.get(self.params[piece.slot.number])
            if entry:
                state[numbers[id(piece_param)]] = self.piece_state(piece, entry)
        self.inner.load_state_dict({"state": state, "param_groups": groups})

    def nbytes(self) -> int:
        return sum(b.nbytes() for b in self.buckets)
