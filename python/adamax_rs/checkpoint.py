"""Checkpoints of an optimizer's state dict, written atomically, read without pickle.

File format (version 1): a ``.npz`` archive (a zip file of ``.npy`` arrays, CRC-checked per
member) holding

- ``metadata``: a ``uint8`` array, the UTF-8 bytes of a JSON object::

      {"format": "adamax_rs.checkpoint", "version": 1, "optimizer": "Adamax",
       "param_groups": [{"lr": ..., ..., "params": [0, 1]}, ...],
       "state": {"0": {"step": 3, "arrays": ["exp_avg", "exp_inf"]}, ...}}

- ``state/<index>/<name>``: each array of each parameter's state.

Why this and not pickle or safetensors: numpy can read it with ``allow_pickle=False``, so
loading never runs code from the file; it needs no dependency beyond numpy; the zip
container's CRC catches a truncated or corrupted member; and the JSON part can be read with
any zip tool. Hyperparameters and extra group keys must be JSON values (numbers, strings,
booleans, lists, dicts, ``None``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Union

import numpy as np

from .optimizer import Optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "FORMAT", "VERSION"]

#: The ``format`` field of every checkpoint's metadata.
FORMAT = "adamax_rs.checkpoint"
#: The current file format version.
VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


def _encode(optimizer: Optimizer) -> dict[str, np.ndarray]:
    sd = optimizer.state_dict()
    arrays: dict[str, np.ndarray] = {}
    state_meta: dict[str, Any] = {}
    for index, entry in sd["state"].items():
        meta: dict[str, Any] = {"arrays": []}
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                arrays[f"state/{index}/{key}"] = value
                meta["arrays"].append(key)
            else:
                meta[key] = value
        state_meta[str(index)] = meta
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": type(optimizer).__name__,
        "param_groups": sd["param_groups"],
        "state": state_meta,
    }
    try:
        text = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"cannot checkpoint: a hyperparameter or group entry is not a JSON value ({error})"
        ) from None
    arrays["metadata"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return arrays


def save_checkpoint(optimizer: Optimizer, path: PathLike) -> None:
    """Write ``optimizer.state_dict()`` to ``path``, atomically.

    The data goes to a temporary file in the same folder, which is flushed, synced to disk
    and then renamed over ``path``: a crash at any moment leaves either the previous file or
    the new one, never a mix.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to save (its state and hyperparameters; not the parameters).
    path : str or os.PathLike
        The file to write (conventionally ending in ``.npz``).

    Raises
    ------
    TypeError
        If a group holds a value that is not a JSON value.
    """
    target = Path(path)
    arrays = _encode(optimizer)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle
    folder = target.parent if str(target.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):
        # Make the rename itself durable.
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _decode(path: PathLike) -> tuple[str, dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        ValueError,
        OSError,
        EOFError,
        KeyError,
    ) as error:
        raise ValueError(f"{path} is not a readable adamax_rs checkpoint: {error}") from None
    raw = contents.pop("metadata", None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{path} is not an adamax_rs checkpoint (no metadata)")
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: the checkpoint's metadata is corrupt: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not an adamax_rs checkpoint")
    if metadata.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {metadata.get('version')!r} is not supported")
    groups, state_meta = metadata.get("param_groups"), metadata.get("state")
    if not isinstance(groups, list) or not isinstance(state_meta, dict):
        raise ValueError(f"{path}: the checkpoint's metadata is incomplete")
    state: dict[int, dict[str, Any]] = {}
    used = set()
    for key, meta in state_meta.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), list):
            raise ValueError(f"{path}: the state of parameter {key} is malformed")
        try:
            index = int(key)
        except ValueError:
            raise ValueError(f"{path}: state key {key!r} is not a parameter index") from None
        entry = {k: v for k, v in meta.items() if k != "arrays"}
        for name in meta["arrays"]:
            member = f"state/{key}/{name}"
            if member not in contents:
                raise ValueError(f"{path}: the array {member} is missing")
            entry[name] = contents[member]
            used.add(member)
        state[index] = entry
    extra = sorted(set(contents) - used)
    if extra:
        raise ValueError(f"{path}: unexpected arrays in the checkpoint: {extra[:5]}")
    return str(metadata.get("optimizer")), {"state": state, "param_groups": groups}


def load_checkpoint(optimizer: Optimizer, path: PathLike) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``optimizer``.

    Nothing is executed from the file (no pickle). Everything is checked before the
    optimizer changes: on any error it is left exactly as it was.

    Parameters
    ----------
    optimizer : Optimizer
        An optimizer over the same parameters, in the same groups, as the one saved.
    path : str or os.PathLike
        The checkpoint file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, corrupted, not a checkpoint, from another optimizer class,
        or does not match the optimizer's groups and parameters.
    TypeError
        If an array in it has a dtype that does not convert exactly to its parameter's.
    """
    saved_class, state_dict = _decode(path)
    if saved_class != type(optimizer).__name__:
        raise ValueError(
            f"{path} holds the state of a {saved_class} optimizer, "
            f"not of {type(optimizer).__name__}"
        )
    optimizer.load_state_dict(state_dict)
