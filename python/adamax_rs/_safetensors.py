"""The safetensors file layout, written and read with numpy alone.

The layout, as its authors publish it: 8 bytes holding the header's length ``N`` as a
little-endian unsigned 64-bit integer; ``N`` bytes of UTF-8 JSON, an object that maps each
tensor's name to ``{"dtype": "F32", "shape": [3, 4], "data_offsets": [begin, end]}`` (byte
offsets into the data that follows, which the tensors cover exactly, without gaps or
overlaps) and may hold ``"__metadata__"``, an object of strings; then the data, little-endian,
in C order, uncompressed. This code is written from that description; it does not use the
``safetensors`` package, but its files are readable by it (and by torch users through it).
Files written here also record each tensor's CRC-32 in the metadata (:data:`CHECKSUMS`),
and reading checks it.

Reading checks every declared name, dtype, shape and offset against the file's real size
before any data is read, so the caller can check them against what it expects and allocate
only what it accepted. Data is read with ``readinto`` into arrays the caller owns: no memory
map, so a file shortened while it is being read gives ``ValueError``, not ``SIGBUS``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np

from . import _json_values
from ._file_arrays import Declared

__all__ = ["DTYPE_CODES", "Header", "as_stored", "header_bytes", "read_header", "write"]

#: The element types read and written, by their safetensors names, and BF16 (ml_dtypes'
#: bfloat16, imported only when a file has it). Complex arrays are stored as pairs of reals
#: (a trailing axis of 2), because safetensors has no complex128.
DTYPE_CODES: dict[str, np.dtype] = {
    "U8": np.dtype("<u1"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
}


def _dtype_of(code: Any, name: str) -> np.dtype:
    if code == "BF16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError(f"tensor {name!r} is bfloat16, which needs ml_dtypes") from None
        bfloat16: np.dtype = np.dtype(ml_dtypes.bfloat16)
        return bfloat16
    if not isinstance(code, str) or code not in DTYPE_CODES:
        allowed = ", ".join(sorted(DTYPE_CODES) + ["BF16"])
        raise ValueError(f"tensor {name!r} has dtype {code!r}; readable dtypes are {allowed}")
    return DTYPE_CODES[code]


#: The metadata entry with each tensor's CRC-32 (of its bytes as stored) and the CRC-32 of
#: the other metadata entries (as ``"__metadata__"``), as 8 hex digits: safetensors itself
#: has no checksum, and a flipped bit in a checkpoint must not go unseen.
CHECKSUMS = "crc32"

_CRC = re.compile(r"[0-9a-f]{8}")
# numpy 2 allows 64 dimensions (numpy 1, 32): whatever can be saved must read back.
_MAX_DIMENSIONS = 64
_CHUNK_BYTES = 16 << 20  # the most copied at once when an array must be converted to write it


@dataclasses.dataclass(frozen=True)
class Header:
    """A file's metadata strings and its arrays by name (nothing read from the data yet)."""

    metadata: dict[str, str]
    tensors: dict[str, Declared]


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > _MAX_DIMENSIONS:
        raise ValueError(
            f"tensor {name!r}: 'shape' must be a list of at most {_MAX_DIMENSIONS} sizes"
        )
    for size in value:
        # No real array has 2**48 elements along one axis; refusing larger sizes keeps
        # every later computation with them within numpy's index type.
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**48:
            raise ValueError(f"tensor {name!r}: 'shape' holds {size!r}, not a size")
    return tuple(value)


