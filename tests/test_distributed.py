"""adamax_rs.distributed under real MPI: ``mpiexec -n 2``, ``-n 3`` and ``-n 4`` on loopback.

Each test launches tests/distributed_worker.py with the venv's own ``mpiexec`` (from the
mpich wheel) and a timeout, so a hang fails the test instead of stalling CI; the whole
process group is killed on timeout. The ranks record what they computed; the comparisons
happen here, against a single-process ``adamax_rs.Adamax`` fed the mean gradient (and, for
the float32 problem, also against the plain numpy Adamax of tests/reference.py).

In CI (``CI`` set) a missing mpi4py or mpiexec fails this module instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import adamax_rs
import distributed_cases as cases
from reference import ReferenceAdamax

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
TIMEOUT = 120
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _find_mpiexec() -> tuple[str | None, str]:
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py is not installed (pip install 'adamax_rs[mpi]')"
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        return None, "no mpiexec next to the interpreter or on PATH (pip install mpich)"
    return found, ""


MPIEXEC, MISSING = _find_mpiexec()
if MPIEXEC is None:
    if IN_CI:
        pytest.fail(f"the MPI tests must run in CI, but {MISSING}", pytrace=False)
    pytest.skip(MISSING, allow_module_level=True)


def launch(ranks: int, *args: object, module: bool = False) -> tuple[int, str, str]:
    """Run the worker (or ``python -m adamax_rs`` with ``module``) on ``ranks`` ranks; return
    the exit code and output. A run that outlives TIMEOUT is killed, with every rank, and
    fails the test."""
    target = ["-m", "adamax_rs"] if module else [str(WORKER)]
    command = [MPIEXEC, "-n", str(ranks), sys.executable, *target, *map(str, args)]
    env = {
        **os.environ,
        # All ranks on this machine, started by fork: no ssh, no host names to resolve.
        "HYDRA_LAUNCHER": "fork",
        # The same for Open MPI's mpiexec (MPICH ignores these): more ranks than cores, root.
        "OMPI_MCA_rmaps_base_oversubscribe": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    }
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, so a hang can be killed whole
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(
            f"{' '.join(command)} did not finish in {TIMEOUT} s (a hang):\n{out[-3000:]}\n"
            f"{err[-3000:]}"
        )
    return process.returncode, out, err


def mpirun(ranks: int, *args: object, module: bool = False) -> str:
    """:func:`launch`, which must succeed; returns its standard output."""
    code, out, err = launch(ranks, *args, module=module)
    assert code == 0, f"mpiexec -n {ranks} {args} failed:\n{out[-3000:]}\n{err[-6000:]}"
    return out


def read(outdir: Path, name: str, rank: int) -> tuple[dict, dict]:
    meta = json.loads((outdir / f"{name}-rank{rank}.json").read_text())
    with np.load(outdir / f"{name}-rank{rank}.npz") as arrays:
        loaded = {key: arrays[key] for key in arrays.files}
    for key, dtype in meta["dtypes"].items():
        loaded[key] = loaded[key].view(cases.dtype_of(dtype))
    return loaded, meta


_suites: dict[int, Path] = {}


def run_suite(ranks: int, tmp_path_factory) -> tuple[int, Path]:
    """The worker's suite (exact steps, memory, refused inputs, allreduce, state dict round
    trips, added groups), launched once per number of ranks."""
    if ranks not in _suites:
        outdir = tmp_path_factory.mktemp(f"suite{ranks}")
        mpirun(ranks, "suite", outdir)
        _suites[ranks] = outdir
    return ranks, _suites[ranks]


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda n: f"{n}ranks")
def suite(request, tmp_path_factory):
    return run_suite(request.param, tmp_path_factory)


@pytest.fixture(params=[2, 3, 4], ids=lambda n: f"{n}ranks")
def several(request, tmp_path_factory):
    """As ``suite``, for what needs a second rank (one rank cannot disagree with another)."""
    return run_suite(request.param, tmp_path_factory)


# -- the single-process reference ---------------------------------------------------------------


def reference_run(problem: str, ranks: int, steps=range(cases.STEPS)):
    """``adamax_rs.Adamax`` in this process, stepped with the mean of the ranks' gradients."""
    params = [adamax_rs.Parameter(v.copy(order="K")) for v in cases.initial_values(problem)]
    opt = adamax_rs.Adamax(cases.groups(problem, params), **cases.options(problem))
    for step in steps:
        for g, group in enumerate(opt.param_groups):
            group["lr"] = cases.learning_rate(problem, step, g)
        for number, p in enumerate(params):
            p.grad = cases.mean_gradient(problem, ranks, step, number)
        opt.step()
    return params, opt


def bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).view(np.uint8).tobytes()


def assert_state_dict_equal(arrays: dict, meta: dict, expected: dict, prefix: str = "sd") -> None:
    """A state dict the worker flattened equals ``expected`` (an ``Adamax.state_dict()``), in
    structure, hyperparameters, step counts, dtypes, memory order and every bit."""
    assert meta["param_groups"] == json.loads(json.dumps(expected["param_groups"], default=repr))
    assert sorted(map(int, meta["state"])) == sorted(expected["state"])
    for index, entry in expected["state"].items():
        got = meta["state"][str(index)]
        assert list(got) == list(entry), index
        for key, value in entry.items():
            if not isinstance(value, np.ndarray):
                assert got[key] == value, (index, key)
                continue
            array = arrays[f"{prefix}/{index}/{key}"]
            assert got[key]["dtype"] == str(value.dtype)
            assert (got[key]["c"], got[key]["f"]) == (
                value.flags.c_contiguous,
                value.flags.f_contiguous,
            ), (index, key)
            assert array.shape == value.shape
            assert bits(array) == bits(value), (index, key)


# -- exact results ------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", list(cases.PROBLEMS))
def test_sharded_steps_equal_one_process_bit_for_bit(suite, problem):
    ranks, outdir = suite
    params, opt = reference_run(problem, ranks)
    expected = opt.state_dict()
    orders = [order for *_, order in cases.specs(problem)]
    for p, order in zip(params, orders):  # the Fortran-ordered parameters really are
        assert p.data.flags.f_contiguous if order == "F" else p.data.flags.c_contiguous
    for rank in range(ranks):
        arrays, meta = read(outdir, f"exact-{problem}", rank)
        for i, p in enumerate(params):
            got = arrays[f"param/{i}"]
            assert got.dtype == p.data.dtype
            assert bits(got) == bits(p.data), f"rank {rank}, parameter {i}"
        assert_state_dict_equal(arrays, meta, expected)
        assert meta["own_state_is_empty"]


def test_float32_problem_agrees_with_the_numpy_reference(suite):
    """Independent of adamax_rs.Adamax: the plain numpy Adamax of tests/reference.py."""
    ranks, outdir = suite
    problem = "float32"
    arrays, _ = read(outdir, f"exact-{problem}", 0)
    numbers = [n for n, (_, _, dtype, _) in enumerate(cases.specs(problem)) if dtype.kind != "c"]
    hyper = [dict(cases.PROBLEMS[problem]["groups"][g][1]) for g, *_ in cases.specs(problem)]
    initial = cases.initial_values(problem)
    for n in numbers:
        group = cases.specs(problem)[n][0]
        reference = ReferenceAdamax([initial[n]])
        for step in range(cases.STEPS):
            grad = cases.mean_gradient(problem, ranks, step, n)
            lr = cases.learning_rate(problem, step, group)
            reference.step([grad], {**hyper[n], "lr": lr})
        np.testing.assert_array_equal(arrays[f"param/{n}"], reference.params[0])


def test_state_is_split_evenly_across_ranks(suite):
    ranks, outdir = suite
    infos = [read(outdir, "memory", rank)[1] for rank in range(ranks)]
    float32, float16 = infos[0]["elements"]["float32"], infos[0]["elements"]["float16"]
    # exp_avg and exp_inf in float32; float16 parameters also keep a float32 master copy.
    whole = 2 * 4 * float32 + 3 * 4 * float16
    assert all(info["before"] == 0 for info in infos)
    assert sum(info["after"] for info in infos) == whole
    for info in infos:
        # Each rank's range of each element type is within one element of 1/N of it.
        assert abs(info["after"] - whole / ranks) <= 2 * 4 + 3 * 4
        if ranks == 1:
            assert info["buffers"] == 0  # alone, nothing is exchanged
            continue
        # The buffers kept between steps: one flat copy of the gradients (float32 for
        # float16) plus this rank's range of the summed and of the mean gradient.
        full = 4 * float32 + 4 * float16
        assert full < info["buffers"] <= full + (4 * float32 + (4 + 2) * float16) / ranks + 64


