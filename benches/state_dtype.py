"""Step time by state dtype: float32, bfloat16 and 8-bit state on float32 parameters, the
compressed states rounded stochastically (their default) and with ``stochastic_rounding=False``.

    .venv/bin/python benches/state_dtype.py [--elements 16777216] [--seconds 20]

Each state dtype's step runs beside a bandwidth probe over the very same arrays (the same
bytes read and written, trivial arithmetic: the floor for a one-pass update on this
machine), all interleaved in rounds of about 50 ms so that a busy neighbour slows them all
alike. Prints the median step time, the speed-up over float32 state, the share of the
probe's speed reached, the bytes moved per element and the state memory. The bench CLI
(``python -m adamax_rs bench``) has the same states in its "1 x 16M float32" workload, timed
beside one float32 probe; this script gives each state its own.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np

from adamax_rs import _core
from adamax_rs.functional import adamax, new_state

#: Each row's state dtype, and whether it rounds stochastically (as compressed state does by
#: default; the "-nearest" and "-directed" rows are ``stochastic_rounding=False``).
KINDS = {
    "float32": (None, False),
    "bfloat16": ("bfloat16", True),
    "bf16-nearest": ("bfloat16", False),
    "8bit": ("8bit", True),
    "8bit-directed": ("8bit", False),
}


def make_steps(n: int, kind: str, rng: np.random.Generator) -> tuple[Callable[[], Any], ...]:
    """The Adamax step and the bandwidth probe over one float32 parameter of ``n`` elements
    with ``kind`` state, and the state's bytes."""
    param = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    state_dtype, stochastic_rounding = KINDS[kind]
    state = new_state(param, state_dtype=state_dtype)
    scales = (
        {"exp_avg_scales": [state["exp_avg_scale"]], "exp_inf_scales": [state["exp_inf_scale"]]}
        if "exp_avg_scale" in state
        else {}
    )
    steps = [0]

    def step() -> None:
        steps[0] += 1
        adamax(
            [param],
            [grad],
            [state["exp_avg"]],
            [state["exp_inf"]],
            [steps[0]],
            lr=1e-9,  # the parameter barely moves: every run sees the same numbers
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            stochastic_rounding=stochastic_rounding,
            **scales,
        )

    # The probe adds the gradient to everything: on its own copies, so the step's stay sane.
    probe_param, probe_state = param.copy(), {k: v.copy() for k, v in state.items()}
    probe_scales = (
        {
            "exp_avg_scales": [probe_state["exp_avg_scale"]],
            "exp_inf_scales": [probe_state["exp_inf_scale"]],
        }
        if scales
        else {}
    )

    def probe() -> None:
        _core.bandwidth_probe(
            [probe_param],
            [grad],
            [probe_state["exp_avg"]],
            [probe_state["exp_inf"]],
            **probe_scales,
        )

    state_bytes = sum(a.nbytes for a in state.values())
    return step, probe, state_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--seconds", type=float, default=20.0, help="total timing budget")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs = {kind: make_steps(args.elements, kind, rng) for kind in KINDS}
    timed: dict[str, list[float]] = {}
    for kind, (step, probe, _) in runs.items():
        for name, f in ((kind, step), (f"{kind} probe", probe)):
            f()
            f()  # warm: pages touched, threads up
            timed[name] = []
    deadline = time.perf_counter() + args.seconds
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 500):
        for kind, (step, probe, _) in runs.items():
            for name, f in ((kind, step), (f"{kind} probe", probe)):
                started, calls = time.perf_counter(), 0
                while True:
                    f()
                    calls += 1
                    elapsed = time.perf_counter() - started
                    if elapsed > 0.05:
                        break
                timed[name].append(elapsed / calls)
        rounds += 1
    n = args.elements
    median = {name: statistics.median(times) for name, times in timed.items()}
    print(
        f"{n} float32 parameters, {_core.get_num_threads()} threads, SIMD {_core.simd_level()}, "
        f"{platform.processor() or platform.machine()}, {rounds} rounds"
    )
    header = (
        f"{'state':<13} {'step':>9} {'probe':>9} {'vs float32':>10} {'of probe':>9} "
        f"{'bytes/el':>9} {'state MiB':>10} {'state x':>8}"
    )
    print(header)
    print("-" * len(header))
    f32_bytes = runs["float32"][2]
    for kind, (_, _, state_bytes) in runs.items():
        step, probe = median[kind], median[f"{kind} probe"]
        # Read and written each step: parameter (4+4), gradient (4), the state twice.
        moved = 12 + 2 * state_bytes / n
        print(
            f"{kind:<13} {step * 1e3:7.2f}ms {probe * 1e3:7.2f}ms "
            f"{median['float32'] / step:9.2f}x {probe / step:8.0%} "
            f"{moved:9.2f} {state_bytes / 2**20:10.1f} {state_bytes / f32_bytes:7.3f}x"
        )


if __name__ == "__main__":
    main()