def _entry(name: str, value: Any, data_start: int) -> Declared:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(
            f"tensor {name!r} must be described by exactly 'dtype', 'shape' and 'data_offsets'"
        )
    code = value["dtype"]
    dtype = _dtype_of(code, name)
    shape = _shape(value["shape"], name)
    offsets = value["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or any(isinstance(o, bool) or not isinstance(o, int) for o in offsets)
    ):
        raise ValueError(f"tensor {name!r}: 'data_offsets' must be two integers")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise ValueError(f"tensor {name!r}: data_offsets {offsets} are not a byte range")
    if end - begin != _count(shape) * dtype.itemsize:
        raise ValueError(
            f"tensor {name!r}: data_offsets {offsets} span {end - begin} bytes, but "
            f"shape {list(shape)} of {code} needs {_count(shape) * dtype.itemsize}"
        )
    return Declared(dtype, shape, data_start + begin, end - begin)


def read_header(file: io.BufferedIOBase, size: int, max_header_bytes: int) -> Header:
    """Read and check the header of the file ``file`` of ``size`` bytes.

    Checks that the header is at most ``max_header_bytes`` long (before reading it), is
    strict JSON (see :mod:`._json_values`), declares only known dtypes, sizes that agree with
    the shapes, and offsets that tile the data exactly up to the end of the file.

    Raises
    ------
    ValueError
        For any departure from the layout.
    """
    file.seek(0)
    prefix = file.read(8)
    if len(prefix) < 8:
        raise ValueError(f"the file is {size} bytes long, too short for a header")
    (length,) = struct.unpack("<Q", prefix)
    if length > max_header_bytes:
        raise ValueError(
            f"the header claims {length} bytes; at most {max_header_bytes} are read "
            "for this optimizer"
        )
    if 8 + length > size:
        raise ValueError(f"the header claims {length} bytes, past the end of the file")
    raw = file.read(length)
    if len(raw) != length:
        raise ValueError("the file ends inside its header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"the header is not UTF-8 ({error})") from None
    if not text.startswith("{"):
        raise ValueError("the header is not a JSON object")
    document = _json_values.loads(text, "the header")
    if not isinstance(document, dict):
        raise ValueError("the header is not a JSON object")
    metadata = document.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("the header's __metadata__ must map strings to strings")
    data_start = 8 + length
    tensors = {name: _entry(name, value, data_start) for name, value in document.items()}
    if CHECKSUMS in metadata:
        tensors = _with_checksums(tensors, metadata)
    position = data_start
    for declared in sorted(tensors.values(), key=lambda d: (d.offset, d.nbytes)):
        if declared.offset != position:
            what = "overlap" if declared.offset < position else "leave a gap"
            raise ValueError(f"the tensors' data_offsets {what} at byte {position - data_start}")
        position += declared.nbytes
    if position != size:
        raise ValueError(
            f"the tensors cover {position - data_start} bytes of data, "
            f"the file holds {size - data_start}"
        )
    return Header(metadata, tensors)


def _metadata_crc(metadata: Mapping[str, str]) -> int:
    """The CRC-32 of the metadata strings but the checksums, in a canonical form."""
    items = sorted((key, value) for key, value in metadata.items() if key != CHECKSUMS)
    return zlib.crc32(json.dumps(items, separators=(",", ":")).encode("ascii"))


def _with_checksums(tensors: dict[str, Declared], metadata: dict[str, str]) -> dict[str, Declared]:
    """``tensors`` with their recorded CRCs, once the metadata's own CRC has been checked."""
    checksums = _json_values.loads(metadata[CHECKSUMS], f"the {CHECKSUMS} entry")
    if not isinstance(checksums, dict) or set(checksums) != set(tensors) | {"__metadata__"}:
        raise ValueError(
            f"the {CHECKSUMS} entry must give one checksum for every tensor and the metadata"
        )
    for name, value in checksums.items():
        if not isinstance(value, str) or _CRC.fullmatch(value) is None:
            raise ValueError(f"the checksum of {name!r} is not 8 hexadecimal digits")
    if int(checksums["__metadata__"], 16) != _metadata_crc(metadata):
        raise ValueError("the metadata does not match its CRC (the file is corrupted)")
    return {
        name: dataclasses.replace(declared, crc32=int(checksums[name], 16))
        for name, declared in tensors.items()
    }


def little_endian(dtype: np.dtype) -> np.dtype:
    """``dtype`` in little-endian byte order (itself when it already is, or has no order)."""
    if dtype.byteorder in "<|" or (dtype.byteorder == "=" and sys.byteorder == "little"):
        return dtype
    swapped: np.dtype = dtype.newbyteorder("<")
    return swapped


def _code(dtype: np.dtype) -> str:
    stored = little_endian(dtype)
    if stored.kind == "V" and stored.name == "bfloat16":
        return "BF16"
    for code, known in DTYPE_CODES.items():
        if stored == known:
            return code
    raise TypeError(f"arrays of dtype {dtype} cannot be stored")


def _little_endian_chunks(array: np.ndarray) -> Iterator[memoryview]:
    """The bytes of ``array`` in C order, little-endian, in pieces of bounded size.

    A C-contiguous little-endian array is not copied; any other is converted a slab at a
    time, so writing never needs a second copy of a whole array.
    """
    dtype = little_endian(array.dtype)
    if array.flags.c_contiguous and array.dtype is dtype:
        raw = array.reshape(-1).view(np.uint8).data
        for start in range(0, len(raw), _CHUNK_BYTES):
            yield raw[start : start + _CHUNK_BYTES]
        return
    if array.ndim == 0:
        yield np.ascontiguousarray(array, dtype=dtype).reshape(-1).view(np.uint8).data
        return
    row_bytes = max(1, array[0].size * dtype.itemsize)
    rows = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, array.shape[0], rows):
        slab = np.ascontiguousarray(array[start : start + rows], dtype=dtype)
        yield slab.reshape(-1).view(np.uint8).data


