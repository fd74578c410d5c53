"""Checkpoints: the optimizer alone, or everything needed to resume training, in one file.

- :func:`save_checkpoint` / :func:`load_checkpoint`: the optimizer's state and
  hyperparameters.
- :func:`save_training_checkpoint` / :func:`load_training_checkpoint`: also the values of the
  optimizer's parameters, optionally a learning-rate scheduler, and a dict of the caller's
  own JSON values (epoch, seed, ...): numpy's answer to ``torch.save({"model": ...,
  "optimizer": ..., "scheduler": ...})``, without pickle.

File format (version 2) is the safetensors layout (see :mod:`._safetensors`), readable by
the ``safetensors`` package, with

- tensors ``state/<index>/<name>``: each array of each parameter's state, and, in a
  training checkpoint, ``param/<index>``: each parameter's values (parameters are numbered
  from 0 across groups, as in ``Optimizer.state_dict()``). Complex arrays are stored as pairs
  of reals (a trailing axis of 2) and listed in the ``complex`` metadata entry;
- ``__metadata__``, strings: ``format`` (``"adamax_rs.checkpoint"``), ``version`` (``"2"``),
  ``optimizer`` (JSON: ``{"class": "Adamax", "param_groups": [...], "state": {"0":
  {"step": 3}}}``, the state's values that are not arrays), and where present ``complex``
  (JSON list of tensor names), ``parameters`` (their count), ``scheduler`` (JSON:
  ``{"class": ..., "state": scheduler.state_dict()}``) and ``extra`` (JSON object); and
  ``crc32`` (JSON: each tensor's CRC-32 as 8 hex digits, checked when it is read).

Files of version 1 (the ``.npz`` of adamax_rs 0.1.0) are still read, by :mod:`._npz_v1`.

Loading never runs code from the file and treats it as hostile. It reads in two phases:
first the header, which is bounded in size by the optimizer (:func:`header_limit`), and
every declared dtype and shape is checked against the optimizer, through the optimizer's own
checks, before a byte of array data is read; then the accepted arrays are read into memory
allocated for them alone. Every fault in the file is a ``ValueError``, and the optimizer,
the parameters and the scheduler change only once everything has been checked.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _compressed, _json_values, _npz_v1, _safetensors
from ._atomic_file import PathLike, replace_file
from ._file_arrays import Declared, read_into
from .optimizer import Optimizer

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "header_limit",
    "FORMAT",
    "VERSION",
    "MAX_STEP",
]

#: The ``format`` field of every checkpoint's metadata.
FORMAT = "adamax_rs.checkpoint"
#: The file format version written (version 1, adamax_rs 0.1.0's ``.npz``, is still read).
VERSION = 2
#: The largest per-parameter ``step`` read: the largest integer every JSON reader keeps
#: exactly, and far beyond any real run; a larger one would overflow the next step.
MAX_STEP = 2**53

_HEADER_BASE = 256 << 10
_HEADER_PER_PARAMETER = 2048
_INDEX = r"(0|[1-9][0-9]{0,9})"
_STATE_TENSOR = re.compile(rf"state/{_INDEX}/(.+)", re.DOTALL)
_PARAM_TENSOR = re.compile(rf"param/{_INDEX}")
_V2_KEYS = {
    "format",
    "version",
    "optimizer",
    "complex",
    "parameters",
    "scheduler",
    "extra",
    "code_layouts",
    _safetensors.CHECKSUMS,
}


def _parameters(optimizer: Optimizer) -> list[Any]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def header_limit(optimizer: Optimizer) -> int:
    """The most bytes of metadata a checkpoint of ``optimizer`` may have.

    256 KiB, plus 2 KiB per parameter: room for the hyperparameters, a scheduler's state,
    the caller's ``extra`` values and the description of every array (a parameter's takes
    about 300 bytes). Loading reads no larger header, zip directory or metadata, so a hostile
    file cannot make it allocate more than about 25 times this (the most Python objects
    that many bytes of JSON can make); saving refuses to write one.
    """
    return _HEADER_BASE + _HEADER_PER_PARAMETER * len(_parameters(optimizer))


# -- saving ----------------------------------------------------------------------------------


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"expected an adamax_rs Optimizer, got {type(optimizer).__name__}")


def _file_contents(
    optimizer: Optimizer,
    *,
    with_parameters: bool,
    scheduler: Any,
    extra: Any,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and metadata strings of a checkpoint (raises before anything is written)."""
    if extra is not None and not isinstance(extra, Mapping):
        raise TypeError(f"extra must be a dict of JSON values, got {type(extra).__name__}")
    extra_json = None if extra is None else _json_values.to_json_value(dict(extra), "extra")
    scheduler_json = None
    if scheduler is not None:
        _check_scheduler_argument(scheduler, optimizer)
        scheduler_json = {
            "class": type(scheduler).__name__,
            "state": _json_values.to_json_value(
                scheduler.state_dict(), "the scheduler's state_dict()"
            ),
        }
    # One snapshot under the optimizer's lock: state and parameters from the same moment,
    # even while other threads step.
    with optimizer._lock:
        state_dict = optimizer.state_dict()
        values = [p.data.copy(order="K") for p in _parameters(optimizer)] if with_parameters else []

    tensors: dict[str, np.ndarray] = {}
    stored_as_pairs: list[str] = []

    def add(name: str, array: np.ndarray) -> None:
        stored, pairs = _safetensors.as_stored(array)
        tensors[name] = stored
        if pairs:
            stored_as_pairs.append(name)

    state_values: dict[str, dict[str, Any]] = {}
    # The file holds codes in C order, by element: which elements each block of 8-bit state
    # held (the parameter's memory order) is recorded beside them, so that a load into a
    # parameter laid out otherwise is refused instead of regrouping the blocks.
    code_layouts: dict[str, list[int]] = {}
    for index, entry in state_dict["state"].items():
        codes = entry.get("exp_avg")
        if isinstance(codes, np.ndarray) and codes.dtype == np.uint8:
            code_layouts[str(index)] = list(_compressed.axis_order(codes.shape, codes.strides))
        plain: dict[str, Any] = {}
        for key, value in entry.items():
            if not isinstance(key, str):
                raise TypeError(f"state of parameter {index}: key {key!r} is not a string")
            if isinstance(value, np.ndarray):
                add(f"state/{index}/{key}", value)
            else:
                plain[key] = value
        state_values[str(index)] = plain
    for index, array in enumerate(values):
        add(f"param/{index}", array)
    document = {
        "class": type(optimizer).__name__,
        "param_groups": _json_values.to_json_value(state_dict["param_groups"], "param_groups"),
        "state": _json_values.to_json_value(state_values, "state"),
    }
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "optimizer": _json_values.dumps(document, "the optimizer"),
    }
    if stored_as_pairs:
        metadata["complex"] = _json_values.dumps(sorted(stored_as_pairs), "names")
    if code_layouts:
        metadata["code_layouts"] = _json_values.dumps(code_layouts, "code_layouts")
    if with_parameters:
        metadata["parameters"] = str(len(values))
    if scheduler_json is not None:
        metadata["scheduler"] = _json_values.dumps(scheduler_json, "scheduler")
    if extra_json is not None:
        metadata["extra"] = _json_values.dumps(extra_json, "extra")
    return tensors, metadata


