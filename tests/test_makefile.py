"""The Makefile passes ARGS on to the demo, the benchmark and pytest (checked with make -n)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def planned(target: str, args: str) -> str:
    """The commands ``make TARGET ARGS=...`` would run, without running them."""
    done = subprocess.run(
        ["make", "--dry-run", target, f"ARGS={args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "target, command",
    [
        ("demo", "-m adamax_rs demo"),
        ("bench", "-m adamax_rs bench"),
        ("test-python", "-m pytest --quiet"),
    ],
)
def test_args_reach_the_command(target, command):
    args = "--epochs 50 --plot 'loss curve.png'"
    assert f"{command} {args}\n" in planned(target, args)


def test_build_shows_what_it_does_and_how_long_it_takes():
    text = planned("build", "")
    assert "maturin develop --release\n" in text  # not --quiet: cargo's progress shows
    assert "about 1.5 min" in text
