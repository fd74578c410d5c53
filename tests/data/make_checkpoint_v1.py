"""Writes checkpoint_v1.npz, the fixture of a file written by adamax_rs 0.1.0.

It was run once with 0.1.0's ``save_checkpoint`` (commit cefabd5, format version 1: an
``.npz`` of ``.npy`` members and a JSON ``metadata`` member). Later versions write another
format, so running it again with them would not reproduce the fixture; it stays here to
show what the file holds. The test reads the file's arrays back with numpy itself and
compares them with what ``load_checkpoint`` restores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from adamax_rs import Adamax, Parameter, save_checkpoint


def parameters() -> list[Parameter]:
    """The fixture's parameters, before any step (also built by the test)."""
    rng = np.random.default_rng(101)
    return [
        Parameter(rng.standard_normal((3, 4)).astype(np.float32), name="w"),
        Parameter(np.asfortranarray(rng.standard_normal((2, 3))), name="fortran64"),
        Parameter(
            (rng.standard_normal(5) + 1j * rng.standard_normal(5)).astype(np.complex64),
            name="c",
        ),
        Parameter(rng.standard_normal(6).astype(np.float16), name="half"),
        Parameter(rng.standard_normal(2).astype(np.float32), name="never_stepped"),
    ]


def main(path: str) -> None:
    params = parameters()
    opt = Adamax(
        [
            {"params": params[:2], "tag": "first", "weight_decay": 0.01},
            {"params": params[2:], "lr": 0.01, "eps_inside_max": True},
        ],
        master_weights=True,
    )
    rng = np.random.default_rng(202)
    for _ in range(3):
        for p in params[:4]:
            grad = rng.standard_normal(p.shape)
            if p.dtype.kind == "c":
                grad = grad + 1j * rng.standard_normal(p.shape)
            p.grad = grad.astype(p.dtype)
        opt.step()
    save_checkpoint(opt, path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("checkpoint_v1.npz")))