def _save(optimizer: Optimizer, path: PathLike, **what: Any) -> None:
    _check_optimizer(optimizer)
    tensors, metadata = _file_contents(optimizer, **what)
    header = _safetensors.header_bytes(tensors, metadata)  # TypeError for unstorable dtypes
    limit = header_limit(optimizer)
    if len(header) - 8 > limit:
        raise ValueError(
            f"the checkpoint's metadata would take {len(header) - 8} bytes, more than the "
            f"{limit} a load reads for this optimizer: keep extra, the scheduler's state and "
            "extra group entries small"
        )
    replace_file(path, lambda file: _safetensors.write(file, tensors, metadata))


def save_checkpoint(optimizer: Optimizer, path: PathLike) -> None:
    """Write ``optimizer.state_dict()`` to ``path``, atomically.

    The data goes to a temporary file in the same folder, which is flushed, synced to disk
    and renamed over ``path``: a crash at any moment leaves either the previous file or the
    new one, never a mix. A new file gets the mode the umask gives (as ``open(path, "w")``);
    a replaced file keeps its mode; a symbolic link is followed and stays a link.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer to save (its state and hyperparameters; not the parameters, see
        :func:`save_training_checkpoint` for those).
    path : str or os.PathLike
        The file to write (conventionally ending in ``.safetensors``).

    Raises
    ------
    TypeError
        If a group or state entry holds a value that is not a JSON value (numpy scalars are
        fine), or an array of a dtype that cannot be stored.
    ValueError
        If the metadata would exceed :func:`header_limit`.
    """
    _save(optimizer, path, with_parameters=False, scheduler=None, extra=None)