def test_allreduce_gradients_and_broadcast_parameters(suite):
    ranks, outdir = suite
    problem = "mixed"
    for rank in range(ranks):
        arrays, meta = read(outdir, "allreduce", rank)
        assert meta["same_objects"]  # averaged in place, in the same arrays
        for number in range(len(cases.specs(problem))):
            grads = [cases.gradient(problem, r, 0, number) for r in range(ranks)]
            if grads[0] is None:
                assert f"mean/{number}" not in arrays
                continue
            wide = [g.astype(np.complex128 if g.dtype.kind == "c" else np.float64) for g in grads]
            total = np.sum(wide, axis=0).astype(grads[0].dtype)
            mean = cases.mean_gradient(problem, ranks, 0, number)
            assert bits(arrays[f"sum/{number}"]) == bits(total)
            assert bits(arrays[f"mean/{number}"]) == bits(mean)
        # broadcast_parameters from the last rank, which had multiplied its values by N.
        for number, value in enumerate(cases.initial_values(problem)):
            expected = np.asarray(value * ranks).astype(value.dtype)
            assert bits(arrays[f"broadcast/{number}"]) == bits(expected)


def test_state_dicts_go_from_one_process_to_n_ranks_and_back(suite):
    """2 steps of a single-process Adamax, its state dict loaded into ShardedAdamax, 2 steps
    on N ranks, that state dict loaded into a single-process Adamax, 1 step: the same as 5
    single-process steps, bit for bit."""
    ranks, outdir = suite
    params, opt = reference_run("float32", ranks)
    expected = opt.state_dict()
    for rank in range(ranks):
        arrays, meta = read(outdir, "roundtrip", rank)
        for i, p in enumerate(params):
            assert bits(arrays[f"param/{i}"]) == bits(p.data), f"rank {rank}, parameter {i}"
        assert_state_dict_equal(arrays, meta, expected)


def test_added_groups_and_replaced_arrays_keep_the_single_process_result(suite):
    ranks, outdir = suite
    problem = "float32"
    params = [adamax_rs.Parameter(v.copy(order="K")) for v in cases.initial_values(problem)]
    groups = cases.groups(problem, params)
    opt = adamax_rs.Adamax([groups[0]], **cases.options(problem))
    first = len(groups[0]["params"])
    for step in range(2):
        opt.param_groups[0]["lr"] = cases.learning_rate(problem, step, 0)
        for number in range(first):
            params[number].grad = cases.mean_gradient(problem, ranks, step, number)
        opt.step()
    for group in groups[1:]:
        opt.add_param_group(group)
    for step in range(2, cases.STEPS):
        for g, group in enumerate(opt.param_groups):
            group["lr"] = cases.learning_rate(problem, step, g)
        for number, p in enumerate(params):
            p.grad = cases.mean_gradient(problem, ranks, step, number)
        opt.step()
    expected = opt.state_dict()
    for rank in range(ranks):
        arrays, meta = read(outdir, "growing", rank)
        for i, p in enumerate(params):
            assert bits(arrays[f"param/{i}"]) == bits(p.data), f"rank {rank}, parameter {i}"
        assert_state_dict_equal(arrays, meta, expected)
        assert meta["bytes_before"] > 0


# -- refused inputs -----------------------------------------------------------------------------

