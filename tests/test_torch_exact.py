"""eps_inside_max=True gives torch.optim.Adamax's numbers bit for bit (recorded trajectories).

tests/make_torch_trajectories.py recorded torch's for-loop and foreach implementations
(identical to each other) over 100 steps per case, float32 and float64, with weight decay,
maximize, missing gradients, outliers and both branches of ATen's lerp. This test replays
them without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adamax_rs import Adamax, Parameter

DATA = Path(__file__).with_name("data") / "torch_adamax.npz"


def load():
    with np.load(DATA, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return json.loads(arrays.pop("index").tobytes()), arrays


INDEX, ARRAYS = load()


def split(flat, shapes):
    out, start = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[start : start + n].reshape(shape))
        start += n
    return out


@pytest.mark.parametrize("key", sorted(INDEX["cases"]))
def test_matches_torch_bit_for_bit_at_every_step(key):
    case = dict(INDEX["cases"][key])
    shapes = [tuple(s) for s in INDEX["shapes"]]
    if "betas" in case:
        case["betas"] = tuple(case["betas"])
    params = [Parameter(x.copy()) for x in split(ARRAYS[f"{key}/init"], shapes)]
    opt = Adamax(params, eps_inside_max=True, **case)
    grads, present = ARRAYS[f"{key}/grads"], ARRAYS[f"{key}/grad_present"]
    expected = ARRAYS[f"{key}/params"]
    for step in range(INDEX["steps"]):
        for p, g, has in zip(params, split(grads[step], shapes), present[step]):
            p.grad = g.copy() if has else None
        opt.step()
        got = np.concatenate([p.data.ravel() for p in params])
        if got.tobytes() != expected[step].tobytes():
            ulps = np.abs(
                got.view(np.int64 if got.dtype == np.float64 else np.int32).astype(np.int64)
                - expected[step]
                .view(got.view(np.int64 if got.dtype == np.float64 else np.int32).dtype)
                .astype(np.int64)
            )
            pytest.fail(f"{key}: step {step + 1} differs from torch by up to {ulps.max()} ulp")
    for name in ("exp_avg", "exp_inf"):
        got = np.concatenate([opt.state[p][name].ravel() for p in params])
        assert got.tobytes() == ARRAYS[f"{key}/{name}"].tobytes(), name