def save_training_checkpoint(
    optimizer: Optimizer,
    path: PathLike,
    *,
    scheduler: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write everything needed to resume training to ``path``, atomically, in one file.

    That is the values of the optimizer's parameters, the optimizer's state and
    hyperparameters, optionally a learning-rate scheduler's state, and ``extra``, the
    caller's own values (the epoch, a seed, ...). The parameters and the optimizer are
    snapshotted together under the optimizer's lock. Written like :func:`save_checkpoint`.

    Parameters
    ----------
    optimizer : Optimizer
        The optimizer whose parameters and state to save.
    path : str or os.PathLike
        The file to write (conventionally ending in ``.safetensors``).
    scheduler : LRScheduler, optional
        A scheduler of ``optimizer``; ``scheduler.state_dict()`` is stored.
    extra : dict, optional
        JSON values to store alongside (numbers, strings, booleans, ``None``, lists and
        dicts with string keys; numpy scalars are fine), returned by
        :func:`load_training_checkpoint`.

    Raises
    ------
    TypeError
        If ``extra``, the scheduler's state, a group or a state entry holds something that
        is not a JSON value; the message names it. Nothing is written then.
    ValueError
        If the scheduler belongs to another optimizer, or the metadata would exceed
        :func:`header_limit`.

    Examples
    --------
    >>> save_training_checkpoint(opt, "run.safetensors", scheduler=sched,
    ...                          extra={"epoch": epoch})  # doctest: +SKIP
    """
    _save(optimizer, path, with_parameters=True, scheduler=scheduler, extra=extra)


# -- reading a file's declarations -----------------------------------------------------------


@dataclass
class _Contents:
    """What a checkpoint declares, checked for form but not yet against the optimizer."""

    optimizer_class: str
    param_groups: list[Any]
    state_values: dict[int, dict[str, Any]] = field(default_factory=dict)
    state_arrays: dict[int, dict[str, Declared]] = field(default_factory=dict)
    parameters: dict[int, Declared] | None = None
    scheduler: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    #: Per parameter with 8-bit state, its codes' axis order (``_compressed.axis_order``), or
    #: ``None`` for a file written before it was recorded.
    code_layouts: dict[int, tuple[int, ...]] | None = None


def _index(text: str, what: str) -> int:
    if not isinstance(text, str) or re.fullmatch(_INDEX, text) is None:
        raise ValueError(f"{what} {text!r} is not a parameter index")
    return int(text)


def _optimizer_document(contents: _Contents, document: Any) -> None:
    """Fill the class, groups and non-array state values from the ``optimizer`` document."""
    if not isinstance(document, dict) or set(document) != {"class", "param_groups", "state"}:
        raise ValueError("the optimizer metadata must hold exactly class, param_groups, state")
    if not isinstance(document["class"], str):
        raise ValueError("the optimizer's class name is not a string")
    contents.optimizer_class = document["class"]
    if not isinstance(document["param_groups"], list):
        raise ValueError("param_groups is not a list")
    contents.param_groups = document["param_groups"]
    if not isinstance(document["state"], dict):
        raise ValueError("the state is not an object")
    for key, values in document["state"].items():
        if not isinstance(values, dict):
            raise ValueError(f"the state of parameter {key} is not an object")
        contents.state_values[_index(key, "state key")] = values


def _as_complex(name: str, declared: Declared) -> Declared:
    if declared.dtype.kind != "f" or declared.dtype.itemsize not in (4, 8):
        raise ValueError(f"tensor {name!r} is listed as complex but is not float32/float64")
    if not declared.shape or declared.shape[-1] != 2:
        raise ValueError(f"tensor {name!r} is listed as complex but has no trailing axis of 2")
    dtype = np.dtype(f"<c{2 * declared.dtype.itemsize}")
    return dataclasses.replace(declared, dtype=dtype, shape=declared.shape[:-1])


def _from_v2(header: _safetensors.Header) -> _Contents:
    metadata = header.metadata
    if metadata.get("format") != FORMAT:
        raise ValueError("it is not an adamax_rs checkpoint (no format entry in its metadata)")
    if metadata.get("version") != str(VERSION):
        raise ValueError(f"checkpoint version {metadata.get('version')!r} is not supported")
    unknown = sorted(set(metadata) - _V2_KEYS)
    if unknown:
        raise ValueError(f"unexpected metadata entries {unknown[:5]}")
    for required in ("optimizer", _safetensors.CHECKSUMS):
        if required not in metadata:
            raise ValueError(f"the metadata has no {required} entry")
    contents = _Contents("", [])
    _optimizer_document(contents, _json_values.loads(metadata["optimizer"], "the optimizer"))
    tensors = dict(header.tensors)
    if "complex" in metadata:
        names = _json_values.loads(metadata["complex"], "the complex entry")
        if not isinstance(names, list) or len(set(map(str, names))) != len(names):
            raise ValueError("the complex entry must list distinct tensor names")
        for name in names:
            if not isinstance(name, str) or name not in tensors:
                raise ValueError(f"the complex entry names {name!r}, which is not a tensor")
            tensors[name] = _as_complex(name, tensors[name])
    parameters: dict[int, Declared] = {}
    for name, declared in tensors.items():
        state = _STATE_TENSOR.fullmatch(name)
        param = _PARAM_TENSOR.fullmatch(name)
        if state is not None:
            arrays = contents.state_arrays.setdefault(int(state[1]), {})
            arrays[state[2]] = declared
        elif param is not None:
            parameters[int(param[1])] = declared
        else:
            raise ValueError(f"unexpected tensor {name[:80]!r}")
    if "parameters" in metadata:
        count = _index(metadata["parameters"], "the parameter count")
        # The length first: a hostile count must not make a list of that many numbers.
        if len(parameters) != count or sorted(parameters) != list(range(count)):
            raise ValueError(f"the file should hold param/0 to param/{count - 1}")
        contents.parameters = parameters
    elif parameters:
        raise ValueError("the file holds parameters but no parameter count")
    if "scheduler" in metadata:
        scheduler = _json_values.loads(metadata["scheduler"], "the scheduler entry")
        if (
            not isinstance(scheduler, dict)
            or set(scheduler) != {"class", "state"}
            or not isinstance(scheduler["class"], str)
            or not isinstance(scheduler["state"], dict)
        ):
            raise ValueError("the scheduler entry must be {class: name, state: object}")
        contents.scheduler = scheduler
    if "code_layouts" in metadata:
        layouts = _json_values.loads(metadata["code_layouts"], "the code_layouts entry")
        if not isinstance(layouts, dict):
            raise ValueError("the code_layouts entry is not an object")
        contents.code_layouts = {}
        for key, axes in layouts.items():
            if (
                not isinstance(axes, list)
                or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)
                or sorted(axes) != sorted(set(axes))
                or any(not 0 <= a < 64 for a in axes)
            ):
                raise ValueError(f"the code_layouts entry of {key!r} is not a list of axes")
            contents.code_layouts[_index(key, "code_layouts key")] = tuple(axes)
    if "extra" in metadata:
        extra = _json_values.loads(metadata["extra"], "the extra entry")
        if not isinstance(extra, dict):
            raise ValueError("the extra entry is not an object")
        contents.extra = extra
    return contents


def _from_v1(metadata: Any, members: dict[str, Declared]) -> _Contents:
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError("it is not an adamax_rs checkpoint")
    version = metadata.get("version")
    if isinstance(version, bool) or version != 1:
        raise ValueError(f"checkpoint version {version!r} is not supported")
    if set(metadata) != {"format", "version", "optimizer", "param_groups", "state"}:
        raise ValueError("the metadata does not have the entries version 1 wrote")
    contents = _Contents("", [])
    document = {"class": "", "param_groups": metadata["param_groups"], "state": metadata["state"]}
    _optimizer_document(contents, document)
    if not isinstance(metadata["optimizer"], str):
        raise ValueError("the optimizer's class name is not a string")
    contents.optimizer_class = metadata["optimizer"]
    used = set()
    for index, values in contents.state_values.items():
        names = values.pop("arrays", None)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"the state of parameter {index} does not list its arrays")
        arrays = contents.state_arrays.setdefault(index, {})
        for name in names:
            member = f"state/{index}/{name}"
            if member not in members or name in arrays:
                raise ValueError(f"the array {member} is missing or listed twice")
            if members[member].dtype.kind not in "fc":
                raise ValueError(f"the array {member} is not floating-point")
            arrays[name] = members[member]
            used.add(member)
    unexpected = sorted(set(members) - used)
    if unexpected:
        raise ValueError(f"unexpected arrays in the checkpoint: {unexpected[:5]}")
    return contents


def _declarations(file: io.BufferedIOBase, optimizer: Optimizer) -> _Contents:
    size = os.fstat(file.fileno()).st_size
    limit = header_limit(optimizer)
    start = file.read(4)
    if start in (_npz_v1.MAGIC, b"PK\x05\x06"):
        metadata, members = _npz_v1.read_directory(file, size, limit)
        return _from_v1(metadata, members)
    return _from_v2(_safetensors.read_header(file, size, limit))


# -- checking against the optimizer and reading --------------------------------------------


def _match_groups(groups: list[Any], optimizer: Optimizer) -> dict[int, Any]:
    """The parameter each saved index stands for; the groups' hyperparameters checked."""
    if len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"it has {len(groups)} parameter groups, the optimizer has "
            f"{len(optimizer.param_groups)}"
        )
    by_index: dict[int, Any] = {}
    for g, (saved, mine) in enumerate(zip(groups, optimizer.param_groups)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            raise ValueError(f"param group {g} is not an object with a params list")
        if len(saved["params"]) != len(mine["params"]):
            raise ValueError(
                f"param group {g} has {len(saved['params'])} parameters in the file, "
                f"{len(mine['params'])} in the optimizer"
            )
        for index, param in zip(saved["params"], mine["params"]):
            if isinstance(index, bool) or not isinstance(index, int) or index in by_index:
                raise ValueError(f"param group {g}: parameter index {index!r} is invalid")
            by_index[index] = param
        hyperparameters = {key: value for key, value in saved.items() if key != "params"}
        # The optimizer's own check, on a copy: wrong types and ranges are found before any
        # array is read.
        optimizer._normalize_group(
            copy.deepcopy(hyperparameters), f"param group {g}: ", fill_defaults=False
        )
    return by_index


def _check_code_layout(
    contents: _Contents, index: int, declared: dict[str, Declared], data: np.ndarray
) -> None:
    """Refuse 8-bit state saved from a parameter laid out otherwise than ``data``."""
    codes = declared.get("exp_avg")
    if contents.code_layouts is None or codes is None or codes.dtype != np.uint8:
        return  # no codes, or a file from before layouts were recorded
    saved = contents.code_layouts.get(index)
    if saved is None:
        raise ValueError(f"parameter {index} has 8-bit state but no entry in code_layouts")
    if saved != _compressed.axis_order(data.shape, data.strides):
        raise ValueError(
            f"parameter {index}: its 8-bit state was saved from a parameter with axes "
            f"{list(saved)} from slowest to fastest in memory, and this one (strides "
            f"{data.strides}) is laid out otherwise, so the blocks of "
            f"{_compressed.BLOCK} would hold other elements: load it into a parameter laid "
            "out as the one it was saved from (np.empty_like of it, or the same order=)"
        )


def _buffer_for(declared: Declared, data: np.ndarray) -> np.ndarray:
    """Where a declared array is read when the optimizer converts it. 8-bit codes are laid out
    like the parameter (``_check_code_layout`` has tied the file's layout to it): the file
    holds them by element, and a C-order buffer would make them look re-laid out."""
    if declared.dtype == np.uint8 and declared.shape == data.shape:
        return np.empty_like(data, dtype=np.uint8)
    return np.empty(declared.shape, dtype=declared.dtype)


def _stand_in(declared: Declared) -> np.ndarray:
    """An array of the declared dtype and shape that takes no memory (every element 0)."""
    return np.broadcast_to(np.zeros((), dtype=declared.dtype), declared.shape)


_Reads = list[tuple[Declared, np.ndarray]]


def _fits(out: Any, declared: Declared, stand_in: np.ndarray, data: np.ndarray) -> bool:
    """Whether the file's array can be read straight into ``out``, what the optimizer kept."""
    return (
        isinstance(out, np.ndarray)
        and out.shape == declared.shape
        and out.flags.writeable
        # Codes are not numbers: uint8 is read only into uint8.
        and (declared.dtype == np.uint8) == (out.dtype == np.uint8)
        and np.can_cast(declared.dtype, out.dtype, "safe")
        and not np.may_share_memory(out, stand_in)
        and not np.may_share_memory(out, data)
    )


def _plan_states(
    contents: _Contents, optimizer: Optimizer, by_index: dict[int, Any]
) -> tuple[dict[int, dict[str, Any]], _Reads]:
    """Every parameter's state as the optimizer will take it, and the reads that fill it.

    Each parameter's state is checked by the optimizer (``_check_state``, the check that
    ``load_state_dict`` runs) with stand-ins of the declared arrays that take no memory.
    What that returns, arrays of the optimizer's own dtypes and shapes, is where the file's
    data will be read: the optimizer has accepted every dtype and size before memory is
    allocated for the data, and the data is read once, straight where it is needed.
    """
    states: dict[int, dict[str, Any]] = {}
    reads: _Reads = []
    for index in sorted(set(contents.state_values) | set(contents.state_arrays)):
        if index not in by_index:
            raise ValueError(f"it has a state for parameter {index}, which no group lists")
        param = by_index[index]
        values = contents.state_values.get(index, {})
        declared = contents.state_arrays.get(index, {})
        clash = sorted(set(values) & set(declared))
        if clash:
            raise ValueError(f"parameter {index}: {clash} given both as array and as value")
        step = values.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
            raise ValueError(f"parameter {index}: step {step!r} is not an int in [0, 2**53]")
        entry = {**values, **{key: _stand_in(d) for key, d in declared.items()}}
        kept = optimizer._check_state(param, entry, f"state of parameter {index}")
        _check_code_layout(contents, index, declared, param.data)
        kept_arrays = {key for key, value in kept.items() if isinstance(value, np.ndarray)}

        if kept_arrays != set(declared) or not all(
            _fits(kept.get(k), d, entry[k], param.data) for k, d in declared.items()
        ):
            # The optimizer keeps another form (another state dtype: it converts): read the
            # arrays as declared (sizes it accepted) and let load_state_dict convert them.
            kept = {
                **values,
                **{key: _buffer_for(d, param.data) for key, d in declared.items()},
            }
        for key, d in declared.items():
            reads.append((d, kept[key]))
        states[index] = kept
    return states, reads


def _plan_parameters(
    declared: dict[int, Declared], by_index: dict[int, Any]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], _Reads]:
    """Buffers for the parameters' saved values, each checked against its parameter's array.

    Returns ``(data, buffer)`` pairs: the values are later written into the very ``data``
    arrays checked here, never into a ``param.data`` read again (another thread may have
    bound another array to it meanwhile)."""
    if sorted(declared) != sorted(by_index):
        raise ValueError(f"it holds {len(declared)} parameters, the optimizer has {len(by_index)}")
    values = []
    reads: _Reads = []
    for index in sorted(declared):
        param, d = by_index[index], declared[index]
        data = param.data
        if d.shape != data.shape:
            raise ValueError(
                f"parameter {index} has shape {d.shape} in the file, {data.shape} in the optimizer"
            )
        if d.dtype.kind in "biu":
            raise ValueError(
                f"parameter {index} has dtype {d.dtype} in the file; parameter values are "
                "floating-point or complex"
            )
        if not np.can_cast(d.dtype, data.dtype, "safe"):
            raise ValueError(
                f"parameter {index} has dtype {d.dtype} in the file, which does not convert "
                f"exactly to the parameter's {data.dtype}"
            )
        if not data.flags.writeable:
            raise ValueError(f"parameter {index}: .data is read-only")
        out = np.empty_like(data)
        values.append((data, out))
        reads.append((d, out))
    return values, reads