def as_stored(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """``array`` as the file stores it: complex arrays as real pairs; and whether it was."""
    if array.dtype.kind == "c":
        pairs = array[..., np.newaxis].view(array.real.dtype)
        return pairs, True
    return array, False


def header_bytes(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str],
    checksums: Mapping[str, int] | None = None,
) -> bytes:
    """The length prefix and header for ``tensors`` (already :func:`as_stored`).

    The header is padded so the data starts 8-byte aligned, and tensors are ordered largest
    element first so every tensor's data is aligned to its element size. The metadata gets
    the :data:`CHECKSUMS` entry, with ``checksums`` (zeros when not given yet: every value
    has the same width, so the header's length does not depend on them).
    """
    crcs = {name: f"{(checksums or {}).get(name, 0):08x}" for name in sorted(tensors)}
    crcs["__metadata__"] = f"{_metadata_crc(metadata):08x}"
    entries: dict[str, Any] = {
        "__metadata__": {**metadata, CHECKSUMS: _json_values.dumps(crcs, CHECKSUMS)}
    }
    offset = 0
    for name in order(tensors):
        array = tensors[name]
        nbytes = array.size * array.dtype.itemsize
        entries[name] = {
            "dtype": _code(array.dtype),
            "shape": list(array.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    text = _json_values.dumps(entries, "the header").encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def order(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """The order the tensors' data is written in."""
    return sorted(tensors, key=lambda name: (-tensors[name].dtype.itemsize, name))


def write(file: BinaryIO, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` (already :func:`as_stored`) and ``metadata`` to the seekable ``file``.

    The CRC-32 of each tensor's bytes is computed as they are written, and the header, of
    the same length, written again with them at the end: one pass over the data.
    """
    start = file.tell()
    header = header_bytes(tensors, metadata)
    file.write(header)
    checksums = {}
    for name in order(tensors):
        crc = 0
        for chunk in _little_endian_chunks(tensors[name]):
            crc = zlib.crc32(chunk, crc)
            file.write(chunk)
        checksums[name] = crc
    end = file.tell()
    final = header_bytes(tensors, metadata, checksums)
    if len(final) != len(header):  # the widths are fixed; a difference is a bug
        raise AssertionError("the header changed length")
    file.seek(start)
    file.write(final)
    file.seek(end)
