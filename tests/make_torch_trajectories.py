"""Record torch.optim.Adamax trajectories for the replay test (needs torch).

Run from the repository root::

    python tests/make_torch_trajectories.py

It writes ``tests/data/torch_adamax.npz``: for each case, the initial parameters
(flattened and concatenated), the gradients of every step with a mask of the missing ones,
the parameters after every step, and the state after the last step, for torch's for-loop
implementation; the foreach implementation is run too and must give the same bits (the
script stops otherwise). The replay test (``tests/test_torch_exact.py``) runs
``adamax_rs.Adamax(eps_inside_max=True)`` on the same inputs and compares bit for bit,
without torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

STEPS = 100
# 20 elements: a full AVX-512 float32 vector plus a tail; 7: only a tail.
SHAPES = [(5, 4), (7,)]

CASES = {
    "defaults": {},
    "lr0.1": {"lr": 0.1},
    "weight_decay": {"weight_decay": 0.1},
    "weight_decay_maximize": {"weight_decay": 0.1, "maximize": True},
    "beta1_0.3": {"lr": 0.01, "betas": (0.3, 0.99)},
    "eps_1e-3": {"lr": 0.01, "eps": 1e-3, "betas": (0.5, 0.9)},
}


def gradients(rng: np.random.Generator, dtype: type, step: int) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for i, shape in enumerate(SHAPES):
        if (step + i) % 7 == 3:  # a missing gradient now and then
            out.append(None)
            continue
        g = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)
        if step % 11 == 5:  # outliers
            g.flat[rng.integers(g.size)] *= 1e4
        out.append(g.astype(dtype))
    return out


def run(case: dict, dtype: type, foreach: bool, init, grads):
    params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in init]
    opt = torch.optim.Adamax(params, foreach=foreach, **case)
    trajectory = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = None if g is None else torch.from_numpy(g.copy())
        opt.step()
        record = []
        for p in params:
            st = opt.state.get(p, {})
            record.append(
                (
                    p.detach().numpy().copy(),
                    st["exp_avg"].numpy().copy() if st else None,
                    st["exp_inf"].numpy().copy() if st else None,
                )
            )
        trajectory.append(record)
    return trajectory


def flat(arrays) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


def main() -> None:
    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    index = {"torch": torch.__version__, "steps": STEPS, "shapes": SHAPES, "cases": {}}
    for dtype in (np.float32, np.float64):
        for number, (name, case) in enumerate(CASES.items()):
            key = f"{name}/{np.dtype(dtype).name}"
            rng = np.random.default_rng([number, np.dtype(dtype).itemsize])
            init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
            grads = [gradients(rng, dtype, step) for step in range(STEPS)]
            loop = run(case, dtype, False, init, grads)
            foreach = run(case, dtype, True, init, grads)
            for a, b in zip(loop, foreach):
                for x, y in zip(a, b):
                    for u, v in zip(x, y):
                        assert (u is None and v is None) or u.tobytes() == v.tobytes(), key
            present = np.array([[g is not None for g in step] for step in grads])
            filled = [
                [g if g is not None else np.zeros(s, dtype) for g, s in zip(step, SHAPES)]
                for step in grads
            ]
            arrays[f"{key}/init"] = flat(init)
            arrays[f"{key}/grads"] = np.stack([flat(step) for step in filled])
            arrays[f"{key}/grad_present"] = present
            arrays[f"{key}/params"] = np.stack([flat(p for p, _, _ in rec) for rec in loop])
            arrays[f"{key}/exp_avg"] = flat(m for _, m, _ in loop[-1])
            arrays[f"{key}/exp_inf"] = flat(u for _, _, u in loop[-1])
            index["cases"][key] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in case.items()
            }
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
    out = Path(__file__).with_name("data") / "torch_adamax.npz"
    out.parent.mkdir(exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