def _check_like(saved: Any, current: Any, where: str) -> None:
    """``saved`` has the structure and JSON kinds of ``current`` (``None`` matches anything)."""
    if current is None:
        return
    if isinstance(current, (bool, np.bool_)):
        ok = isinstance(saved, bool)
    elif isinstance(current, numbers.Integral):
        ok = isinstance(saved, int) and not isinstance(saved, bool)
    elif isinstance(current, numbers.Real):
        ok = isinstance(saved, (int, float)) and not isinstance(saved, bool)
    elif isinstance(current, str):
        ok = isinstance(saved, str)
    elif isinstance(current, Mapping):
        if not isinstance(saved, dict) or set(saved) != set(map(str, current)):
            raise ValueError(f"{where} has keys {sorted(saved)[:8]}, expected {sorted(current)}")
        for key, value in current.items():
            _check_like(saved[str(key)], value, f"{where}[{key!r}]")
        return
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(current):
            raise ValueError(f"{where} is not a list of {len(current)} values")
        for i, (item, value) in enumerate(zip(saved, current)):
            _check_like(item, value, f"{where}[{i}]")
        return
    else:
        ok = True
    if not ok:
        raise ValueError(f"{where} is {saved!r}, not a value like {current!r}")


def _check_scheduler_argument(scheduler: Any, optimizer: Optimizer) -> None:
    if not callable(getattr(scheduler, "state_dict", None)) or not callable(
        getattr(scheduler, "load_state_dict", None)
    ):
        raise TypeError(f"expected a learning-rate scheduler, got {type(scheduler).__name__}")
    if getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("the scheduler schedules another optimizer than this one")


