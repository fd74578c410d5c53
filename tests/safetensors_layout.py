"""The safetensors layout and adamax_rs's checkpoint metadata, written for the tests.

Written from the public description of the layout (8-byte little-endian header length, JSON
header, raw little-endian C-order data) and from the checkpoint format documented in
adamax_rs.checkpoint. It shares no code with the package: the tests read what the package
wrote with it, and craft files (good and hostile) with it.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

CODES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "U8": "<u1", "I32": "<i4", "I64": "<i8"}


def read_raw(path: Path) -> tuple[dict, bytes]:
    """The header object and the data bytes of a file."""
    blob = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    return header, blob[8 + length :]


def read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The metadata strings and the arrays (complex ones as stored: real pairs)."""
    header, data = read_raw(path)
    metadata = header.pop("__metadata__", {})
    arrays = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        code = entry["dtype"]
        if code == "BF16":
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            dtype = np.dtype(CODES[code])
        arrays[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(entry["shape"])
    return metadata, arrays


def metadata_crc(metadata: dict) -> int:
    items = sorted((k, v) for k, v in metadata.items() if k != "crc32")
    return zlib.crc32(json.dumps(items, separators=(",", ":")).encode("ascii"))


def seal(header: dict, data: bytes) -> dict:
    """``header`` with the crc32 metadata entry computed for it and ``data``."""
    header = json.loads(json.dumps(header))
    metadata = header.setdefault("__metadata__", {})
    crcs = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            crcs[name] = f"{zlib.crc32(data[begin:end]):08x}"
        except (TypeError, KeyError, ValueError):
            crcs[name] = "00000000"
    crcs["__metadata__"] = f"{metadata_crc(metadata):08x}"
    metadata["crc32"] = json.dumps(crcs)
    return header


def write_raw(path: Path, header: dict | bytes, data: bytes, length: int | None = None) -> None:
    """Write a file from a header (an object, or its exact bytes) and data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    prefix = struct.pack("<Q", len(text) if length is None else length)
    Path(path).write_bytes(prefix + text + data)


def rewrite(path: Path, change, *, reseal: bool = True) -> None:
    """Apply ``change(header, metadata_documents)`` to a checkpoint and write it back.

    ``metadata_documents`` holds the JSON-decoded metadata entries; ``change`` may edit them
    or the header (tensor entries) in place. The checksums are recomputed unless ``reseal``
    is false, so the file reaches the checks behind them.
    """
    header, data = read_raw(path)
    metadata = header.setdefault("__metadata__", {})
    documents = {k: json.loads(v) for k, v in metadata.items() if k not in ("format", "version")}
    documents.pop("crc32", None)
    change(header, documents)
    kept = header.setdefault("__metadata__", {})
    metadata = {k: kept[k] for k in ("format", "version", "crc32") if k in kept}
    for key, value in documents.items():
        if isinstance(value, str):
            metadata[key] = value
        elif key in kept and json.dumps(json.loads(kept[key])) == json.dumps(value):
            metadata[key] = kept[key]  # unchanged: the same text, so its checksum still holds
        else:
            metadata[key] = json.dumps(value)
    header["__metadata__"] = metadata
    if reseal:
        header = seal(header, data)
    write_raw(path, header, data)


def add_tensor(path: Path, name: str, array: np.ndarray, code: str) -> None:
    """Append a tensor to a checkpoint (checksums recomputed)."""
    header, data = read_raw(path)
    raw = np.ascontiguousarray(array).tobytes()
    header[name] = {
        "dtype": code,
        "shape": list(array.shape),
        "data_offsets": [len(data), len(data) + len(raw)],
    }
    data += raw
    write_raw(path, seal(header, data), data)
