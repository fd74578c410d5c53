"""The command line: --version, demo and bench run and say what they should."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import adamax_rs
from adamax_rs import __main__ as cli


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


def test_demo_beta2_reaches_the_optimizers():
    # The numpy baseline takes the same beta2, or the losses would differ.
    out = run("demo", "--epochs", "8", "--samples", "400", "--quiet", "--beta2", "0.9")
    assert "losses identical: True" in out
    # Both the plain run and the state-dtype comparison train differently with another beta2.
    for state_dtype in ("float32", "bfloat16"):
        losses = {
            beta2: re.findall(
                r"loss (\d+\.\d+)",
                run(
                    "demo",
                    "--epochs",
                    "4",
                    "--samples",
                    "400",
                    "--quiet",
                    "--no-compare",
                    "--beta2",
                    beta2,
                    "--state-dtype",
                    state_dtype,
                ),
            )
            for beta2 in ("0.9", "0.999")
        }
        assert losses["0.9"] and losses["0.999"], losses
        assert losses["0.9"][-1] != losses["0.999"][-1], (state_dtype, losses)


def test_demo_help_documents_every_option():
    out = run("demo", "--help")
    for option in (
        "--epochs",
        "--samples",
        "--hidden",
        "--lr",
        "--beta2",
        "--seed",
        "--plot",
        "--quiet",
    ):
        assert option in out


def test_bench_runs_a_small_workload():
    out = run("bench", "--only", "1 x 1,000", "--seconds", "0.05", "--no-numpy")
    assert "| 1 x 1,000 float32 | adamax_rs |" in out
    assert "bandwidth probe" in out


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adamax_rs", "demo", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_demo_plot_writes_a_png(tmp_path):
    path = tmp_path / "loss.png"
    done = run_demo("--epochs", "3", "--plot", str(path))
    assert done.returncode == 0, done.stderr
    assert f"loss curve written to {path}" in done.stdout
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_demo_plot_without_matplotlib_fails_before_training(tmp_path):
    # A package named matplotlib ahead of site-packages that cannot be imported.
    shim = tmp_path / "shim" / "matplotlib"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("no matplotlib here")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim.parent), *sys.path])}
    path = tmp_path / "loss.png"
    done = run_demo("--epochs", "50", "--plot", str(path), env=env)
    assert done.returncode != 0
    assert "matplotlib cannot be imported (no matplotlib here)" in done.stderr
    assert "pip install matplotlib" in done.stderr
    assert "Training" not in done.stdout and "epoch" not in done.stdout
    assert not path.exists()


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_plot_into_a_missing_folder_fails_before_the_work(tmp_path, command):
    path = tmp_path / "missing" / "plot.png"
    done = subprocess.run(
        [sys.executable, "-m", "adamax_rs", command, "--plot", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"--plot {path}: the folder {path.parent} does not exist" in done.stderr


def test_plot_that_cannot_be_written_after_training_exits_non_zero(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    path = tmp_path / "loss.png"
    code = cli.main(["demo", "--epochs", "2", "--samples", "200", "--plot", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "final: loss" in out  # it trained, then could not write
    assert "the plot could not be written" in err and "No space left on device" in err


def test_demo_progress_in_a_log_is_plain_lines():
    # Bytes, not text: text mode would turn the carriage returns looked for into newlines.
    done = subprocess.run(
        [sys.executable, "-m", "adamax_rs", "demo", "--epochs", "12", "--samples", "200"]
        + ["--every", "5"],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert b"\r" not in done.stdout and b"\r" not in done.stderr, done.stderr
    epochs = re.findall(rb"^  epoch +(\d+) ", done.stdout, flags=re.MULTILINE)
    assert epochs == [b"1", b"5", b"10", b"12"]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
def test_demo_shows_a_progress_bar_on_a_terminal():
    import fcntl
    import struct
    import termios

    import tqdm  # noqa: F401  (a dev package: the bar needs it)

    leader, follower = os.openpty()
    # A new pseudo-terminal is 0 columns wide; tqdm would draw nothing in it.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "adamax_rs", "demo", "--epochs", "5", "--samples", "200"],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the terminal closed: the demo has exited
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert process.wait(timeout=300) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert re.search(r"\d+%\|", text), text  # tqdm's bar


BAD_VALUES = [
    # (command and options, the option the one-line error names)
    (["demo", "--epochs", "0"], "--epochs"),
    (["demo", "--epochs", "-1"], "--epochs"),
    (["demo", "--hidden", "0"], "--hidden"),
    (["demo", "--layers", "-1"], "--layers"),
    (["demo", "--batch-size", "0"], "--batch-size"),
    (["demo", "--every", "0"], "--every"),
    (["demo", "--samples", "1"], "--samples"),
    (["demo", "--noise", "-1"], "--noise"),
    (["demo", "--noise", "nan"], "--noise"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--lr", "-0.1"], "--lr"),
    (["demo", "--lr", "inf"], "--lr"),
    (["demo", "--beta2", "1"], "--beta2"),
    (["demo", "--beta2", "nan"], "--beta2"),
    (["bench", "--seconds", "0"], "--seconds"),
    (["bench", "--seconds", "nan"], "--seconds"),
    (["bench", "--seed", "-1"], "--seed"),
    (["bench", "--threads", "100000"], "--threads"),
]


@pytest.mark.parametrize(("argv", "option"), BAD_VALUES, ids=lambda v: " ".join(v))
def test_a_bad_option_value_is_a_one_line_usage_error(argv, option, capsys):
    # Found by review: these ran into ZeroDivisionError, IndexError or numpy tracebacks, or
    # trained on NaN (--noise nan, --samples 1), or printed "a -1x8 MLP" and exited 0.
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--task", "charlm", "--epochs", "3"], "--task charlm trains a fixed model"),
        (["--task", "charlm", "--lr", "100", "--hidden", "4"], "takes no --hidden, --lr"),
        (["--distributed", "--task", "charlm"], "--distributed trains the spirals"),
        (["--distributed", "--state-dtype", "8bit"], "--distributed trains the spirals"),
        (["--distributed", "--beta2", "0.5"], "--distributed trains the spirals"),
    ],
)
def test_demo_options_the_run_would_ignore_are_refused(argv, says, capsys):
    # Found by review: charlm has fixed sizes and ignored these options silently, and the
    # distributed demo trained the spirals with float32 state whatever was asked.
    assert cli.main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert says in captured.err
    assert captured.out == ""


def test_a_one_epoch_demo_is_not_called_a_failure():
    # Found by review: with one epoch the first and last losses are the same value, and the
    # demo said "the loss did not fall: something is wrong" and exited 1.
    out = run("demo", "--epochs", "1", "--samples", "200", "--quiet", "--no-compare")
    assert "did not fall" not in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--only", "10000 x 16"], "matches no workload"),
        (["--implementations", "nope"], "no implementation's name contains 'nope'"),
        (["--only", "threads", "--threads", "1,2"], "matches no workload"),
    ],
)
def test_bench_options_that_select_nothing_are_errors(argv, says):
    # Found by review: they printed an empty report and exited 0.
    done = subprocess.run(
        [sys.executable, "-m", "adamax_rs", "bench", "--quick", *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert says in done.stderr
    assert done.stdout == ""
