"""Arrays a checkpoint file declares, and reading them into arrays the caller allocated.

Both checkpoint formats are read in two phases: first every array's dtype, shape and place
in the file is declared and checked (against the file's size, then against the optimizer),
and only then are the bytes read, into memory allocated for exactly what was accepted. This
module holds the declaration and the second phase.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Declared", "read_into"]


@dataclass(frozen=True)
class Declared:
    """An array as a file declares it: where its bytes are and how to read them.

    Attributes
    ----------
    dtype : numpy.dtype
        The element type of the bytes (with its byte order; complex for an array that
        safetensors stores as pairs of reals, whose bytes are the same).
    shape : tuple of int
        The array's shape.
    offset : int
        Where the bytes start in the file.
    nbytes : int
        How many bytes there are (``size * itemsize``, checked by the format's reader).
    fortran : bool
        The bytes are in Fortran order (``.npy`` members may say so); C order otherwise.
    crc32 : int or None
        The CRC-32 the bytes must have, where the format records one (zip members), seeded
        with ``crc_seed``, the CRC of what precedes the array in the member.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    fortran: bool = False
    crc32: int | None = None
    crc_seed: int = 0


def _bytes_of(array: np.ndarray, fortran: bool) -> memoryview | None:
    """``array``'s memory as bytes in the given order, or ``None`` if it is not laid out so."""
    if array.size == 0:
        return memoryview(b"")
    contiguous = array.flags.f_contiguous if fortran else array.flags.c_contiguous
    if not contiguous or not array.flags.writeable:
        return None
    flat = array.reshape(-1, order="F" if fortran else "C")
    return flat.view(np.uint8).data


def _read_exactly(file: io.BufferedIOBase, offset: int, view: memoryview) -> None:
    file.seek(offset)
    done = 0
    while done < len(view):
        got = file.readinto(view[done:])
        if not got:
            raise ValueError("the file ends inside an array (it is truncated)")
        done += got


def read_into(file: io.BufferedIOBase, declared: Declared, out: np.ndarray) -> None:
    """Read the array ``declared`` from ``file`` into ``out``, which has its shape.

    The bytes go straight into ``out`` when it has the declared dtype and memory order;
    otherwise through a buffer of the declared array (its size was accepted by the caller),
    converted with a safe cast, which is exact.

    Raises
    ------
    ValueError
        If the file ends early, or the bytes do not have the recorded CRC.
    """
    if out.shape != declared.shape:  # the caller checked; a mismatch here is a bug
        raise AssertionError(f"reading {declared.shape} into {out.shape}")
    target = _bytes_of(out, declared.fortran) if out.dtype == declared.dtype else None
    if target is None:
        buffer = np.empty(
            declared.shape, dtype=declared.dtype, order="F" if declared.fortran else "C"
        )
        read_into(file, declared, buffer)
        np.copyto(out, buffer, casting="safe")
        return
    if len(target) != declared.nbytes:
        raise AssertionError(f"{len(target)} bytes for {declared.nbytes}")
    _read_exactly(file, declared.offset, target)
    if declared.crc32 is not None and zlib.crc32(target, declared.crc_seed) != declared.crc32:
        raise ValueError("an array's bytes do not match their CRC (the file is corrupted)")
