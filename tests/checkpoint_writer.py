"""Child process for the kill test: trains and saves a checkpoint after every step, forever.

Gradients depend only on the step number, so the parent can recompute any step's state.
The disk is made slow (1 ms more per chunk written), so that a kill often lands between two
writes of a save: a save that is not atomic would then leave a torn file. Without it, a save
this small reaches the page cache in one system call, which SIGKILL cannot tear.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import adamax_rs._safetensors as layout
from adamax_rs import Adamax, Parameter, save_checkpoint

_chunks = layout._little_endian_chunks


def _slowly(array):
    for chunk in _chunks(array):
        time.sleep(0.001)
        yield chunk


layout._little_endian_chunks = _slowly

SHAPES = [(256, 256), (1000,)]


def gradients(step: int) -> list[np.ndarray]:
    rng = np.random.default_rng(step)
    return [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]


def initial() -> list[np.ndarray]:
    rng = np.random.default_rng(12345)
    return [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]


def main(path: str) -> None:
    params = [Parameter(x) for x in initial()]
    opt = Adamax(params, lr=0.01, weight_decay=0.01)
    step = 0
    while True:
        for p, g in zip(params, gradients(step)):
            p.grad = g
        opt.step()
        save_checkpoint(opt, path)
        step += 1
        if step == 1:
            print("saved", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
