"""The command line: --version, demo and bench run and say what they should."""

from __future__ import annotations

import subprocess
import sys

import adamax_rs


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "adamax_rs", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_version_agrees_with_the_module():
    assert run("--version").strip() == f"adamax_rs {adamax_rs.__version__}"


def test_demo_trains_and_matches_the_numpy_baseline():
    out = run("demo", "--epochs", "8", "--samples", "400", "--quiet")
    assert "losses identical: True" in out
    assert "accuracy" in out


def test_demo_help_documents_every_option():
    out = run("demo", "--help")
    for option in ("--epochs", "--samples", "--hidden", "--lr", "--seed", "--plot", "--quiet"):
        assert option in out


def test_bench_runs_a_small_workload():
    out = run("bench", "--only", "1 x 1,000", "--seconds", "0.05", "--no-numpy")
    assert "| 1 x 1,000 float32 | adamax_rs |" in out
    assert "bandwidth probe" in out