STEP_ERRORS = {
    # case: (rank that is wrong, or None for a disagreement, error class, message)
    "wrong_shape": ("last", ValueError, r"group 0, parameter 1: the gradient has shape \[7\]"),
    "wrong_dtype": (0, TypeError, "group 1, parameter 0: the gradient has dtype float64"),
    "not_an_array": ("last", TypeError, "group 0, parameter 0: the gradient must be a numpy"),
    "bad_lr": ("last", ValueError, "group 1: Invalid learning rate"),
    "shares_memory": ("last", ValueError, "group 2, parameter 1: the parameter shares memory"),
    "replaced_data": (
        "last",
        ValueError,
        r"group 1, parameter 2: .data was replaced by an array of shape \[2\]",
    ),
    "closure": ("last", RuntimeError, "the data loader failed"),
    "closure_interrupted": ("last", KeyboardInterrupt, "pressed Ctrl-C"),
    "load_into_changed_groups": ("last", ValueError, "group 0: its parameter list changed"),
    "load_without_memory_for_a_backup": ("last", MemoryError, "no memory for the backup"),
    "state_dict_out_of_memory": ("last", MemoryError, "no memory for the state"),
    "allreduce_average_not_bool": ("last", TypeError, "average must be a bool, got str"),
    "bad_state_dict": ("last", ValueError, "state of parameter 0: 'exp_avg' has shape"),
    "missing_checkpoint": ("last", FileNotFoundError, "missing.npz"),
    "strided_parameter": ("last", ValueError, "neither C- nor F-contiguous"),
    "bad_option": (0, ValueError, "Invalid learning rate"),
    "allreduce_dtype": ("last", TypeError, "parameter 1: the gradient has dtype float64"),
    "other_lr": (None, ValueError, r"group 0: lr differs between ranks \(rank 0: 0.5, rank 1"),
    "missing_grad": (None, ValueError, "group 1, parameter 1: it has a gradient on ranks"),
    "different_state_dicts": (None, ValueError, "the ranks loaded different state dicts"),
    "different_parameters": (None, ValueError, "group 0, parameter 0 differs between ranks"),
    "allreduce_missing": (None, ValueError, "parameter 1 has a gradient on ranks"),
    "different_operations": (
        None,
        ValueError,
        r"different collective operations \(rank 0: state_dict, rank 1: step",
    ),
    "save_roots_differ": (None, ValueError, r"root differs between ranks \(rank 0: 0, rank 1: 1"),
    "different_state_values": (None, ValueError, "the ranks loaded different state dicts"),
    "different_shapes_past_8_axes": (
        None,
        ValueError,
        "group 0, parameter 0 differs between ranks",
    ),
    "different_state_dtypes": (None, ValueError, "state_dtype differs between ranks"),
    "save_root_not_a_rank": (None, ValueError, r"root must be a rank in \[0, \d\), got \d"),
    "allreduce_average_differs": (
        None,
        ValueError,
        r"average differs between ranks \(rank 0: True, rank 1: False",
    ),
    "allreduce_shapes_past_8_axes": (
        None,
        ValueError,
        "parameter 0 has a different shape or dtype",
    ),
    "broadcast_roots_differ": (
        None,
        ValueError,
        r"root differs between ranks \(rank 0: 0, rank 1: 1",
    ),
}


def test_bad_input_on_one_rank_raises_on_every_rank_and_changes_nothing(several):
    ranks, outdir = several
    records = [
        {e["case"]: e for e in read(outdir, "refused", rank)[1]["record"]} for rank in range(ranks)
    ]
    assert sorted(records[0]) == sorted(STEP_ERRORS)
    for case, (culprit, error, message) in STEP_ERRORS.items():
        if culprit == "last":
            culprit = ranks - 1
        for rank in range(ranks):
            entry = records[rank][case]
            assert entry["raised"] is not None, f"{case}: rank {rank} raised nothing"
            assert entry.get("unchanged", True), f"{case}: rank {rank} changed something"
            if culprit is None or rank == culprit:
                # The culprit (or, for a disagreement, every rank): the usual error.
                assert entry["raised"] == error.__name__, (case, rank, entry)
                assert not entry["other_rank"]
                assert re.search(message, entry["message"]), (case, rank, entry["message"])
            else:
                # The others: an OtherRankError of the same kind, naming the culprit.
                assert entry["other_rank"], (case, rank, entry)
                assert entry["ranks"] == [culprit]
                assert f"rank {culprit} of {ranks} failed" in entry["message"]
                assert re.search(message, entry["message"]), (case, rank, entry["message"])
                assert entry["type_error"] == issubclass(error, TypeError)
                assert entry["value_error"] == issubclass(error, ValueError)


def test_good_steps_after_refused_ones_equal_one_process(several):
    """Every refused call above left no trace: the training continues as if they never
    happened, and the gradients a refused allreduce saw are untouched."""
    ranks, outdir = several
    params, opt = reference_run("float32", ranks)
    expected = opt.state_dict()
    for rank in range(ranks):
        arrays, meta = read(outdir, "refused", rank)
        for i, p in enumerate(params):
            assert bits(arrays[f"param/{i}"]) == bits(p.data), f"rank {rank}, parameter {i}"
        assert_state_dict_equal(arrays, meta, expected)
        for number in (0, 2):  # untouched by the refused allreduce_gradients calls
            grad = cases.gradient("float32", rank, 2, number)
            assert bits(arrays[f"grad_after/{number}"]) == bits(grad)


