"""Runs on every rank under ``mpiexec``; the tests in test_distributed.py launch it and check
what each rank wrote.

    mpiexec -n N python tests/distributed_worker.py SCENARIO OUTDIR [ARGS...]

Each rank writes ``OUTDIR/<name>-rank<r>.npz`` (arrays) and ``.json`` (everything else). The
worker only runs the code and records results: every comparison with a reference happens in
the test process.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
from mpi4py import MPI

import adamax_rs
import distributed_cases as cases
from adamax_rs.distributed import (
    OtherRankError,
    ShardedAdamax,
    allreduce_gradients,
    broadcast_parameters,
    load_checkpoint,
    save_checkpoint,
)

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def write(outdir: Path, name: str, arrays: dict, info: dict) -> None:
    # npz cannot name bfloat16: store its bits, and every array's dtype in the JSON.
    info = {**info, "dtypes": {key: value.dtype.name for key, value in arrays.items()}}
    arrays = {
        key: value.view(np.uint16) if value.dtype == cases.BFLOAT16 else value
        for key, value in arrays.items()
    }
    np.savez(outdir / f"{name}-rank{RANK}.npz", **arrays)
    (outdir / f"{name}-rank{RANK}.json").write_text(json.dumps(info, default=repr))


def flatten_state_dict(sd: dict, arrays: dict, prefix: str = "sd") -> dict:
    """Arrays into ``arrays``; the rest (steps, groups, layouts) returned as JSON values."""
    meta = {"param_groups": sd["param_groups"], "state": {}}
    for index, entry in sd["state"].items():
        meta["state"][str(index)] = {}
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                arrays[f"{prefix}/{index}/{key}"] = value
                meta["state"][str(index)][key] = {
                    "dtype": str(value.dtype),
                    "c": bool(value.flags.c_contiguous),
                    "f": bool(value.flags.f_contiguous),
                }
            else:
                meta["state"][str(index)][key] = value
    return meta


def train(problem: str, params: list, opt: ShardedAdamax, steps: range, same=False) -> None:
    """Steps ``steps`` with the scheduled rates; with ``same``, every rank uses rank 0's
    gradients (so the mean is the same whatever the number of ranks)."""
    for step in steps:
        for g, group in enumerate(opt.param_groups):
            group["lr"] = cases.learning_rate(problem, step, g)
        for number, p in enumerate(params):
            p.grad = cases.gradient(problem, 0 if same else RANK, step, number)
        opt.step()


def new_params(problem: str) -> list:
    return [adamax_rs.Parameter(v.copy(order="K")) for v in cases.initial_values(problem)]


# -- scenarios ----------------------------------------------------------------------------------


def exact(outdir: Path) -> None:
    """Every problem, all steps; the final parameters and the full state dict."""
    for problem in cases.PROBLEMS:
        params = new_params(problem)
        opt = ShardedAdamax(cases.groups(problem, params), **cases.options(problem))
        train(problem, params, opt, range(cases.STEPS))
        arrays = {f"param/{i}": p.data for i, p in enumerate(params)}
        meta = flatten_state_dict(opt.state_dict(), arrays)
        meta["local_state_bytes"] = opt.local_state_bytes()
        meta["local_buffer_bytes"] = opt.local_buffer_bytes()
        meta["own_state_is_empty"] = len(opt.state) == 0
        write(outdir, f"exact-{problem}", arrays, meta)


def memory(outdir: Path) -> None:
    """State bytes per rank for a model of about a million elements, two element types."""
    rng = np.random.default_rng(3)
    shapes = [(1000, 700), (300,), (299_703,)]
    params = [adamax_rs.Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    halves = [adamax_rs.Parameter(rng.standard_normal(10_001).astype(np.float16))]
    opt = ShardedAdamax([{"params": params}, {"params": halves}], master_weights=True)
    before = opt.local_state_bytes()
    for p in params + halves:
        p.grad = np.ones_like(p.data)
    opt.step()
    write(
        outdir,
        "memory",
        {},
        {
            "before": before,
            "after": opt.local_state_bytes(),
            "buffers": opt.local_buffer_bytes(),
            "elements": {"float32": sum(int(np.prod(s)) for s in shapes), "float16": 10_001},
        },
    )


def snapshot(opt, params) -> bytes:
    """All parameters and the full state (collective), as bytes."""
    sd = opt.state_dict()
    parts = [p.data.tobytes() for p in params]
    for index in sorted(sd["state"]):
        for value in sd["state"][index].values():
            parts.append(value.tobytes() if isinstance(value, np.ndarray) else repr(value).encode())
    parts.append(repr(sd["param_groups"]).encode())
    return b"".join(parts)


def attempt(record: list, case: str, call, opt=None, params=None, undo=None) -> None:
    """Run ``call`` (expected to fail on every rank) and record what this rank raised, and
    whether the parameters and state are unchanged (after ``undo`` reverted the test's own
    change to a hyperparameter)."""
    before = snapshot(opt, params) if opt is not None else None
    entry = {"case": case, "raised": None}
    try:
        call()
    except BaseException as error:  # KeyboardInterrupt included: the cases raise it on purpose
        entry.update(
            raised=type(error).__name__,
            message=str(error),
            type_error=isinstance(error, TypeError),
            value_error=isinstance(error, ValueError),
            other_rank=isinstance(error, OtherRankError),
            ranks=list(getattr(error, "ranks", ())),
        )
    if undo is not None:
        undo()
    if opt is not None:
        entry["unchanged"] = snapshot(opt, params) == before
    record.append(entry)


def refused(outdir: Path) -> None:
    """Bad input on one rank (or different input on different ranks), each followed by
    checking that nothing changed; then good steps, whose result the test checks."""
    problem = "float32"
    culprit = SIZE - 1
    params = new_params(problem)
    opt = ShardedAdamax(cases.groups(problem, params), **cases.options(problem))
    train(problem, params, opt, range(1))
    opt.save_checkpoint(outdir / "early.npz")
    train(problem, params, opt, range(1, 2))
    record: list = []

    def set_grads(step: int = 2) -> None:
        for number, p in enumerate(params):
            p.grad = cases.gradient(problem, RANK, step, number)
            if p.grad is None:
                p.grad = np.zeros_like(p.data)

    def break_on(rank: int, change) -> None:
        set_grads()
        if RANK == rank:
            change()

    def step_with(change, rank=culprit):
        def run():
            break_on(rank, change)
            opt.step()

        return run

    def wrong_shape():
        params[1].grad = np.zeros(7, np.float32)

    def wrong_dtype():
        params[3].grad = np.zeros((3, 4, 5), np.float64)

    def not_an_array():
        params[0].grad = [[0.0] * 7] * 13

    def bad_lr():
        opt.param_groups[1]["lr"] = -1.0

    def other_lr():
        opt.param_groups[0]["lr"] = 0.5

    def missing_grad():
        params[4].grad = None

    def shares_memory():
        params[7].grad = params[7].data[::-1]

    attempt(record, "wrong_shape", step_with(wrong_shape), opt, params)
    attempt(record, "wrong_dtype", step_with(wrong_dtype, rank=0), opt, params)
    attempt(record, "not_an_array", step_with(not_an_array), opt, params)

    def restore_lr():
        for g, group in enumerate(opt.param_groups):
            group["lr"] = cases.learning_rate(problem, 1, g)

    attempt(record, "bad_lr", step_with(bad_lr), opt, params, restore_lr)
    attempt(record, "other_lr", step_with(other_lr, rank=0), opt, params, restore_lr)
    attempt(record, "missing_grad", step_with(missing_grad, rank=0), opt, params)
    attempt(record, "shares_memory", step_with(shares_memory), opt, params)
    original = params[5].data

    def replaced_data():
        params[5].data = np.zeros(2, np.float32)

    def put_back():
        params[5].data = original

    attempt(record, "replaced_data", step_with(replaced_data), opt, params, put_back)

    def closure():
        if RANK == culprit:
            raise RuntimeError("the data loader failed")
        return 1.0

    attempt(record, "closure", lambda: opt.step(closure), opt, params)

    def interrupted_closure():
        if RANK == culprit:
            raise KeyboardInterrupt("pressed Ctrl-C")
        return 1.0

    attempt(record, "closure_interrupted", lambda: opt.step(interrupted_closure), opt, params)

    def different_operations():
        # Two threads calling collectives in different orders look like this: the ranks
        # must not pair one operation's messages with another's.
        if RANK == 0:
            opt.state_dict()
        else:
            set_grads()
            opt.step()

    attempt(record, "different_operations", different_operations, opt, params)

    def out_of_memory_gathering():
        if RANK == culprit:

            def no_memory(root):
                raise MemoryError("no memory for the state")

            opt._gather_plan = no_memory
        try:
            opt.state_dict()
        finally:
            opt.__dict__.pop("_gather_plan", None)

    attempt(record, "state_dict_out_of_memory", out_of_memory_gathering, opt, params)
    attempt(
        record,
        "save_roots_differ",
        lambda: opt.save_checkpoint(outdir / "roots.npz", root=RANK),
        opt,
        params,
    )

    good = opt.state_dict()

    def corrupted():
        sd = opt.state_dict()
        if RANK == culprit:
            sd["state"][0]["exp_avg"] = np.zeros(3, np.float32)
        opt.load_state_dict(sd)

    attempt(record, "bad_state_dict", corrupted, opt, params)

    def stepped_elsewhere():
        sd = opt.state_dict()
        if RANK == 0:
            sd["state"][0]["step"] += 1
        opt.load_state_dict(sd)

    attempt(record, "different_state_dicts", stepped_elsewhere, opt, params)

    def other_values_elsewhere():
        # Same step counts, other numbers: a stale copy of a file on one rank's disk.
        sd = opt.state_dict()
        if RANK == 0:
            sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"] * 2
        opt.load_state_dict(sd)

    attempt(record, "different_state_values", other_values_elsewhere, opt, params)

    def load_into_changed_groups():
        # The culprit's groups no longer match the optimizer's: found while building the
        # scratch optimizer the state is checked in, which ran before the checks did.
        group = opt.param_groups[0]["params"]
        if RANK == culprit:
            group.append(group[0])
        try:
            opt.load_state_dict(good)
        finally:
            if RANK == culprit:
                group.pop()

    attempt(record, "load_into_changed_groups", load_into_changed_groups, opt, params)
    attempt(
        record,
        "missing_checkpoint",
        lambda: opt.load_checkpoint(outdir / ("missing.npz" if RANK == culprit else "early.npz")),
        opt,
        params,
    )
    opt.load_state_dict(good)

    # Construction: a non-contiguous parameter on one rank, different shapes on different ranks.
    def strided():
        data = np.zeros((4, 6), np.float32)
        ShardedAdamax(
            [adamax_rs.Parameter(data[:, ::2] if RANK == culprit else data[:, :3].copy())]
        )

    def other_shapes():
        ShardedAdamax([adamax_rs.Parameter(np.zeros(3 + (RANK == 0), np.float32))])

    def bad_option():
        ShardedAdamax([adamax_rs.Parameter(np.zeros(3, np.float32))], lr=-1 if RANK == 0 else 1)

    deep = [(1,) * 8 + (2, 3), (1,) * 8 + (3, 2)]

    def other_shapes_past_8_axes():
        ShardedAdamax([adamax_rs.Parameter(np.zeros(deep[RANK == 0], np.float32))])

    def other_state_dtypes():
        ShardedAdamax(
            [adamax_rs.Parameter(np.zeros(3, np.float32))],
            state_dtype="bfloat16" if RANK == 0 else "float32",
        )

    attempt(record, "strided_parameter", strided)
    attempt(record, "different_parameters", other_shapes)
    attempt(record, "different_shapes_past_8_axes", other_shapes_past_8_axes)
    attempt(record, "different_state_dtypes", other_state_dtypes)
    attempt(record, "bad_option", bad_option)

    # Checkpoints of an optimizer that is not sharded: a root that is not a rank is refused
    # everywhere (no rank wrote, and each returned as if the file were complete).
    plain = adamax_rs.Adamax([adamax_rs.Parameter(np.zeros(3, np.float32))])
    attempt(record, "save_root_not_a_rank", lambda: save_checkpoint(plain, outdir / "x", root=SIZE))
    save_checkpoint(plain, outdir / "plain.safetensors")

    def no_memory_for_the_backup():
        # Loading keeps a copy of the state, to undo the load if another rank fails.
        if RANK == culprit:

            def no_memory():
                raise MemoryError("no memory for the backup")

            plain.state_dict = no_memory
        try:
            load_checkpoint(plain, outdir / "plain.safetensors")
        finally:
            plain.__dict__.pop("state_dict", None)

    attempt(record, "load_without_memory_for_a_backup", no_memory_for_the_backup)

    # allreduce_gradients: a missing gradient on one rank, a wrong dtype on one rank.
    def allreduce_missing():
        set_grads()
        if RANK == 0:
            params[1].grad = None
        allreduce_gradients(params)

    def allreduce_dtype():
        set_grads()
        if RANK == culprit:
            params[1].grad = np.zeros(5, np.float64)
        allreduce_gradients(params)

    attempt(record, "allreduce_missing", allreduce_missing)
    attempt(record, "allreduce_dtype", allreduce_dtype)

    def allreduce_average_differs():
        set_grads()
        allreduce_gradients(params, average=RANK == 0)

    def allreduce_average_not_bool():
        set_grads()
        allreduce_gradients(params, average="no" if RANK == culprit else True)

    def allreduce_shapes_past_8_axes():
        deep_param = adamax_rs.Parameter(np.zeros(deep[RANK == 0], np.float32))
        deep_param.grad = np.zeros_like(deep_param.data)
        allreduce_gradients([deep_param])

    attempt(record, "allreduce_average_differs", allreduce_average_differs)
    attempt(record, "allreduce_average_not_bool", allreduce_average_not_bool)
    attempt(record, "allreduce_shapes_past_8_axes", allreduce_shapes_past_8_axes)
    attempt(record, "broadcast_roots_differ", lambda: broadcast_parameters(params, root=RANK))
    grads_after = [None if p.grad is None else p.grad.copy() for p in params]

    # Good steps after all that, for the test to compare with one process.
    train(problem, params, opt, range(2, cases.STEPS))
    arrays = {f"param/{i}": p.data for i, p in enumerate(params)}
    for i, g in enumerate(grads_after):
        if g is not None:
            arrays[f"grad_after/{i}"] = g
    meta = flatten_state_dict(opt.state_dict(), arrays)
    meta["record"] = record
    write(outdir, "refused", arrays, meta)


def allreduce(outdir: Path) -> None:
    """allreduce_gradients (mean and sum) and broadcast_parameters on the mixed problem."""
    problem = "mixed"
    results = {}
    for average in (True, False):
        params = new_params(problem)
        for number, p in enumerate(params):
            p.grad = cases.gradient(problem, RANK, 0, number)
        ids = [id(p.grad) for p in params]
        allreduce_gradients(params, average=average)
        for i, p in enumerate(params):
            if p.grad is not None:
                results[f"{'mean' if average else 'sum'}/{i}"] = p.grad
        same_objects = [id(p.grad) for p in params] == ids
    params = new_params(problem)
    for p in params:
        p.data[...] = p.data * (RANK + 1)  # different on every rank
    broadcast_parameters(params, root=SIZE - 1)
    for i, p in enumerate(params):
        results[f"broadcast/{i}"] = p.data
    write(outdir, "allreduce", results, {"same_objects": same_objects})


def resume(outdir: Path, source: str, target: str, first: str, last: str) -> None:
    """Load the checkpoint and parameters saved as ``source`` (if not "none"), train steps
    ``first``..``last - 1`` of the mixed problem, save as ``target``."""
    problem = "mixed"
    params = new_params(problem)
    opt = ShardedAdamax(cases.groups(problem, params), **cases.options(problem))
    if source != "none":
        with np.load(outdir / f"{source}-params.npz") as saved:
            for i, p in enumerate(params):
                p.data[...] = saved[f"param/{i}"].view(p.data.dtype)
        opt.load_checkpoint(outdir / f"{source}.npz")
    train(problem, params, opt, range(int(first), int(last)), same=True)
    opt.save_checkpoint(outdir / f"{target}.npz")
    if RANK == 0:
        bits = {
            f"param/{i}": p.data.view(f"u{p.data.dtype.itemsize}") for i, p in enumerate(params)
        }
        np.savez(outdir / f"{target}-params.npz", **bits)
    write(outdir, target, {}, {"local_state_bytes": opt.local_state_bytes()})


def roundtrip(outdir: Path) -> None:
    """State dicts from one process to N ranks and back: 2 steps alone, 2 steps sharded,
    1 step alone again."""
    problem = "float32"
    alone_params = new_params(problem)
    alone = adamax_rs.Adamax(cases.groups(problem, alone_params), **cases.options(problem))
    for step in range(2):
        for g, group in enumerate(alone.param_groups):
            group["lr"] = cases.learning_rate(problem, step, g)
        for number, p in enumerate(alone_params):
            p.grad = cases.mean_gradient(problem, SIZE, step, number)
        alone.step()
    params = [adamax_rs.Parameter(p.data.copy(order="K")) for p in alone_params]
    opt = ShardedAdamax(cases.groups(problem, params), **cases.options(problem))
    opt.load_state_dict(alone.state_dict())
    train(problem, params, opt, range(2, 4))
    back_params = [adamax_rs.Parameter(p.data.copy(order="K")) for p in params]
    back = adamax_rs.Adamax(cases.groups(problem, back_params), **cases.options(problem))
    back.load_state_dict(opt.state_dict())
    for g, group in enumerate(back.param_groups):
        group["lr"] = cases.learning_rate(problem, 4, g)
    for number, p in enumerate(back_params):
        p.grad = cases.mean_gradient(problem, SIZE, 4, number)
    back.step()
    arrays = {f"param/{i}": p.data for i, p in enumerate(back_params)}
    write(outdir, "roundtrip", arrays, flatten_state_dict(back.state_dict(), arrays))


def growing(outdir: Path) -> None:
    """Groups added with add_param_group after two steps (the state is re-sharded), and a
    parameter's .data replaced by a new array between steps."""
    problem = "float32"
    params = new_params(problem)
    groups = cases.groups(problem, params)
    opt = ShardedAdamax([groups[0]], **cases.options(problem))
    sizes = [len(g["params"]) for g in groups]
    for step in range(2):
        opt.param_groups[0]["lr"] = cases.learning_rate(problem, step, 0)
        for number in range(sizes[0]):
            params[number].grad = cases.gradient(problem, RANK, step, number)
        opt.step()
    bytes_before = opt.local_state_bytes()
    for group in groups[1:]:
        opt.add_param_group(group)
    params[0].data = params[0].data.copy(order="F")
    train(problem, params, opt, range(2, cases.STEPS))
    arrays = {f"param/{i}": p.data for i, p in enumerate(params)}
    meta = flatten_state_dict(opt.state_dict(), arrays)
    meta["bytes_before"] = bytes_before
    write(outdir, "growing", arrays, meta)


