"""Does stochastic rounding of bfloat16 state help? An experiment on the demo's two tasks.

    .venv/bin/python benches/stochastic_rounding.py [--seeds 0,1,2] [--beta2 0.999]

It compares float32 state with bfloat16 state rounded to nearest (``stochastic_rounding=False``),
with the built-in ``stochastic_rounding=True`` (random bits hashed from the values and the
step; the default for bfloat16 state), and with an
emulation of stochastic rounding by an independent generator, described below: if the hash's
bits were poor, the built-in option would fall behind the emulation.

Rounded to nearest, bfloat16 state rounds ``exp_avg`` and ``exp_inf`` to nearest even after
every step. With
``beta2 = 0.999``, ``0.999 * u`` rounds back to ``u`` (bfloat16 has 8 significant bits), so
``exp_inf`` stops decaying, which is the suspected cause of bfloat16's quality miss on the
spirals. Stochastic rounding (round up with probability equal to the distance from the value
below, in units of the spacing) is unbiased, so ``u`` decays on average.

This script emulates both roundings with float32 state: after each step of
``adamax_rs.Adamax`` it rounds the state arrays, in place, to bfloat16 values. That is exactly
bfloat16 state, because the kernel reads the stored values, computes in float32 and rounds
only what it stores, so the emulation with rounding to nearest must reproduce a real
``state_dtype="bfloat16", stochastic_rounding=False`` run bit for bit; the script checks
that first, then compares the final losses of float32 state, bfloat16 rounded to nearest,
and bfloat16 rounded stochastically (numpy's PCG64 stream, seeded).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from adamax_rs import Adamax, Parameter
from adamax_rs.demo import add_arguments, train
from adamax_rs.demo_charlm import train_charlm
from adamax_rs.lr_scheduler import CosineAnnealingLR


def round_nearest_even(x: np.ndarray, rng: np.random.Generator) -> None:
    """Round float32 ``x`` in place to the nearest bfloat16 value, ties to even."""
    bits = x.view(np.uint32)
    bits += np.uint32(0x7FFF) + ((bits >> 16) & 1)
    bits &= np.uint32(0xFFFF0000)


def round_stochastic(x: np.ndarray, rng: np.random.Generator) -> None:
    """Round float32 ``x`` in place to one of its two bfloat16 neighbours, the farther one with
    probability equal to the distance to the nearer one (in units of their spacing): adding 16
    random low bits, then truncating, does exactly that on the magnitude."""
    bits = x.view(np.uint32)
    bits += rng.integers(0, 1 << 16, size=x.shape, dtype=np.uint32)
    bits &= np.uint32(0xFFFF0000)


class EmulatedAdamax(Adamax):
    """adamax_rs.Adamax with float32 state, rounded to bfloat16 values after every step."""

    def __init__(self, params: Any, rounding: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.rounding = rounding
        self.rng = np.random.default_rng(seed + 1000)

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for entry in self.state.values():
            for key in ("exp_avg", "exp_inf"):
                self.rounding(entry[key], self.rng)
        return loss


def run(task: str, args: argparse.Namespace, make: Any) -> tuple[float, list[float]]:
    """The final loss of one run of ``task`` and its curve."""
    if task == "charlm":
        result = train_charlm(lambda ps: make(ps, 0.01), seed=args.seed)
        return result["held_out"], result["losses"]

    def cosine(optimizer: Any, epoch: int, made: dict[int, Any] = {}) -> None:  # noqa: B006
        made.setdefault(id(optimizer), CosineAnnealingLR(optimizer, args.epochs)).step()

    result = train(lambda ps: make(ps, args.lr), args, cosine)
    return result["losses"][-1], result["losses"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="spirals,charlm")
    args = parser.parse_args()
    betas = (0.9, args.beta2)
    for task in args.tasks.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            args.seed = seed

            def plain(ps: list[Parameter], lr: float, sd: Any = None) -> Adamax:
                # With bfloat16 state: rounded to nearest, which the emulation reproduces.
                rounding = {"stochastic_rounding": False} if sd else {}
                return Adamax(ps, lr=lr, betas=betas, state_dtype=sd, **rounding)

            def emulated(
                ps: list[Parameter], lr: float, how: Any = None, seed: int = seed
            ) -> Adamax:
                return EmulatedAdamax(ps, how, seed, lr=lr, betas=betas)

            f32, _ = run(task, args, plain)
            bf16, bf16_curve = run(task, args, lambda ps, lr: plain(ps, lr, "bfloat16"))
            nearest, nearest_curve = run(
                task, args, lambda ps, lr: emulated(ps, lr, round_nearest_even)
            )
            if nearest_curve != bf16_curve:
                raise SystemExit(
                    f"{task}, seed {seed}: the emulation with rounding to nearest does not "
                    "reproduce bfloat16 state; its figures would mean nothing"
                )
            stochastic, _ = run(task, args, lambda ps, lr: emulated(ps, lr, round_stochastic))
            hashed, _ = run(
                task,
                args,
                lambda ps, lr: Adamax(
                    ps, lr=lr, betas=betas, state_dtype="bfloat16", stochastic_rounding=True
                ),
            )
            print(
                f"{task}, seed {seed}, beta2 {args.beta2}: float32 {f32:.4f}, "
                f"bfloat16 nearest {bf16:.4f} ({bf16 / f32 - 1:+.1%}), "
                f"stochastic_rounding=True {hashed:.4f} ({hashed / f32 - 1:+.1%}), "
                f"emulated stochastic {stochastic:.4f} ({stochastic / f32 - 1:+.1%})",
                flush=True,
            )


if __name__ == "__main__":
    main()
