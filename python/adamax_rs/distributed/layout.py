"""Where each element of the parameters lives once they are flattened and cut into shards.

The parameters of all groups, in group order, are flattened (each in its own memory order)
and concatenated into one flat buffer per element type, a *bucket*: one for float32, one for
float64, and so on, because one MPI reduction runs over one type. Complex parameters count
as pairs of reals and join the bucket of their real type. Each bucket is cut into one
contiguous range per rank, of equal size to within one element, so every rank holds about
1/N of the bytes of every type. A parameter may be split between ranks; a range may span
groups.

This module is plain numpy: it neither imports nor calls MPI, so it can be tested alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..dtypes import is_half

#: A memory order: row-major (C) or column-major (Fortran).
Order = Literal["C", "F"]

__all__ = [
    "Order",
    "Slot",
    "Bucket",
    "Piece",
    "ShardLayout",
    "memory_order",
    "real_dtype",
    "flat_real",
]


def real_dtype(dtype: np.dtype) -> np.dtype:
    """The element type a parameter of ``dtype`` is stored as in a bucket (complex: its reals)."""
    if dtype.kind == "c":
        return np.dtype(np.float32 if dtype == np.complex64 else np.float64)
    return dtype


def transport_dtype(dtype: np.dtype) -> np.dtype:
    """The type gradients of a bucket are summed in: float32 for the 16-bit types, which MPI
    cannot add, and the bucket's own type otherwise."""
    return np.dtype(np.float32) if is_half(dtype) else dtype


def memory_order(data: np.ndarray, where: str) -> Order:
    """``"C"`` or ``"F"``: the order in which ``data``'s elements lie in memory.

    Raises ``ValueError`` for an array that is neither C- nor F-contiguous: its shard could not
    be a view of its memory.
    """
    if data.flags.c_contiguous:
        return "C"
    if data.flags.f_contiguous:
        return "F"
    raise ValueError(
        f"{where}: the parameter is neither C- nor F-contiguous, so its shard cannot be a view "
        "of its memory; give the Parameter a contiguous array (numpy.ascontiguousarray)"
    )


def flat_real(data: np.ndarray, order: Order) -> np.ndarray:
    """``data`` as a 1-D view of reals, in memory order (complex numbers as re, im pairs)."""
    flat = data.reshape(-1, order=order)  # a view: ``order`` is the array's memory order
    return flat.view(real_dtype(data.dtype)) if data.dtype.kind == "c" else flat


@dataclass(frozen=True)
class Slot:
    """One parameter's place in the flattened order."""

    #: Its group, its position in the group, and its number across groups (the state dict's).
    group: int
    position: int
    number: int
    #: The bucket it lives in, its first element there, and its number of (real) elements.
    bucket: int
    offset: int
    size: int
    shape: tuple[int, ...]
    dtype: np.dtype
    #: ``"C"`` or ``"F"``, the parameter's memory order (and its state's).
    order: Order

    def where(self) -> str:
        """How error messages name this parameter."""
        return f"group {self.group}, parameter {self.position}"

    def shaped(self, flat: np.ndarray) -> np.ndarray:
        """The slot's part of a bucket-sized flat buffer, viewed with the parameter's shape and
        memory order (complex again if the parameter is complex and ``flat`` holds its reals).
        """
        part = flat[self.offset : self.offset + self.size]
        if self.dtype.kind == "c":
            # Complex of the buffer's precision: the parameter's own, or its state's.
            part = part.view(np.complex64 if part.dtype == np.float32 else np.complex128)
        return part.reshape(self.shape, order=self.order)


@dataclass(frozen=True)
class Bucket:
    """The parameters of one element type, flattened and concatenated."""

    dtype: np.dtype
    size: int
    #: ``bounds[r]:bounds[r + 1]`` is rank ``r``'s range; ``len(bounds) == ranks + 1``.
    bounds: tuple[int, ...]

    def counts(self) -> list[int]:
        """The number of elements of each rank's range."""
        return [b - a for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def displacements(self) -> list[int]:
        """Where each rank's range starts."""
        return list(self.bounds[:-1])


@dataclass(frozen=True)
class Piece:
    """The part of one parameter that one rank updates: elements ``start:stop`` of the
    parameter's flat reals, which are elements ``offset + start`` onwards of its bucket."""

    slot: Slot
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Its number of (real) elements."""
        return self.stop - self.start


def _bounds(size: int, ranks: int) -> tuple[int, ...]:
    return tuple(size * r // ranks for r in range(ranks + 1))


@dataclass(frozen=True)
class ShardLayout:
    """The flattened order of a list of parameter groups, cut into ``ranks`` shards."""

    slots: tuple[Slot, ...]
    buckets: tuple[Bucket, ...]
    group_sizes: tuple[int, ...]
    ranks: int

    @classmethod
    def of(cls, groups: Sequence[Sequence[Any]], ranks: int) -> ShardLayout:
        """The layout of ``groups`` (lists of parameters, each with a numpy ``.data``).

        Raises ``ValueError`` for a parameter whose memory is not contiguous.
        """
        if ranks < 1:
            raise ValueError(f"the number of ranks must be positive, got {ranks}")
        slots: list[Slot] = []
        bucket_of: dict[np.dtype, int] = {}
        sizes: list[int] = []
        number = 0
        for g, params in enumerate(groups):
            for i, param in enumerate(params):
                data = param.data
                where = f"group {g}, parameter {i}"
                order = memory_order(data, where)
                real = real_dtype(data.dtype)
                b = bucket_of.setdefault(real, len(bucket_of))
                if b == len(sizes):
                    sizes.append(0)
                size = int(data.size) * (2 if data.dtype.kind == "c" else 1)
                slots.append(Slot(g, i, number, b, sizes[b], size, data.shape, data.dtype, order))
                sizes[b] += size
                number += 1
        dtypes = list(bucket_of)
        buckets = tuple(
            Bucket(dtype, size, _bounds(size, ranks)) for dtype, size in zip(dtypes, sizes)
        )
        return cls(tuple(slots), buckets, tuple(len(p) for p in groups), ranks)

    def owner_of_empty(self, slot: Slot) -> int:
        """The rank that keeps the (empty) state of a parameter with no elements: the one
        whose range holds its offset, or the last rank whose range starts at or before it."""
        bounds = self.buckets[slot.bucket].bounds
        return max(r for r in range(self.ranks) if bounds[r] <= slot.offset)

    def pieces(self, rank: int) -> list[Piece]:
        """Rank ``rank``'s pieces, in the flattened order."""
        out = []
        for slot in self.slots:
            bounds = self.buckets[slot.bucket].bounds
            if slot.size == 0:
                if self.owner_of_empty(slot) == rank:
                    out.append(Piece(slot, 0, 0))
                continue
            lo = max(bounds[rank], slot.offset)
            hi = min(bounds[rank + 1], slot.offset + slot.size)
            if lo < hi:
                out.append(Piece(slot, lo - slot.offset, hi - slot.offset))
        return out

    def signature(self) -> bytes:
        """Bytes that differ when two layouts differ (shapes, dtypes, orders, groups)."""
        text = repr(
            (
                self.group_sizes,
                [(s.shape, s.dtype.str, s.dtype.name, s.order) for s in self.slots],
            )
        )
        return hashlib.blake2b(text.encode(), digest_size=8).digest()
