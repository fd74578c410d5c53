"""save_checkpoint / load_checkpoint: round trip, refusal of bad files, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from adamax_rs import Adamax, Parameter, load_checkpoint, save_checkpoint
from checkpoint_writer import SHAPES, gradients, initial
from conftest import assert_unchanged, snapshot
from reference import ReferenceAdamax


@pytest.fixture
def trained(rng):
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(5, 4), (3,)]]
    opt = Adamax([{"params": params[:1], "tag": "first"}, {"params": params[1:], "lr": 0.1}])
    for _ in range(3):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(np.float32)
        opt.step()
    return opt, params


def test_round_trip_restores_state_and_hyperparameters(tmp_path, trained):
    opt, params = trained
    path = tmp_path / "opt.npz"
    save_checkpoint(opt, path)
    fresh = Adamax([{"params": params[:1]}, {"params": params[1:]}], lr=0.5)
    load_checkpoint(fresh, path)
    assert fresh.param_groups[0]["tag"] == "first"
    assert fresh.param_groups[1]["lr"] == 0.1
    for p in params:
        for key in ("exp_avg", "exp_inf"):
            assert fresh.state[p][key].tobytes() == opt.state[p][key].tobytes()
        assert fresh.state[p]["step"] == 3
    assert [f.name for f in tmp_path.iterdir()] == ["opt.npz"]  # no temporary left behind


def test_file_is_readable_without_pickle_and_documented(tmp_path, trained):
    opt, _ = trained
    path = tmp_path / "opt.npz"
    save_checkpoint(opt, path)
    with np.load(path, allow_pickle=False) as archive:
        metadata = json.loads(archive["metadata"].tobytes())
        assert metadata["format"] == "adamax_rs.checkpoint" and metadata["version"] == 1
        assert archive["state/0/exp_avg"].shape == (5, 4)


def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_flip_array_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("state/0/exp_avg.npy")
    # A byte well inside the member's stored data: only the CRC can notice.
    offset = (
        info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    )
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def corrupt_not_a_zip(path: Path) -> None:
    path.write_text("this is not a checkpoint")


def corrupt_empty(path: Path) -> None:
    path.write_bytes(b"")


def corrupt_no_metadata(path: Path) -> None:
    np.savez(path.open("wb"), x=np.zeros(3))


def corrupt_pickled_object(path: Path) -> None:
    np.savez(path.open("wb"), metadata=np.array([{"a": 1}], dtype=object))


def corrupt_other_optimizer(path: Path) -> None:
    with np.load(path, allow_pickle=False) as archive:
        contents = {k: archive[k] for k in archive.files}
    meta = json.loads(contents["metadata"].tobytes())
    meta["optimizer"] = "SGD"
    contents["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path.open("wb"), **contents)


def corrupt_wrong_shape(path: Path) -> None:
    with np.load(path, allow_pickle=False) as archive:
        contents = {k: archive[k] for k in archive.files}
    contents["state/1/exp_inf"] = np.zeros(4, np.float32)
    np.savez(path.open("wb"), **contents)


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_truncate,
        corrupt_flip_array_byte,
        corrupt_not_a_zip,
        corrupt_empty,
        corrupt_no_metadata,
        corrupt_pickled_object,
        corrupt_other_optimizer,
        corrupt_wrong_shape,
    ],
)
def test_bad_files_are_value_errors_and_change_nothing(tmp_path, trained, corrupt):
    opt, params = trained
    path = tmp_path / "opt.npz"
    save_checkpoint(opt, path)
    corrupt(path)
    before = snapshot(opt, params)
    with pytest.raises(ValueError):
        load_checkpoint(opt, path)
    assert_unchanged(before, opt, params)


def test_missing_file_is_file_not_found(tmp_path, trained):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(trained[0], tmp_path / "nope.npz")


def test_group_values_that_are_not_json_are_refused_before_writing(tmp_path, trained):
    opt, _ = trained
    path = tmp_path / "opt.npz"
    save_checkpoint(opt, path)
    good = path.read_bytes()
    opt.param_groups[0]["tag"] = object()
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(opt, path)
    assert path.read_bytes() == good


def expected_state(steps: int):
    ref = ReferenceAdamax(initial(), lr=0.01, weight_decay=0.01)
    for step in range(steps):
        ref.step(gradients(step))
    return ref


def test_checkpoint_survives_sigkill_at_random_moments(tmp_path):
    path = tmp_path / "live.npz"
    writer = Path(__file__).with_name("checkpoint_writer.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    chooser = random.Random()
    seen_steps = []
    deadline = time.monotonic() + 6.0
    kills = 0
    while kills < 8 and time.monotonic() < deadline:
        child = subprocess.Popen(
            [sys.executable, str(writer), str(path)], stdout=subprocess.PIPE, env=env
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == b"saved"
            time.sleep(chooser.uniform(0.0, 0.25))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        kills += 1
        params = [Parameter(np.zeros(s, np.float32)) for s in SHAPES]
        opt = Adamax(params)
        load_checkpoint(opt, path)  # must never fail
        steps = opt.state[params[0]]["step"]
        assert steps >= 1 and opt.state[params[1]]["step"] == steps
        ref = expected_state(steps)
        for p, (_t, m, u) in zip(params, ref.state):
            assert opt.state[p]["exp_avg"].tobytes() == m.tobytes()
            assert opt.state[p]["exp_inf"].tobytes() == u.tobytes()
        seen_steps.append(steps)
    assert kills >= 3, seen_steps
