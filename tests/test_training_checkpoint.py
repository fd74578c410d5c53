"""save_training_checkpoint / load_training_checkpoint: parameters, optimizer, scheduler and
the caller's values in one file; resuming gives the numbers of an uninterrupted run, also
after SIGKILL (the README's example, run and killed in subprocesses)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from checkpoint_snapshot import assert_same, take
from safetensors_layout import read, rewrite

from adamax_rs import (
    Adamax,
    Parameter,
    load_checkpoint,
    load_training_checkpoint,
    save_checkpoint,
    save_training_checkpoint,
)
from adamax_rs.lr_scheduler import CosineAnnealingLR, StepLR
from reference import ReferenceAdamax

EXAMPLE = Path(__file__).with_name("resume_example.py")


def model(seed=0):
    rng = np.random.default_rng(seed)
    params = [
        Parameter(rng.standard_normal((4, 3)).astype(np.float32)),
        Parameter(rng.standard_normal(3).astype(np.float32)),
        Parameter(np.asfortranarray(rng.standard_normal((2, 5)))),
    ]
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "lr": 0.01}], lr=0.05)
    return opt, params


def gradients(step, params):
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def train(opt, scheduler, params, start, stop):
    for step in range(start, stop):
        for p, g in zip(params, gradients(step, params)):
            p.grad = g
        opt.step()
        scheduler.step()


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda o: CosineAnnealingLR(o, T_max=7, eta_min=0.001),
        lambda o: StepLR(o, step_size=3, gamma=0.5),
    ],
)
def test_resuming_gives_the_numbers_of_an_uninterrupted_run(tmp_path, make_scheduler):
    opt, params = model()
    scheduler = make_scheduler(opt)
    train(opt, scheduler, params, 0, 20)
    uninterrupted = [p.data.copy() for p in params]
    lrs = [g["lr"] for g in opt.param_groups]

    opt, params = model()
    scheduler = make_scheduler(opt)
    train(opt, scheduler, params, 0, 9)
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path, scheduler=scheduler, extra={"step": 9})

    opt2, params2 = model(seed=1)  # other initial values: the load must replace them
    arrays = [p.data for p in params2]
    scheduler2 = make_scheduler(opt2)
    extra = load_training_checkpoint(opt2, path, scheduler=scheduler2)
    assert extra == {"step": 9}
    assert [p.data for p in params2] == arrays and all(
        p.data is a for p, a in zip(params2, arrays)
    )  # restored in place
    assert params2[2].data.flags.f_contiguous
    for p, q in zip(params, params2):
        assert p.data.tobytes() == q.data.tobytes()
    train(opt2, scheduler2, params2, 9, 20)
    for p, expected in zip(params2, uninterrupted):
        assert p.data.tobytes() == expected.tobytes()
    assert [g["lr"] for g in opt2.param_groups] == lrs


def test_the_file_holds_parameters_optimizer_scheduler_and_extra(tmp_path):
    opt, params = model()
    scheduler = StepLR(opt, step_size=3)
    train(opt, scheduler, params, 0, 4)
    path = tmp_path / "run.safetensors"
    extra = {"epoch": np.int64(2), "seed": 2**100, "best": np.float32(0.25), "note": [None, True]}
    save_training_checkpoint(opt, path, scheduler=scheduler, extra=extra)
    metadata, arrays = read(path)  # the test's own reader
    for i, p in enumerate(params):
        np.testing.assert_array_equal(arrays[f"param/{i}"], p.data)
    assert metadata["parameters"] == "3"
    assert json.loads(metadata["extra"]) == {
        "epoch": 2,
        "seed": 2**100,
        "best": 0.25,
        "note": [None, True],
    }
    saved = json.loads(metadata["scheduler"])
    assert saved["class"] == "StepLR"
    assert saved["state"]["last_epoch"] == 4 and saved["state"]["step_size"] == 3
    assert json.loads(metadata["optimizer"])["state"]["0"]["step"] == 4
    fresh, _ = model(seed=3)
    assert load_training_checkpoint(fresh, path, scheduler=StepLR(fresh, step_size=3)) == {
        "epoch": 2,
        "seed": 2**100,
        "best": 0.25,
        "note": [None, True],
    }


def test_without_scheduler_or_extra(tmp_path):
    opt, params = model()
    train(opt, StepLR(opt, 2), params, 0, 2)
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path)
    fresh, fresh_params = model(seed=5)
    assert load_training_checkpoint(fresh, path) == {}
    for p, q in zip(params, fresh_params):
        assert p.data.tobytes() == q.data.tobytes()


def test_load_checkpoint_reads_only_the_optimizer_of_a_training_checkpoint(tmp_path):
    opt, params = model()
    scheduler = StepLR(opt, 2)
    train(opt, scheduler, params, 0, 3)
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path, scheduler=scheduler, extra={"a": 1})
    fresh, fresh_params = model(seed=4)
    values = [p.data.copy() for p in fresh_params]
    load_checkpoint(fresh, path)
    assert fresh.state[fresh_params[0]]["step"] == 3
    for p, v in zip(fresh_params, values):
        assert p.data.tobytes() == v.tobytes()


@pytest.mark.parametrize(
    "extra, culprit",
    [
        ({"a": object()}, "extra['a']"),
        ({"a": {1: 2}}, "extra['a']"),
        ({"a": {1, 2}}, "set"),
        ({"a": np.zeros(2)}, "ndarray"),
        ({"a": 1 + 2j}, "complex"),
        ([("a", 1)], "dict"),
        ("epoch=1", "dict"),
    ],
)
def test_extra_must_be_json_values(tmp_path, extra, culprit):
    opt, params = model()
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path, extra={"ok": 1})
    good = path.read_bytes()
    with pytest.raises(TypeError, match=culprit.replace("[", r"\[").replace("]", r"\]")):
        save_training_checkpoint(opt, path, extra=extra)
    assert path.read_bytes() == good
    assert [f.name for f in tmp_path.iterdir()] == ["run.safetensors"]


@pytest.mark.parametrize(
    "extra, culprit",
    [
        ({"a": [1, float("nan")]}, "extra['a'][1]"),
        ({"b": np.float32("inf")}, "extra['b']"),
        ({"c": Fraction(10**400)}, "extra['c']"),
    ],
)
def test_extra_numbers_json_cannot_hold_are_value_errors(tmp_path, extra, culprit):
    opt, params = model()
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path, extra={"ok": 1})
    good = path.read_bytes()
    with pytest.raises(ValueError, match=culprit.replace("[", r"\[").replace("]", r"\]")):
        save_training_checkpoint(opt, path, extra=extra)
    assert path.read_bytes() == good


def test_too_much_extra_is_refused_before_writing(tmp_path):
    opt, _ = model()
    path = tmp_path / "run.safetensors"
    with pytest.raises(ValueError, match="metadata"):
        save_training_checkpoint(opt, path, extra={"log": [0.5] * 100_000})
    assert not path.exists()


def test_a_scheduler_of_another_optimizer_is_refused(tmp_path):
    opt, _ = model()
    other, _ = model()
    with pytest.raises(ValueError, match="another optimizer"):
        save_training_checkpoint(opt, tmp_path / "x", scheduler=StepLR(other, 2))
    with pytest.raises(TypeError, match="scheduler"):
        save_training_checkpoint(opt, tmp_path / "x", scheduler="StepLR")
    assert not (tmp_path / "x").exists()
    save_training_checkpoint(opt, tmp_path / "x", scheduler=StepLR(opt, 2))
    with pytest.raises(ValueError, match="another optimizer"):
        load_training_checkpoint(opt, tmp_path / "x", scheduler=StepLR(other, 2))
    with pytest.raises(TypeError, match="scheduler"):
        load_training_checkpoint(opt, tmp_path / "x", scheduler=object())


@pytest.fixture
def saved(tmp_path):
    """A training checkpoint with a StepLR, and a fresh model to load it into."""
    opt, params = model()
    scheduler = StepLR(opt, step_size=3)
    train(opt, scheduler, params, 0, 5)
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path, scheduler=scheduler, extra={"epoch": 5})
    fresh, _ = model(seed=8)
    fresh_scheduler = StepLR(fresh, step_size=3)
    train(
        fresh,
        fresh_scheduler,
        fresh.param_groups[0]["params"] + fresh.param_groups[1]["params"],
        0,
        1,
    )
    return path, fresh, fresh_scheduler


def refused(path, opt, watched, match, **kwargs):
    """Loading is a ValueError matching ``match``; ``opt`` (with its parameters) and the
    scheduler ``watched`` are unchanged."""
    before = take(opt, watched)
    with pytest.raises(ValueError, match=match):
        load_training_checkpoint(opt, path, **kwargs)
    assert_same(before, opt, watched)


def test_mismatched_schedulers_change_nothing(saved, tmp_path):
    path, opt, scheduler = saved
    refused(path, opt, scheduler, "pass scheduler=")
    refused(path, opt, scheduler, "CosineAnnealingLR", scheduler=CosineAnnealingLR(opt, 5))
    plain = tmp_path / "plain.safetensors"
    other, params = model()
    save_training_checkpoint(other, plain)
    refused(plain, opt, scheduler, "no scheduler", scheduler=scheduler)
    save_checkpoint(other, plain)
    refused(plain, opt, scheduler, "holds no parameters", scheduler=scheduler)


SCHEDULER_CASES = {
    "last_epoch a string": lambda s: s.update(last_epoch="5"),
    "last_epoch a float": lambda s: s.update(last_epoch=5.0),
    "gamma a bool": lambda s: s.update(gamma=True),
    "base_lrs too short": lambda s: s.update(base_lrs=[0.05]),
    "base_lrs of strings": lambda s: s.update(base_lrs=["a", "b"]),
    "a key missing": lambda s: s.pop("step_size"),
    "a key more": lambda s: s.update(optimizer="x"),
    "state a list": lambda s: s.clear(),
}


@pytest.mark.parametrize("change", SCHEDULER_CASES.values(), ids=SCHEDULER_CASES.keys())
def test_hostile_scheduler_states_change_nothing(saved, change):
    path, opt, scheduler = saved

    def edit(header, docs):
        change(docs["scheduler"]["state"])
        if not docs["scheduler"]["state"]:
            docs["scheduler"]["state"] = []

    rewrite(path, edit)
    refused(path, opt, scheduler, "scheduler", scheduler=scheduler)


def test_hostile_parameters_change_nothing(saved, tmp_path):
    path, opt, scheduler = saved
    good = path.read_bytes()
    cases = {
        "param/3": lambda h, d: d.update(parameters="4"),
        "parameter count": lambda h, d: d.update(parameters="three"),
        "extra entry is not an object": lambda h, d: d.update(extra=[1]),
        "nested": lambda h, d: d.update(extra='{"a":' + "[" * 100 + "]" * 100 + "}"),
    }
    for match, change in cases.items():
        path.write_bytes(good)
        rewrite(path, change)
        refused(path, opt, scheduler, match, scheduler=scheduler)
    # a parameter stored as float64 for a float32 parameter
    other, params = model()
    params[0].data = params[0].data.astype(np.float64)
    save_training_checkpoint(other, path, scheduler=StepLR(other, 3))
    refused(path, opt, scheduler, "convert exactly", scheduler=scheduler)
    # other shapes
    small = [Parameter(np.zeros((3, 4), np.float32)), *model()[1][1:]]
    other = Adamax([{"params": small[:2]}, {"params": small[2:]}])
    save_training_checkpoint(other, path, scheduler=StepLR(other, 3))
    refused(path, opt, scheduler, "shape", scheduler=scheduler)


def test_read_only_parameters_are_refused_before_anything_changes(saved):
    path, opt, scheduler = saved
    opt.param_groups[1]["params"][0].data.flags.writeable = False
    refused(path, opt, scheduler, "read-only", scheduler=scheduler)


def test_a_failure_while_restoring_rolls_the_scheduler_back(saved, monkeypatch):
    """Were the optimizer to refuse what was checked, the scheduler, already restored, is
    put back, and no parameter is written."""
    path, opt, scheduler = saved

    def refuse(state_dict):
        raise ValueError("refused late")

    monkeypatch.setattr(opt, "load_state_dict", refuse)
    refused(path, opt, scheduler, "refused late", scheduler=scheduler)


def test_a_resume_reproduces_the_reference_optimizer(tmp_path):
    """Checked against the numpy reference optimizer, not against the code under test."""
    params = [Parameter(np.linspace(-1, 1, 6, dtype=np.float32))]
    opt = Adamax(params, lr=0.01)
    ref = ReferenceAdamax([params[0].data.copy()], lr=0.01)
    for step in range(6):
        grad = gradients(step, params)[0]
        if step == 3:
            save_training_checkpoint(opt, tmp_path / "r")
            params = [Parameter(np.zeros(6, np.float32))]
            opt = Adamax(params, lr=0.5)
            load_training_checkpoint(opt, tmp_path / "r")
        params[0].grad = grad
        opt.step()
        ref.step([grad])
    assert params[0].data.tobytes() == ref.params[0].tobytes()


# -- the README example, killed ---------------------------------------------------------------


def run_example(path: Path, timeout: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), str(path)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# The example with a slow disk: each chunk of a save takes 1 ms more, so that a kill during a
# save lands between two writes of it (a writer that is not atomic leaves a torn file then;
# without the delay a small save reaches the page cache in one system call, which SIGKILL
# cannot tear).
SLOW_DISK = r"""
import runpy, sys, time
import adamax_rs._safetensors as layout
chunks = layout._little_endian_chunks
def slowly(array):
    for chunk in chunks(array):
        time.sleep(0.001)
        yield chunk