def _check_scheduler(saved: dict[str, Any] | None, scheduler: Any) -> None:
    if saved is None:
        raise ValueError("it holds no scheduler state, but a scheduler was given")
    if saved["class"] != type(scheduler).__name__:
        raise ValueError(
            f"it holds the state of a {saved['class']}, not of {type(scheduler).__name__}"
        )
    _check_like(saved["state"], scheduler.state_dict(), "the scheduler's state")


def _load(
    optimizer: Optimizer, path: PathLike, *, with_parameters: bool, scheduler: Any
) -> _Contents:
    _check_optimizer(optimizer)
    if scheduler is not None:
        _check_scheduler_argument(scheduler, optimizer)
    name = os.fspath(path)
    with open(name, "rb") as file:
        try:
            contents = _declarations(file, optimizer)
            if contents.optimizer_class != type(optimizer).__name__:
                raise ValueError(
                    f"it holds the state of a {contents.optimizer_class} optimizer, "
                    f"not of {type(optimizer).__name__}"
                )
            if with_parameters and contents.parameters is None:
                raise ValueError(
                    "it holds no parameters (it was written by save_checkpoint; "
                    "load it with load_checkpoint)"
                )
            if with_parameters and scheduler is None and contents.scheduler is not None:
                raise ValueError(
                    f"it holds the state of a {contents.scheduler['class']} scheduler: pass "
                    "scheduler= to restore it, or the schedule would start over"
                )
            if scheduler is not None:
                _check_scheduler(contents.scheduler, scheduler)
            # Every declaration is checked, and memory allocated for what was accepted,
            # before any array's data is read.
            by_index = _match_groups(contents.param_groups, optimizer)
            states, reads = _plan_states(contents, optimizer, by_index)
            values: list[tuple[np.ndarray, np.ndarray]] = []
            if with_parameters:
                values, more = _plan_parameters(contents.parameters or {}, by_index)
                reads += more
            for declared, out in reads:
                read_into(file, declared, out)
        except (TypeError, ValueError, OverflowError) as error:
            # Everything came from the file: a wrong type in it is a wrong value of it.
            raise ValueError(f"{name}: {error}") from None
    state_dict = {"state": states, "param_groups": contents.param_groups}
    with optimizer._lock:
        before = scheduler.state_dict() if scheduler is not None else None
        try:
            for index, (data, _) in enumerate(values):
                # Checked again under the lock, before anything changes: the writes below
                # must not fail once the optimizer has loaded.
                if not data.flags.writeable:
                    raise ValueError(f"parameter {index}: .data is read-only")
            if scheduler is not None and contents.scheduler is not None:
                scheduler.load_state_dict(copy.deepcopy(contents.scheduler["state"]))
            optimizer.load_state_dict(state_dict)
        except (TypeError, ValueError, OverflowError, KeyError) as error:
            if scheduler is not None:
                scheduler.load_state_dict(before)
            raise ValueError(f"{name}: {error}") from None
        for data, value in values:
            data[...] = value
    return contents


