"""save_checkpoint / load_checkpoint: round trips, the file format, 0.1.0's files, file modes,
symlinks and crash safety. Hostile files are in test_checkpoint_hostile.py."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors_layout import read, rewrite

import adamax_rs.checkpoint
from adamax_rs import Adamax, Optimizer, Parameter, _safetensors, load_checkpoint, save_checkpoint
from checkpoint_writer import SHAPES, gradients, initial
from conftest import assert_unchanged, snapshot
from reference import ReferenceAdamax

DATA = Path(__file__).with_name("data")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
    path = tmp_path / "opt.safetensors"
    save_checkpoint(opt, path)
    fresh = Adamax([{"params": params[:1]}, {"params": params[1:]}], lr=0.5)
    load_checkpoint(fresh, path)
    assert fresh.param_groups[0]["tag"] == "first"
    assert fresh.param_groups[1]["lr"] == 0.1
    assert fresh.param_groups[0]["lr"] == 0.002
    for p in params:
        for key in ("exp_avg", "exp_inf"):
            assert fresh.state[p][key].tobytes() == opt.state[p][key].tobytes()
        assert fresh.state[p]["step"] == 3
    assert [f.name for f in tmp_path.iterdir()] == ["opt.safetensors"]  # no temporary left


def random_like(rng, shape, dtype):
    values = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        values = values + 1j * rng.standard_normal(shape)
    return values.astype(dtype)


def every_kind_of_parameter(rng):
    """One parameter of each supported dtype and layout, a 0-d and an empty one."""
    return [
        Parameter(random_like(rng, (3, 4), np.float32)),
        Parameter(random_like(rng, (2, 3), np.float64)),
        Parameter(random_like(rng, (5,), np.complex64)),
        Parameter(random_like(rng, (2, 2), np.complex128)),
        Parameter(random_like(rng, (6,), np.float16)),
        Parameter(random_like(rng, (2, 3), np.float32).astype(ml_dtypes.bfloat16)),
        Parameter(np.asfortranarray(random_like(rng, (3, 5), np.float32))),
        Parameter(np.asfortranarray(random_like(rng, (3, 2), np.complex64))),
        Parameter(random_like(rng, (), np.float64)),
        Parameter(np.zeros((0, 3), np.float32)),
    ]


def step_all(opt, params, rng, steps=2):
    for _ in range(steps):
        for p in params:
            p.grad = random_like(rng, p.shape, np.float32).astype(p.dtype)
        opt.step()


@pytest.mark.parametrize("master_weights", [False, True])
@pytest.mark.parametrize("state_dtype", [None, np.float64])
def test_round_trip_of_every_dtype_and_layout(tmp_path, rng, master_weights, state_dtype):
    params = every_kind_of_parameter(rng)
    options = {"master_weights": master_weights, "state_dtype": state_dtype}
    opt = Adamax(params, lr=0.01, **options)
    step_all(opt, params, rng)
    path = tmp_path / "all.safetensors"
    save_checkpoint(opt, path)
    fresh = Adamax(params, **options)
    load_checkpoint(fresh, path)
    for p in params:
        saved, loaded = opt.state[p], fresh.state[p]
        assert saved.keys() == loaded.keys()
        for key, value in saved.items():
            if key == "step":
                assert loaded[key] == value
                continue
            assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
            assert loaded[key].tobytes(order="A") == value.tobytes(order="A"), key
            assert loaded[key].flags.f_contiguous == value.flags.f_contiguous
    # Both optimizers go on identically.
    data = [p.data.copy() for p in params]
    step_all(opt, params, np.random.default_rng(5), steps=1)
    after = [p.data.copy() for p in params]
    for p, d in zip(params, data):
        p.data[...] = d
    step_all(fresh, params, np.random.default_rng(5), steps=1)
    for p, a in zip(params, after):
        assert p.data.tobytes() == a.tobytes()


def test_file_is_the_documented_safetensors_layout(tmp_path, rng):
    params = [Parameter(random_like(rng, (3, 2), np.complex64)), Parameter(np.ones(4))]
    opt = Adamax([{"params": params, "tag": "x"}])
    step_all(opt, params, rng, steps=3)
    path = tmp_path / "opt.safetensors"
    save_checkpoint(opt, path)
    metadata, arrays = read(path)  # the test's own reader
    assert metadata["format"] == "adamax_rs.checkpoint" and metadata["version"] == "2"
    document = json.loads(metadata["optimizer"])
    assert document["class"] == "Adamax"
    assert document["state"] == {"0": {"step": 3}, "1": {"step": 3}}
    assert document["param_groups"][0]["tag"] == "x"
    assert document["param_groups"][0]["params"] == [0, 1]
    assert json.loads(metadata["complex"]) == ["state/0/exp_avg", "state/0/exp_inf"]
    assert sorted(arrays) == [f"state/{i}/{k}" for i in (0, 1) for k in ("exp_avg", "exp_inf")]
    for i, p in enumerate(params):
        for key in ("exp_avg", "exp_inf"):
            stored = arrays[f"state/{i}/{key}"]
            expected = opt.state[p][key]
            if expected.dtype.kind == "c":
                assert stored.shape == expected.shape + (2,) and stored.dtype == np.float32
                stored = stored[..., 0] + 1j * stored[..., 1]
            np.testing.assert_array_equal(stored, expected)
    assert "parameters" not in metadata and "scheduler" not in metadata


def test_file_is_readable_by_the_safetensors_package(tmp_path, trained):
    try:
        from safetensors import safe_open
    except ImportError:
        if IN_CI:
            pytest.fail("the safetensors package must be installed in CI")
        pytest.skip("safetensors is not installed")
    opt, params = trained
    path = tmp_path / "opt.safetensors"
    save_checkpoint(opt, path)
    with safe_open(str(path), framework="np") as file:
        assert file.metadata()["format"] == "adamax_rs.checkpoint"
        for i, p in enumerate(params):
            np.testing.assert_array_equal(
                file.get_tensor(f"state/{i}/exp_avg"), opt.state[p]["exp_avg"]
            )


def v1_fixture_optimizer():
    sys.path.insert(0, str(DATA))
    try:
        from make_checkpoint_v1 import parameters
    finally:
        sys.path.remove(str(DATA))
    params = parameters()
    opt = Adamax([{"params": params[:2]}, {"params": params[2:]}], master_weights=True)
    return opt, params


def test_checkpoints_of_version_0_1_0_still_load():
    opt, params = v1_fixture_optimizer()
    path = DATA / "checkpoint_v1.npz"
    load_checkpoint(opt, path)
    with np.load(path, allow_pickle=False) as archive:  # numpy's own reader as reference
        metadata = json.loads(archive["metadata"].tobytes())
        arrays = {name: archive[name] for name in archive.files if name != "metadata"}
    for saved, group in zip(metadata["param_groups"], opt.param_groups):
        assert {k: v for k, v in saved.items() if k != "params"} == {
            k: v for k, v in group.items() if k != "params"
        }
    assert len(arrays) == 9
    for name, array in arrays.items():
        _, index, key = name.split("/")
        loaded = opt.state[params[int(index)]][key]
        assert loaded.dtype == array.dtype and loaded.shape == array.shape
        assert loaded.tobytes(order="A") == array.tobytes(order="A"), name
        assert opt.state[params[int(index)]]["step"] == 3
    assert params[4] not in opt.state  # never stepped, no state


def test_numpy_scalar_hyperparameters_are_saved_as_json_numbers(tmp_path, rng):
    p = Parameter(np.ones(3, np.float32))
    opt = Adamax([p], lr=np.float32(0.1), betas=(np.float64(0.8), 0.9), maximize=np.bool_(True))
    opt.param_groups[0]["epoch"] = np.int64(4)
    step_all(opt, [p], rng)
    path = tmp_path / "opt.safetensors"
    save_checkpoint(opt, path)
    group = json.loads(read(path)[0]["optimizer"])["param_groups"][0]
    assert group["lr"] == float(np.float32(0.1)) and type(group["lr"]) is float
    assert group["maximize"] is True and group["beta1"] == 0.8 and group["epoch"] == 4
    fresh = Adamax([p])
    load_checkpoint(fresh, path)
    assert fresh.param_groups[0]["lr"] == np.float32(0.1)
    assert fresh.param_groups[0]["maximize"] is True


def test_group_values_that_are_not_json_are_refused_before_writing(tmp_path, trained):
    opt, _ = trained
    path = tmp_path / "opt.safetensors"
    save_checkpoint(opt, path)
    good = path.read_bytes()
    bad_values = [(object(), TypeError), ({1: "a"}, TypeError), (np.zeros(2), TypeError)]
    bad_values += [(float("nan"), ValueError), (-np.inf, ValueError), (10**400, ValueError)]
    for bad, error in bad_values:
        opt.param_groups[0]["tag"] = bad
        with pytest.raises(error, match="tag"):
            save_checkpoint(opt, path)
        assert path.read_bytes() == good
    assert [f.name for f in tmp_path.iterdir()] == ["opt.safetensors"]


def test_missing_file_is_file_not_found(tmp_path, trained):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(trained[0], tmp_path / "nope.safetensors")


def test_saving_where_no_file_can_be_created_names_the_file_as_open_does(tmp_path, trained):
    """A missing folder, or a path through a file: the error is open()'s, for the path given,
    not for the temporary file the save writes first."""
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"")
    for path in [tmp_path / "missing" / "opt.safetensors", blocker / "opt.safetensors"]:
        with pytest.raises(OSError) as expected:
            open(path, "wb")  # noqa: SIM115 - only its error is wanted
        with pytest.raises(type(expected.value)) as raised:
            save_checkpoint(trained[0], path)
        assert raised.value.errno == expected.value.errno
        assert raised.value.filename == str(path)
        assert str(raised.value) == str(expected.value)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a_file"]


def test_not_an_optimizer_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="Optimizer"):
        save_checkpoint(object(), tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Optimizer"):
        load_checkpoint(object(), tmp_path / "x")  # type: ignore[arg-type]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_mode_open_gives_under_the_umask(tmp_path, trained, umask):
    previous = os.umask(umask)
    try:
        save_checkpoint(trained[0], tmp_path / "opt.safetensors")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "opt.safetensors") == mode_of(tmp_path / "plain") == 0o666 & ~umask


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_replaced_file_keeps_its_mode(tmp_path, trained):
    path = tmp_path / "opt.safetensors"
    save_checkpoint(trained[0], path)
    os.chmod(path, 0o640)
    before = path.stat().st_ino
    save_checkpoint(trained[0], path)
    assert mode_of(path) == 0o640
    assert path.stat().st_ino != before  # replaced (atomically), not rewritten in place


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_saving_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path, trained):
    opt, params = trained
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "real.safetensors"
    link = tmp_path / "latest.safetensors"
    link.symlink_to(Path("runs") / "real.safetensors")  # relative, and dangling at first
    save_checkpoint(opt, link)
    assert link.is_symlink() and os.readlink(link) == str(Path("runs") / "real.safetensors")
    assert target.is_file() and not target.is_symlink()
    os.chmod(target, 0o600)
    opt.param_groups[1]["lr"] = 0.25
    save_checkpoint(opt, link)
    assert link.is_symlink() and mode_of(target) == 0o600
    fresh = Adamax([{"params": params[:1]}, {"params": params[1:]}])
    load_checkpoint(fresh, link)
    assert fresh.param_groups[1]["lr"] == 0.25
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "latest.safetensors",
        "real.safetensors",
        "runs",
    ]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, trained, monkeypatch):
    opt, params = trained
    path = tmp_path / "opt.safetensors"
    save_checkpoint(opt, path)
    good = path.read_bytes()

    def fail_midway(file, tensors, metadata):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(adamax_rs.checkpoint._safetensors, "write", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(opt, path)
    assert path.read_bytes() == good
    assert [f.name for f in tmp_path.iterdir()] == ["opt.safetensors"]


def test_checkpoints_of_threads_stepping_are_consistent(tmp_path, trained):
    """A checkpoint taken while another thread steps is one consistent state."""
    import threading

    opt, params = trained
    stop = threading.Event()

    def train():
        rng = np.random.default_rng(3)
        while not stop.is_set():
            for p in params:
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()

    worker = threading.Thread(target=train)
    worker.start()
    try:
        for _ in range(20):
            save_checkpoint(opt, tmp_path / "live.safetensors")
            fresh = Adamax([{"params": params[:1]}, {"params": params[1:]}])
            load_checkpoint(fresh, tmp_path / "live.safetensors")
            steps = {fresh.state[p]["step"] for p in params}
            assert len(steps) == 1, steps  # both parameters from the same step
    finally:
        stop.set()
        worker.join()


def expected_state(steps: int):
    ref = ReferenceAdamax(initial(), lr=0.01, weight_decay=0.01)
    for step in range(steps):
        ref.step(gradients(step))
    return ref


def test_checkpoint_survives_sigkill_at_random_moments(tmp_path):
    path = tmp_path / "live.safetensors"
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
        before = snapshot(opt, params)
        load_checkpoint(opt, path)  # must never fail
        assert before["state"] == {}
        steps = opt.state[params[0]]["step"]
        assert steps >= 1 and opt.state[params[1]]["step"] == steps
        ref = expected_state(steps)
        for p, (_t, m, u) in zip(params, ref.state):
            assert opt.state[p]["exp_avg"].tobytes() == m.tobytes()
            assert opt.state[p]["exp_inf"].tobytes() == u.tobytes()
        seen_steps.append(steps)
    assert kills >= 3, seen_steps
    leftovers = {f.name for f in tmp_path.iterdir()} - {"live.safetensors"}
    assert all(n.startswith(".live.safetensors.") and n.endswith(".tmp") for n in leftovers)


def test_unchanged_helper_sees_a_change(trained):
    """assert_unchanged, which the hostile-file tests rely on, does notice changes."""
    opt, params = trained
    before = snapshot(opt, params)
    opt.state[params[0]]["exp_avg"][0, 0] += 1
    with pytest.raises(AssertionError):
        assert_unchanged(before, opt, params)


class BlockQuantized(Optimizer):
    """A stand-in for an optimizer with 8-bit state: uint8 codes shaped like the parameter,
    one float32 scale per block of 4 elements, a float16 running value. Its step is a toy;
    what matters is the state's keys, dtypes and shapes, which are not Adamax's."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    def state_keys(self):
        return ("codes", "scale", "running")

    @staticmethod
    def blocks(param):
        return (param.data.size + 3) // 4

    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(
                        step=0,
                        codes=np.zeros(p.shape, np.uint8),
                        scale=np.ones(self.blocks(p), np.float32),
                        running=np.zeros(p.shape, np.float16),
                    )
                state["step"] += 1
                state["codes"] += np.uint8(state["step"])
                state["scale"] *= np.float32(1.5)
                state["running"] += np.float16(0.25)

    def _check_state(self, param, state, where):
        expected = {
            "codes": (param.shape, np.uint8),
            "scale": ((self.blocks(param),), np.float32),
            "running": (param.shape, np.float16),
        }
        if set(state) != {"step", *expected}:
            raise ValueError(f"{where}: keys {sorted(state)}")
        kept = {"step": int(state["step"])}
        for key, (shape, dtype) in expected.items():
            value = state[key]
            if value.shape != shape or value.dtype != dtype:
                raise ValueError(f"{where}: {key} is {value.dtype}{value.shape}")
            kept[key] = np.array(value, copy=True)
        return kept


