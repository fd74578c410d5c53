"""Reading the checkpoints of adamax_rs 0.1.0 (format 1), without ``numpy.load``.

0.1.0 wrote an ``.npz``: a zip archive of uncompressed ``.npy`` members, ``metadata`` (the
UTF-8 bytes of a JSON object, as ``uint8``) and ``state/<index>/<name>`` for each array of
each parameter's state. ``numpy.load`` reads such a file without pickle, but it decodes any
dtype and shape a member claims, inflates compressed members whatever their size, and lets
zip and header errors escape as many exception types. Here instead:

- ``zipfile`` parses only the archive's directory, through a file object that refuses any
  single read larger than the limit the caller gives, so a directory that claims gigabytes
  is refused before anything is allocated for it;
- a compressed or encrypted member is refused: 0.1.0 never wrote one, so no deflate bomb is
  ever inflated;
- each ``.npy`` header is parsed here, from at most :data:`MAX_NPY_HEADER` bytes, accepting
  only the exact form numpy writes and the dtypes 0.1.0 wrote;
- for the state arrays, only where their bytes lie is returned (with the member's CRC), so
  the caller checks them against the optimizer before it reads a byte of them.

Every failure is a ``ValueError``.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from . import _json_values
from ._file_arrays import Declared, read_into

__all__ = ["MAGIC", "read_directory"]

#: How every zip archive that holds at least one file starts.
MAGIC = b"PK\x03\x04"
#: The longest ``.npy`` header read (numpy's own writer needs about 128 bytes here).
MAX_NPY_HEADER = 4096

#: The dtypes 0.1.0 could write: the state dtypes, and bytes for the metadata.
_DTYPES = {
    f"{order}{code}": np.dtype(f"{order}{code}")
    for order in "<>"
    for code in ("f4", "f8", "c8", "c16")
}
_DTYPES["|u1"] = np.dtype("|u1")

_NPY_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[<>|][a-z][0-9]{1,2})', "
    r"'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<shape>(?:[0-9]{1,15}, )*(?:[0-9]{1,15},?)?)\), \} *\n"
)
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # the fixed 30 bytes before each member's name


class _BoundedReads(io.RawIOBase):
    """A read-only view of a file that refuses seeks outside it and reads beyond a limit."""

    def __init__(self, file: io.BufferedIOBase, size: int, limit: int) -> None:
        super().__init__()
        self._file, self._size, self._limit = file, size, limit
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._size}[whence]
        position = base + offset
        if not 0 <= position <= self._size:
            raise ValueError(f"the archive points to byte {position}, outside the file")
        self._position = position
        return position

    def tell(self) -> int:
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        left = self._size - self._position
        wanted = left if size is None or size < 0 else min(size, left)
        if wanted > self._limit:
            raise ValueError(
                f"the archive asks to read {wanted} bytes at once; at most {self._limit} "
                "are read for this optimizer"
            )
        self._file.seek(self._position)
        data = self._file.read(wanted)
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:  # pragma: no cover - zipfile only calls read
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _parse_npy_header(prefix: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """The dtype, shape, Fortran flag and total header length of a ``.npy`` member."""
    if prefix[:6] != b"\x93NUMPY" or len(prefix) < 10:
        raise ValueError(f"member {name!r} is not a .npy array")
    major = prefix[6]
    if major == 1:
        (length,) = struct.unpack("<H", prefix[8:10])
        start = 10
    elif major in (2, 3):
        if len(prefix) < 12:
            raise ValueError(f"member {name!r} has a truncated .npy header")
        (length,) = struct.unpack("<I", prefix[8:12])
        start = 12
    else:
        raise ValueError(f"member {name!r} has .npy version {major}, not 1, 2 or 3")
    if start + length > len(prefix):
        raise ValueError(
            f"member {name!r} has a .npy header of {length} bytes, longer than numpy writes"
        )
    try:
        text = prefix[start : start + length].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"member {name!r} has a .npy header that is not ASCII") from None
    match = _NPY_HEADER.fullmatch(text)
    if match is None:
        raise ValueError(f"member {name!r} has a .npy header numpy does not write: {text!r}")
    descr = match["descr"]
    if descr not in _DTYPES:
        raise ValueError(f"member {name!r} has dtype {descr!r}, which 0.1.0 never wrote")
    sizes = [part for part in match["shape"].replace(" ", "").split(",") if part]
    return _DTYPES[descr], tuple(int(s) for s in sizes), match["fortran"] == "True", start + length


def _member(file: io.BufferedIOBase, size: int, info: zipfile.ZipInfo, name: str) -> Declared:
    """Where the array of the stored member ``info`` lies, checked against the file."""
    if info.flag_bits & 0x1:
        raise ValueError(f"member {name!r} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise ValueError(f"member {name!r} is compressed; 0.1.0 stored its members as they are")
    if not 0 <= info.header_offset <= size - _LOCAL_HEADER.size:
        raise ValueError(f"member {name!r} starts outside the file")
    file.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(file.read(_LOCAL_HEADER.size))
    if fields[0] != MAGIC:
        raise ValueError(f"member {name!r} has no local header where the directory says")
    name_length, extra_length = fields[-2], fields[-1]
    if file.read(name_length) != info.filename.encode("utf-8", "replace"):
        raise ValueError(f"member {name!r} has another name in its local header")
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    if start + info.file_size > size:
        raise ValueError(f"member {name!r} runs past the end of the file")
    file.seek(start)
    prefix = file.read(min(info.file_size, MAX_NPY_HEADER))
    dtype, shape, fortran, header_length = _parse_npy_header(prefix, name)
    nbytes = math.prod(shape) * dtype.itemsize
    if header_length + nbytes != info.file_size:
        raise ValueError(
            f"member {name!r} holds {info.file_size - header_length} bytes of data, its shape "
            f"{shape} of {dtype} needs {nbytes}"
        )
    return Declared(
        dtype,
        shape,
        start + header_length,
        nbytes,
        fortran=fortran,
        crc32=info.CRC,
        crc_seed=zlib.crc32(prefix[:header_length]),
    )


def read_directory(
    file: io.BufferedIOBase, size: int, limit: int
) -> tuple[Any, dict[str, Declared]]:
    """Read a 0.1.0 checkpoint's metadata, and where each of its other arrays lies.

    Parameters
    ----------
    file : binary file
        The open checkpoint, ``size`` bytes long.
    limit : int
        The most bytes read at once: for the zip directory, and for the metadata.

    Returns
    -------
    metadata : object
        The parsed JSON metadata (its structure is the caller's to check).
    arrays : dict of str to Declared
        The other members, by name without ``.npy``; nothing of them read yet.

    Raises
    ------
    ValueError
        If the archive or a member header is malformed, a member is compressed, encrypted,
        named twice or not ``.npy``, the metadata is missing, corrupt or too large.
    """
    try:
        with zipfile.ZipFile(_BoundedReads(file, size, limit)) as archive:
            infos = archive.infolist()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        EOFError,
        KeyError,
        IndexError,
        OverflowError,
        NotImplementedError,
        struct.error,
    ) as error:
        raise ValueError(f"not a readable zip archive ({error})") from None
    members: dict[str, Declared] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise ValueError(f"member {info.filename!r} is not a .npy array")
        name = info.filename[: -len(".npy")]
        if name in members:
            raise ValueError(f"member {info.filename!r} appears twice")
        members[name] = _member(file, size, info, name)
    raw = members.pop("metadata", None)
    if raw is None:
        raise ValueError("the archive has no metadata member")
    if raw.dtype != np.uint8 or len(raw.shape) != 1 or raw.fortran:
        raise ValueError("the metadata member is not a 1-d uint8 array")
    if raw.nbytes > limit:
        raise ValueError(f"the metadata is {raw.nbytes} bytes; at most {limit} are read")
    text = np.empty(raw.shape, np.uint8)
    read_into(file, raw, text)
    try:
        decoded = text.tobytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"the metadata is not UTF-8 ({error})") from None
    return _json_values.loads(decoded, "the metadata"), members