layout._little_endian_chunks = slowly
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def child_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def final_parameters(path: Path) -> list[bytes]:
    metadata, arrays = read(path)
    assert json.loads(metadata["extra"])["step"] == 300
    return [arrays[f"param/{i}"].tobytes() for i in range(int(metadata["parameters"]))]


def temporaries(folder: Path) -> list[str]:
    return [
        n for n in os.listdir(folder) if n.startswith(".run.safetensors.") and n.endswith(".tmp")
    ]


def kill_during_a_save(child: subprocess.Popen, folder: Path, chooser: random.Random) -> bool:
    """SIGKILL ``child`` while a checkpoint is being written (a temporary file exists),
    after a random number of saves; True if it was killed so."""
    skip = chooser.randrange(0, 10)
    seen = 0
    waiting = False
    while child.poll() is None:
        writing = bool(temporaries(folder))
        if writing and not waiting:
            seen += 1
            waiting = True
            if seen > skip:
                child.send_signal(signal.SIGKILL)
                child.wait()
                return True
        waiting = writing
    return False


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The example run once without interruption: its output and its final checkpoint."""
    path = tmp_path_factory.mktemp("uninterrupted") / "run.safetensors"
    return run_example(path), path


#: (how each run but the last is killed, how many runs are killed) per trial.
TRIALS = [("save", 1), ("save", 2), ("any moment", 1), ("save", 1), ("any moment", 2)]


def test_resume_after_sigkill_ends_with_the_numbers_of_an_uninterrupted_run(
    tmp_path, uninterrupted
):
    expected = final_parameters(uninterrupted[1])
    chooser = random.Random()
    seed = chooser.randrange(2**32)
    chooser.seed(seed)
    during_save = 0
    trials = []
    for trial, (how, kills) in enumerate(TRIALS):
        folder = tmp_path / f"trial{trial}"
        folder.mkdir()
        path = folder / "run.safetensors"
        for _ in range(kills):
            command = [str(EXAMPLE)] if how == "any moment" else ["-c", SLOW_DISK, str(EXAMPLE)]
            child = subprocess.Popen(
                [sys.executable, *command, str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=child_env(),
            )
            try:
                if how == "any moment":
                    time.sleep(chooser.uniform(0.0, 0.8))  # startup included
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                elif kill_during_a_save(child, folder, chooser):
                    during_save += 1
            finally:
                if child.poll() is None:
                    child.send_signal(signal.SIGKILL)
                child.wait()
                assert child.stderr is not None
                child.stderr.close()
        output = run_example(path)  # resumes, and finishes
        trials.append(output.splitlines()[0] if output else "")
        assert final_parameters(path) == expected, (seed, trial, trials)
        leftovers = set(os.listdir(folder)) - {"run.safetensors"}
        assert leftovers == set(temporaries(folder)), leftovers
    assert during_save >= 2, (seed, trials)  # the kills did land inside saves
    assert any(t.startswith("resumed at step") for t in trials), trials


def test_the_example_resumes_from_its_own_checkpoint(uninterrupted):
    output, path = uninterrupted
    assert "step 300: loss" in output and "resumed" not in output
    assert run_example(path).strip() == "resumed at step 300"