def test_a_rank_failing_after_the_exchange_aborts_the_job_instead_of_hanging(tmp_path):
    code, _, err = launch(3, "abort", tmp_path)
    assert code != 0
    assert "rank 2 of 3 failed while the ranks were exchanging data" in err
    assert "MemoryError: no room for the state" in err
    assert not list(tmp_path.glob("went-on-*"))


# -- checkpoints across rank counts -------------------------------------------------------------


def test_training_resumes_across_rank_counts_and_one_process(tmp_path):
    """One process (3 steps) -> 4 ranks -> 3 ranks -> 2 ranks -> one process: each leg loads
    the previous leg's checkpoint and parameters. Every rank gets the same gradient, so the
    mean is the same for every rank count and the result must equal 8 uninterrupted steps."""
    problem = "mixed"

    def single(params, opt, steps):
        for step in steps:
            for g, group in enumerate(opt.param_groups):
                group["lr"] = cases.learning_rate(problem, step, g)
            for number, p in enumerate(params):
                p.grad = cases.gradient(problem, 0, step, number)
            opt.step()

    def fresh():
        params = [adamax_rs.Parameter(v.copy(order="K")) for v in cases.initial_values(problem)]
        return params, adamax_rs.Adamax(cases.groups(problem, params), **cases.options(problem))

    def save_params(params, name):
        np.savez(
            tmp_path / f"{name}-params.npz",
            **{f"param/{i}": p.data.view(f"u{p.data.itemsize}") for i, p in enumerate(params)},
        )

    params, opt = fresh()
    single(params, opt, range(0, 2))
    adamax_rs.save_checkpoint(opt, tmp_path / "leg0.npz")
    save_params(params, "leg0")

    mpirun(4, "resume", tmp_path, "leg0", "leg1", 2, 4)
    mpirun(3, "resume", tmp_path, "leg1", "leg2", 4, 5)
    mpirun(2, "resume", tmp_path, "leg2", "leg3", 5, 7)

    resumed, resumed_opt = fresh()
    with np.load(tmp_path / "leg3-params.npz") as saved:
        for i, p in enumerate(resumed):
            p.data[...] = saved[f"param/{i}"].view(p.data.dtype)
    adamax_rs.load_checkpoint(resumed_opt, tmp_path / "leg3.npz")  # a plain Adamax checkpoint
    single(resumed, resumed_opt, range(7, 8))

    straight, straight_opt = fresh()
    single(straight, straight_opt, range(0, 8))
    for a, b in zip(resumed, straight):
        assert bits(a.data) == bits(b.data)
    got, want = resumed_opt.state_dict(), straight_opt.state_dict()
    assert got["state"].keys() == want["state"].keys()
    for index in want["state"]:
        for key, value in want["state"][index].items():
            other = got["state"][index][key]
            assert bits(other) == bits(value) if isinstance(value, np.ndarray) else other == value
    # 1/N of the state on each rank of the last leg.
    sizes = [read(tmp_path, "leg3", r)[1]["local_state_bytes"] for r in range(2)]
    whole = sum(
        v.nbytes for e in want["state"].values() for v in e.values() if isinstance(v, np.ndarray)
    )
    assert sum(sizes) == whole and max(sizes) - min(sizes) <= 3 * 4 * 3


# -- the demo ---------------------------------------------------------------------------------


def test_demo_trains_data_parallel_with_the_single_process_losses():
    out = mpirun(2, "demo", "--distributed", "--epochs", "6", "--samples", "400", module=True)
    assert out.count("Training a") == 1, out  # only rank 0 prints
    difference = re.search(r"largest loss difference from one process: ([0-9.e+-]+)", out)
    assert difference, out
    assert float(difference.group(1)) < 1e-6, out
    assert re.search(r"optimizer state per rank: [0-9.]+ KiB, [0-9.]+ KiB", out), out
    losses = [float(x) for x in re.findall(r"epoch +\d+ +loss ([0-9.]+)", out)]
    assert len(losses) == 2 and losses[-1] < losses[0], out


def test_demo_refuses_a_global_batch_the_ranks_cannot_share():
    code, out, _ = launch(3, "demo", "--distributed", "--batch-size", "64", module=True)
    assert code == 2
    assert "--batch-size 64 must be a multiple of the 3 ranks" in out