def abort(outdir: Path) -> None:
    """The last rank fails after the gradients were exchanged (as if it ran out of memory
    creating its state): the job must end, not hang and not go on with unequal ranks."""
    params = [adamax_rs.Parameter(np.zeros(10, np.float32))]
    opt = ShardedAdamax(params)
    params[0].grad = np.ones(10, np.float32)
    if RANK == SIZE - 1:

        def out_of_memory(closure=None):
            raise MemoryError("no room for the state")

        opt.shard_optimizer.step = out_of_memory
    opt.step()
    opt.step()  # never reached on any rank
    (outdir / f"went-on-{RANK}").write_text("the job went on after a failed step")


def suite(outdir: Path) -> None:
    """The scenarios that need no arguments, in one launch."""
    for scenario in (exact, memory, allreduce, roundtrip, growing):
        scenario(outdir)
    if SIZE > 1:  # one rank cannot disagree with another
        refused(outdir)


SCENARIOS = {
    "suite": suite,
    "exact": exact,
    "roundtrip": roundtrip,
    "growing": growing,
    "memory": memory,
    "refused": refused,
    "allreduce": allreduce,
    "resume": resume,
    "abort": abort,
}


def main() -> None:
    scenario, outdir, *rest = sys.argv[1:]
    try:
        SCENARIOS[scenario](Path(outdir), *rest)
    except BaseException:
        # A failure here is a test failure: say where, and take every rank down with it
        # rather than leave the others waiting.
        traceback.print_exc()
        sys.stderr.flush()
        COMM.Abort(1)


if __name__ == "__main__":
    main()
