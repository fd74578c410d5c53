"""Measures checkpoint formats: write and read time, and peak memory, for a realistic state.

Not a test (speed is measured, never asserted). Run from the repository root:

    .venv/bin/python tests/bench_checkpoint_format.py [--elements 16777216] [--repeat 5]

Cases, each on an Adamax over one float32 parameter of ``--elements`` elements after one
step (so ``exp_avg`` and ``exp_inf`` exist: the state is 8 bytes per element):

- ``npz-0.1.0``: what adamax_rs 0.1.0 did: ``np.savez`` into memory, then an atomic write;
  ``np.load(allow_pickle=False)`` and ``load_state_dict``.
- ``safetensors``: this version's ``save_checkpoint`` / ``load_checkpoint`` (format 2).
- ``npz-read-now``: this version's ``load_checkpoint`` of the 0.1.0 file (the bounded reader).
- ``training``: ``save_training_checkpoint`` / ``load_training_checkpoint`` (adds the
  parameter's values, 4 more bytes per element).

Times are the best and the median of ``--repeat`` runs (the file is in the page cache
after the first; the write includes fsync). Peak memory is tracemalloc's peak above what
was allocated before the call (numpy reports its array memory to tracemalloc), in a run of
its own.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np

from adamax_rs import (
    Adamax,
    Parameter,
    load_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
    save_training_checkpoint,
)


def save_npz_010(opt: Adamax, path: Path) -> None:
    """0.1.0's save_checkpoint, reduced to what it did to the data."""
    sd = opt.state_dict()
    arrays = {}
    state_meta = {}
    for index, entry in sd["state"].items():
        meta: dict = {"arrays": []}
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                arrays[f"state/{index}/{key}"] = value
                meta["arrays"].append(key)
            else:
                meta[key] = value
        state_meta[str(index)] = meta
    metadata = {
        "format": "adamax_rs.checkpoint",
        "version": 1,
        "optimizer": "Adamax",
        "param_groups": sd["param_groups"],
        "state": state_meta,
    }
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    handle, temporary = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(handle, "wb") as file:
        file.write(buffer.getbuffer())
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def load_npz_010(opt: Adamax, path: Path) -> None:
    """0.1.0's load_checkpoint, reduced to what it did to the data."""
    with np.load(path, allow_pickle=False) as archive:
        contents = {name: archive[name] for name in archive.files}
    metadata = json.loads(contents.pop("metadata").tobytes())
    state = {}
    for key, meta in metadata["state"].items():
        entry = {k: v for k, v in meta.items() if k != "arrays"}
        for name in meta["arrays"]:
            entry[name] = contents[f"state/{key}/{name}"]
        state[int(key)] = entry
    opt.load_state_dict({"state": state, "param_groups": metadata["param_groups"]})


def make(elements: int) -> tuple[Adamax, Parameter]:
    rng = np.random.default_rng(0)
    param = Parameter(rng.standard_normal(elements, dtype=np.float32))
    opt = Adamax([param], lr=1e-3)
    param.grad = rng.standard_normal(elements, dtype=np.float32)
    opt.step()
    param.grad = None
    return opt, param


def timed(action: Callable[[], None], repeat: int) -> tuple[float, float]:
    """The best and the median time of ``repeat`` runs (the best is the least disturbed by
    other work on a shared machine)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def peak(action: Callable[[], None]) -> float:
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    action()
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (top - base) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16 * 2**20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--folder", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    opt, param = make(args.elements)
    state_mib = 8 * args.elements / 2**20
    print(f"{args.elements} float32 elements: state {state_mib:.0f} MiB", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        npz, st, tr = (Path(folder) / name for name in ("a.npz", "b.safetensors", "c.st"))
        cases = {
            "npz-0.1.0": (lambda: save_npz_010(opt, npz), lambda: load_npz_010(opt, npz)),
            "safetensors": (lambda: save_checkpoint(opt, st), lambda: load_checkpoint(opt, st)),
            "npz-read-now": (lambda: save_npz_010(opt, npz), lambda: load_checkpoint(opt, npz)),
            "training": (
                lambda: save_training_checkpoint(opt, tr),
                lambda: load_training_checkpoint(opt, tr),
            ),
        }
        print(
            f"{'case':<14} {'write s best/median':>20} {'read s best/median':>19} "
            f"{'write MiB':>10} {'read MiB':>9} {'file MiB':>9}"
        )
        for name, (write, read) in cases.items():
            write_s = timed(write, args.repeat)
            read_s = timed(read, args.repeat)
            write_mib = peak(write)
            read_mib = peak(read)
            target = {"npz-0.1.0": npz, "npz-read-now": npz, "safetensors": st, "training": tr}
            size = target[name].stat().st_size / 2**20
            print(
                f"{name:<14} {write_s[0]:9.3f} / {write_s[1]:6.3f} {read_s[0]:8.3f} / "
                f"{read_s[1]:6.3f} {write_mib:10.0f} {read_mib:9.0f} {size:9.1f}"
            )


if __name__ == "__main__":
    main()