def test_state_with_other_keys_dtypes_and_shapes_round_trips(tmp_path):
    params = [Parameter(np.zeros((3, 5), np.float32)), Parameter(np.zeros(2, np.float64))]
    opt = BlockQuantized(params)
    opt.step()
    opt.step()
    path = tmp_path / "q.safetensors"
    save_checkpoint(opt, path)
    metadata, arrays = read(path)
    assert arrays["state/0/codes"].dtype == np.uint8
    assert arrays["state/0/scale"].shape == (4,)
    assert arrays["state/1/running"].dtype == np.float16
    fresh = BlockQuantized(params)
    load_checkpoint(fresh, path)
    for p in params:
        for key in ("codes", "scale", "running"):
            assert fresh.state[p][key].dtype == opt.state[p][key].dtype
            assert fresh.state[p][key].tobytes() == opt.state[p][key].tobytes()
        assert fresh.state[p]["step"] == 2
    # A scale array larger than the optimizer takes is refused before it is read.
    rewrite(path, lambda header, docs: header["state/0/scale"].update(shape=[2, 2]))
    before = snapshot(fresh, params)
    with pytest.raises(ValueError, match="scale"):
        load_checkpoint(fresh, path)
    assert_unchanged(before, fresh, params)


class RunsCode:
    """Unpickling this creates a file: proof that code from a checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_loading_never_runs_code_from_the_file(tmp_path, trained):
    opt, params = trained
    marker = tmp_path / "code-ran"
    payload = np.array([RunsCode(str(marker))], dtype=object)
    path = tmp_path / "evil.npz"
    with open(path, "wb") as file:
        np.savez(file, metadata=payload, **{"state/0/exp_avg": payload})
    before = snapshot(opt, params)
    with pytest.raises(ValueError):
        load_checkpoint(opt, path)
    assert_unchanged(before, opt, params)
    assert not marker.exists()
    np.load(path, allow_pickle=True)["metadata"]  # what unpickling it does
    assert marker.exists()


# -- what saves must load --------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [33, 64])
def test_parameters_of_up_to_64_dimensions_round_trip(tmp_path, rng, ndim):
    # numpy 2 allows 64 dimensions; the reader allowed 32, so such a checkpoint saved and
    # then never loaded.
    shape = (1,) * (ndim - 2) + (3, 2)
    p = Parameter(rng.standard_normal(shape).astype(np.float32))
    opt = Adamax([p])
    p.grad = rng.standard_normal(shape).astype(np.float32)
    opt.step()
    path = tmp_path / "deep.safetensors"
    save_checkpoint(opt, path)
    saved = opt.state_dict()["state"][0]
    again = Adamax([Parameter(np.zeros(shape, np.float32))])
    load_checkpoint(again, path)
    loaded = again.state_dict()["state"][0]
    assert loaded["step"] == 1
    for key in ("exp_avg", "exp_inf"):
        np.testing.assert_array_equal(loaded[key], saved[key])


def test_a_file_name_as_long_as_the_file_system_allows_saves(tmp_path, trained):
    # The temporary file beside it has a longer name; it must not be what fails.
    opt = trained[0]
    path = tmp_path / ("c" * 240 + ".safetensors")
    save_checkpoint(opt, path)
    load_checkpoint(opt, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_integer_parameter_values_in_a_file_are_refused(tmp_path):
    # uint8 converts safely to float32 by numpy's rules, but parameter values in a
    # checkpoint are floats: bytes there are another array's (8-bit codes, say).
    from adamax_rs import load_training_checkpoint, save_training_checkpoint

    p = Parameter(np.full(4, 0.5, np.float32))
    opt = Adamax([p])
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path)
    metadata, _ = read(path)
    metadata = {k: v for k, v in metadata.items() if k != _safetensors.CHECKSUMS}
    with open(path, "wb") as file:  # the package's own writer: a well-formed, sealed file
        _safetensors.write(file, {"param/0": np.array([200, 201, 202, 203], np.uint8)}, metadata)
    before = snapshot(opt, [p])
    with pytest.raises(ValueError, match="parameter 0 has dtype uint8"):
        load_training_checkpoint(opt, path)
    assert_unchanged(before, opt, [p])


def test_parameter_values_go_into_the_arrays_that_were_checked(tmp_path):
    # Another thread may bind another array to ``.data`` while a load runs. The values must
    # go where the checks looked (here, a read-only array bound after the checks would have
    # failed the write after the optimizer had already loaded, leaving half a load).
    from adamax_rs import load_training_checkpoint, save_training_checkpoint

    class Rebound(Parameter):
        late = None

        @property
        def data(self):
            return self.late if self.late is not None else super().data

    p = Rebound(np.arange(4, dtype=np.float32))
    opt = Adamax([p])
    p.grad = np.ones(4, np.float32)
    opt.step()
    path = tmp_path / "run.safetensors"
    save_training_checkpoint(opt, path)
    saved = p.data.copy()
    checked = Parameter.data.__get__(p)
    checked[...] = 0
    late = np.zeros(4, np.float32)
    late.flags.writeable = False
    load_state_dict = opt.load_state_dict

    def rebinding_load(state_dict):
        Rebound.late = late  # bound between the checks and the writes
        load_state_dict(state_dict)

    opt.load_state_dict = rebinding_load
    try:
        load_training_checkpoint(opt, path)
    finally:
        Rebound.late = None
    np.testing.assert_array_equal(checked, saved)
    assert opt.state_dict()["state"][0]["step"] == 1
