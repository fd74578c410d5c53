"""The stochastic-rounding experiment (benches/stochastic_rounding.py): its two roundings, and
that it still reproduces bfloat16 state, so that the figures it prints keep their meaning."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

SCRIPT = Path(__file__).resolve().parent.parent / "benches" / "stochastic_rounding.py"


def load_script():
    spec = importlib.util.spec_from_file_location("stochastic_rounding", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounding_to_nearest_is_ml_dtypes_bfloat16(rng):
    script = load_script()
    x = (rng.standard_normal(100_000) * 10.0 ** rng.uniform(-30, 30, 100_000)).astype(np.float32)
    x[:4] = [0.0, -0.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8]  # ties: to even, down then up
    expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    script.round_nearest_even(x, rng)
    np.testing.assert_array_equal(x, expected)


def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased(rng):
    script = load_script()
    below = np.float32(1.5)
    above = np.float32(1.5 + 2.0**-7)  # the next bfloat16 value
    for fraction in (0.1, 0.5, 0.9):
        value = np.float32(below + fraction * (above - below))
        x = np.full(200_000, value, np.float32)
        script.round_stochastic(x, rng)
        assert set(np.unique(x)) <= {below, above}
        share_up = np.mean(x == above)
        # 200,000 draws: the standard error of the share is at most 0.0012.
        assert abs(share_up - fraction) < 0.01, (fraction, share_up)
        assert abs(x.mean() - value) < 0.01 * (above - below)


def test_the_experiment_reproduces_bfloat16_state_and_runs():
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tasks",
            "spirals",
            "--seeds",
            "0",
            "--epochs",
            "3",
            "--samples",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "stochastic_rounding=True" in done.stdout
    assert "emulated stochastic" in done.stdout