def load_checkpoint(optimizer: Optimizer, path: PathLike) -> None:
    """Restore the optimizer saved in ``path`` into ``optimizer``.

    Reads files of :func:`save_checkpoint` and :func:`save_training_checkpoint` (of which it
    restores only the optimizer), and those of adamax_rs 0.1.0. Nothing is executed from the
    file (no pickle). Everything is checked before the optimizer changes, and every array's
    dtype and shape before its data is read: on any error the optimizer is left exactly as
    it was, and no more memory was used than the optimizer's state needs.

    Parameters
    ----------
    optimizer : Optimizer
        An optimizer of the same class over parameters of the same shapes, in the same
        groups, as the one saved.
    path : str or os.PathLike
        The checkpoint file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated, corrupted, not a checkpoint, from another optimizer class,
        does not match the optimizer's groups and parameters, or holds an array whose dtype
        does not convert exactly to the optimizer's.
    TypeError
        If ``optimizer`` is not an adamax_rs optimizer.
    """
    _load(optimizer, path, with_parameters=False, scheduler=None)


def load_training_checkpoint(
    optimizer: Optimizer, path: PathLike, *, scheduler: Any = None
) -> dict[str, Any]:
    """Restore a file of :func:`save_training_checkpoint`: parameters, optimizer, scheduler.

    The parameters' values are written in place into their existing arrays
    (``p.data[...] = saved``), so anything holding those arrays sees them. Everything in the
    file is checked first, as in :func:`load_checkpoint`: on any error the parameters, the
    optimizer and the scheduler are left exactly as they were.

    Parameters
    ----------
    optimizer : Optimizer
        An optimizer over parameters of the same shapes and dtypes, in the same groups, as
        the one saved.
    path : str or os.PathLike
        The checkpoint file.
    scheduler : LRScheduler, optional
        A scheduler of ``optimizer`` of the class saved; required when the file holds a
        scheduler's state (a fresh schedule would silently start over otherwise).

    Returns
    -------
    dict
        The ``extra`` values given when saving (an empty dict if none were).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        As :func:`load_checkpoint`; also if the file holds no parameters, the parameters'
        shapes or dtypes differ, or the scheduler given does not match the one saved.
    TypeError
        If ``optimizer`` is not an adamax_rs optimizer.

    Examples
    --------
    >>> extra = load_training_checkpoint(opt, "run.safetensors", scheduler=sched)
    ... # doctest: +SKIP
    >>> start = extra["epoch"] + 1  # doctest: +SKIP
    """
    contents = _load(optimizer, path, with_parameters=True, scheduler=scheduler)
    return dict(contents.extra or {})
