"""Adversarial tests of the classes of issue 15 ("Hardening, round 2"), with variants.

Each class is attacked beyond its one reported case. Whatever can crash, abort or hang (races,
fork, signals, Python code run inside a step) runs in an interpreter of its own
(tests/adversarial_scenarios.py) under a timeout, so that a crash or a hang is a failed test,
not a dead test run. Refusals are checked for their type (TypeError for types, ValueError for
values), for a message that names the place and the culprit, and for leaving every parameter
and all state exactly as they were (conftest.snapshot / assert_unchanged). Numbers are checked
against tests/reference.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import adamax_rs
from adamax_rs import (
    Adamax,
    Parameter,
    ParameterState,
    _core,
    functional,
    load_checkpoint,
    save_checkpoint,
)
from conftest import assert_unchanged, snapshot
from reference import ReferenceAdamax, adamax_reference_step

HERE = Path(__file__).parent
HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
#: Words of the implementation that no message meant for users may contain.
INTERNAL_WORDS = ("held", "slot", "RawArray", "tag ", "internal", "Py<", "borrow", "unwrap")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX threads, fork, signals")


def run_scenario(name: str, seed: int = 0, timeout: float = 120) -> dict:
    """Run a scenario of adversarial_scenarios.py in a fresh interpreter; its RESULT."""
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / "adversarial_scenarios.py"), name, str(seed)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=HERE,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{name} hung (killed after {timeout} s); output: {expired.stdout!r}")
    tail = f"\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-4000:]}"
    if done.returncode < 0:
        pytest.fail(f"{name} was killed by signal {-done.returncode} (a crash){tail}")
    assert done.returncode == 0, f"{name} failed (exit status {done.returncode}){tail}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"{name} ended without its result{tail}"
    return json.loads(lines[-1][len("RESULT ") :])


def trained(rng, shapes=((4, 3), (6,), (2,)), dtype=np.float32, **kwargs):
    """An optimizer over two groups, stepped twice, so that there is state to protect."""
    params = [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], **kwargs)
    for _ in range(2):
        for p in params:
            p.grad = rng.standard_normal(p.shape).astype(dtype)
        opt.step()
    return opt, params


def assert_refused(opt, params, error, *needles, call=None):
    """``call()`` (default ``opt.step()``) raises exactly ``error`` (not a subclass, not a
    PanicException), its message contains every needle and no internal word, and nothing
    changed."""
    before = snapshot(opt, params)
    grads = [None if p.grad is None else np.array(p.grad, copy=True) for p in params]
    with pytest.raises(BaseException) as caught:
        (call or opt.step)()
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    for word in INTERNAL_WORDS:
        assert word not in message, f"internal word {word!r} in {message!r}"
    assert_unchanged(before, opt, params)
    for p, g in zip(params, grads):
        if g is not None and isinstance(p.grad, np.ndarray) and p.grad.shape == g.shape:
            assert p.grad.tobytes() == g.tobytes()
    return message


# == 1. Races between checks and use ============================================================


@pytest.mark.parametrize("seed", [1, 2])
def test_steps_survive_array_headers_changed_in_place_by_other_threads(seed):
    # dtype, shape and strides changed in place, data/grad/state rebound to views, groups edited
    # (betas, junk appended to params) from two threads while a third steps: exact results.
    outcome = run_scenario("header_race", seed)
    assert outcome["steps"] > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_steps_on_one_buffer_from_three_threads_run_one_after_another(seed):
    outcome = run_scenario("shared_memory_race", seed)
    assert min(outcome["steps"]) > 0


def test_anything_done_from_other_threads_during_steps_is_a_clean_error():
    run_scenario("chaos_race", 3)


def test_the_first_bfloat16_array_of_a_process_runs_no_python_code_inside_a_step():
    # A fresh process: the functional form reads a float32 parameter's header, then meets
    # its first bfloat16 array. Python code run there could move the float32 buffer.
    outcome = run_scenario("first_bfloat16_array_runs_no_python_code")
    assert outcome["called"] == []


def test_python_code_inside_a_step_cannot_make_it_use_unchecked_arrays():
    # A later parameter's getter changes an earlier, already checked parameter's arrays in
    # place (dtype, shape), rebinds them, edits or deletes its state, or resizes its buffer.
    outcome = run_scenario("python_code_in_a_step_changes_checked_arrays", 4)
    assert not outcome["failures"]


@pytest.mark.parametrize("moved", ["data", "exp_avg"])
def test_python_code_that_moves_a_checked_buffer_is_caught_before_the_update(moved):
    # Found by review: the step read each parameter's arrays, then ran Python code for later
    # parameters (here a getter) before the update, which used the addresses read first. The
    # getter moves the first parameter's buffer with ndarray.__setstate__ (no reference check,
    # unlike resize). The old buffer is a view's base, kept alive here so that a wrong write is
    # seen instead of corrupting the heap: the step must refuse, writing nowhere.
    n = 4096
    base = np.full(n, 0.5, np.float32)  # the memory the first array viewed
    first = Parameter(np.ones(n, np.float32))
    first.grad = np.ones(n, np.float32)
    armed = [False]

    def move():
        opt.state[first]  # the entry exists after the first step
        target = first.data if moved == "data" else opt.state[first]["exp_avg"]
        target.__setstate__((1, (n,), np.dtype(np.float32), False, bytes(4 * n)))

    class Moves(Parameter):
        @property
        def grad(self):
            if armed[0]:
                armed[0] = False
                move()
            return np.ones(n, np.float32)

    second = Moves(np.ones(n, np.float32))
    opt = Adamax([first, second], lr=0.1)
    opt.step()
    # The first parameter's array becomes a view of `base`, which stays alive.
    if moved == "data":
        first.data = base[:]
    else:
        opt.state[first]["exp_avg"] = base[:]
    opt.step()
    base_before = base.copy()
    second_before = second.data.copy()
    second_state = {k: np.copy(v) for k, v in opt.state[second].items()}
    steps = (opt.state[first]["step"], opt.state[second]["step"])
    armed[0] = True
    with pytest.raises(ValueError, match="group 0, parameter 0: its arrays' memory was moved"):
        opt.step()
    np.testing.assert_array_equal(base, base_before)  # the old memory was not written
    # Nothing else changed either (the moved array itself holds what the getter put there).
    np.testing.assert_array_equal(second.data, second_before)
    for key, value in second_state.items():
        np.testing.assert_array_equal(opt.state[second][key], value)
    assert (opt.state[first]["step"], opt.state[second]["step"]) == steps


def test_the_commit_never_finalizes_an_object_twice():
    # Found by this file: the commit of a first step assigns the new state arrays into the
    # entry while holding it, dropping whatever the entry held there in place; an array put
    # there by Python code during the step is finalized inside, and a finalizer that writes
    # the entry makes it finalized again, re-entrantly (a use after free).
    run_scenario("finalized_once_during_commit")


def test_a_state_write_made_during_a_step_is_not_silently_lost():
    # Found by this file: the same commit overwrites an array written into the entry while the
    # step ran (by Python code the step ran, or by another thread while the GIL was released).
    run_scenario("write_during_step_is_kept")


def test_a_step_re_entered_from_inside_a_step_says_so(rng):
    # Found by this file: pyo3's bare "Already borrowed" (a RuntimeError naming nothing).
    a = Parameter(np.ones(3, np.float32))
    a.grad = np.ones(3, np.float32)
    holder: list[Adamax] = []

    class StepsAgain(Parameter):
        @property
        def grad(self):
            if holder:
                holder.pop().step()
            return np.ones(3, np.float32)

    b = StepsAgain(np.ones(3, np.float32))
    opt = Adamax([a, b])
    holder.append(opt)
    before = snapshot(opt, [a, b])
    with pytest.raises(Exception) as caught:
        opt.step()
    message = str(caught.value)
    assert "Already borrowed" not in message and "step" in message, message
    assert_unchanged(before, opt, [a, b])


def test_a_loaded_state_whose_changes_reach_the_old_states_count_is_read_again(rng):
    """Found by chaos_race (2 runs in 75 under load): ``load_state_dict`` gives the optimizer a new
    state object. The step plan caches each parameter's entry with the version of the state it
    read it from, and reads the entries again when the version differs. When each state counted
    its own changes from 0, the new one could reach the version the plan had cached from the old
    one; then the plan took the state as unchanged and stepped entries long since removed. Here
    a step that the state changes under (a grad getter) keeps the old version cached, the new
    state is cleared and changed until its count would meet it, and the next step must start
    the parameter afresh, as the reference does."""
    n = 64
    touch: list[Adamax] = []

    class TouchesTheState(Parameter):
        @property
        def grad(self):
            if touch:
                touch[0].state[self]["step"] = touch[0].state[self].get("step", 1)
            return np.ones(n, np.float32)

    init = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    p, q = Parameter(init.copy()), TouchesTheState(np.zeros(n, np.float32))
    p.grad = g
    opt = Adamax([p, q], lr=0.01)
    opt.step()
    for _ in range(100):  # changes to the old state, so that its version is ahead of the new one's
        opt.state[p]["step"] = opt.state[p]["step"]
    opt.step()
    cached = opt.state.version  # the version the plan keeps: nothing changed since that step
    opt.load_state_dict(opt.state_dict())
    touch.append(opt)
    opt.step()  # changed under the step: the plan keeps the old state's version
    touch.clear()
    opt.state.clear()
    p.data = init.copy()
    # With a count per state, these changes bring the new state's version to `cached` exactly.
    other = Parameter(np.zeros(1, np.float32))
    opt.state[other]["step"] = 0
    while opt.state.version < cached - 1:
        opt.state[other]["step"] = 0
    del opt.state[other]
    opt.step()
    expected, *_ = adamax_reference_step(
        init, g, np.zeros(n, np.float32), np.zeros(n, np.float32), 1, lr=0.01
    )
    assert opt.state[p]["step"] == 1
    np.testing.assert_array_equal(p.data, expected)


# == 2. No panic reaches Python; no dimension limit =============================================


def many_dims(rng, ndim, dtype, order_changer):
    base = rng.standard_normal((2, 3)).astype(dtype)
    if np.dtype(dtype).kind == "c":
        base = base + 1j * rng.standard_normal((2, 3)).astype(base.dtype)
    return order_changer(base)[(None,) * (ndim - 2)]


@pytest.mark.parametrize("ndim", [33, 40, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
@pytest.mark.parametrize(
    "layout",
    [np.asfortranarray, lambda a: a[::-1, ::-1], lambda a: np.repeat(a, 2, axis=1)[:, ::2]],
    ids=["fortran", "reversed", "gaps"],
)
def test_many_dimensions_in_another_memory_order_step_correctly(rng, ndim, dtype, layout):
    data = many_dims(rng, ndim, dtype, layout)
    grad_values = rng.standard_normal(data.shape).astype(np.dtype(dtype).type(0).real.dtype)
    grad = np.ascontiguousarray(grad_values.astype(dtype))
    p = Parameter(data)
    expected = reference_pairs(np.array(p.data), grad, np.zeros(p.shape, dtype), 1)
    p.grad = grad
    opt = Adamax([p], **{k: v for k, v in HYPER.items() if "beta" not in k})
    opt.step()
    assert opt.state[p]["step"] == 1
    assert np.array(p.data).tobytes() == expected[0].tobytes()
    # The same through the functional form, on arrays of other memory orders still.
    params = [np.asfortranarray(expected[0])]
    m, u = np.zeros_like(params[0]), np.zeros_like(params[0])
    m[...], u[...] = expected[1], expected[2]
    functional.adamax(params, [grad], [m], [u], [2], **HYPER)
    again = reference_pairs(expected[0], grad, expected[1], 2, expected[2])
    assert params[0].tobytes() == np.asfortranarray(again[0]).tobytes()


def reference_pairs(param, grad, exp_avg, t, exp_inf=None):
    """The reference step on real arrays, or on complex ones as pairs of reals."""
    if exp_inf is None:
        exp_inf = np.zeros_like(exp_avg)
    if param.dtype.kind != "c":
        return adamax_reference_step(param, grad, exp_avg, exp_inf, t, **HYPER)
    # The update is element-wise: flat pairs (numpy arrays have at most 64 dimensions).
    flat = [np.stack([a.real.ravel(), a.imag.ravel()], -1) for a in (param, grad, exp_avg, exp_inf)]
    out = adamax_reference_step(*flat, t, **HYPER)
    return tuple((o[:, 0] + 1j * o[:, 1]).astype(param.dtype).reshape(param.shape) for o in out)


def test_no_rust_panic_escapes_any_entry_point(rng):
    # pyo3's PanicException derives from BaseException: a test for "no panic" must catch that.
    data = np.ones((2, 2), np.float32).T[(None,) * 62]
    calls = [
        lambda: functional.adamax(
            [data],
            [np.ones(data.shape, np.float32)],
            [np.zeros_like(data)],
            [np.zeros_like(data)],
            [1],
            **HYPER,
        ),  # fmt: skip
        lambda: functional.adamax(
            [as_strided(np.zeros(4), (2**29, 2**30), (0, 0), writeable=True)],
            [as_strided(np.zeros(4), (2**29, 2**30), (0, 0))],
            [np.zeros(2)],
            [np.zeros(2)],
            [1],
            **HYPER,
        ),  # fmt: skip
        lambda: _core.bandwidth_probe([data], [data], [data], [data]),
        lambda: _core.StepPlan(state_dtype="float16"),
        lambda: adamax_rs.set_num_threads(10**400),
        lambda: ParameterState(["exp_avg"])[Parameter(np.ones(1))].update({"step": 10**400}),
    ]
    for call in calls:
        try:
            call()
        except (TypeError, ValueError):
            pass
        except BaseException as error:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{type(error).__name__} escaped: {error}")


# == 3. fork() ====================================================================================


def test_fork_while_other_threads_step_gives_a_working_consistent_child():
    outcome = run_scenario("fork_mid_step", 5, timeout=300)
    assert outcome["forks"] == 12


def test_fork_while_a_closure_holds_the_optimizer_lock_waits_for_the_step():
    run_scenario("fork_while_a_closure_holds_the_lock")


def test_fork_does_not_stall_while_functional_steps_wait_for_each_other():
    # Found by this file: a step waiting for another's memory gets it with the GIL released,
    # then needs the GIL to run; fork() holds the GIL and waits for the running steps to finish,
    # so it waits its full 10 s timeout for a step that cannot start.
    run_scenario("fork_while_functional_steps_share_memory", 6)


# == 4. Interrupts ================================================================================


@pytest.mark.parametrize("seed", [1, 2])
def test_sigint_during_large_steps_never_splits_a_step(seed):
    outcome = run_scenario("interrupted_steps", seed)
    assert outcome["interrupted"] > 0


def test_sigint_during_large_functional_steps_never_splits_a_step():
    outcome = run_scenario("interrupted_functional_steps", 3)
    assert outcome["interrupted"] > 0


def test_keyboard_interrupt_from_the_closure_or_a_getter_changes_nothing(rng):
    opt, params = trained(rng)

    def closure():
        raise KeyboardInterrupt

    assert_refused(opt, params, KeyboardInterrupt, call=lambda: opt.step(closure))

    class Interrupts(Parameter):
        @property
        def grad(self):
            raise KeyboardInterrupt

    late = Interrupts(np.ones(3, np.float32))
    opt.param_groups[1]["params"].append(late)
    assert_refused(opt, params, KeyboardInterrupt)


# == 5. Bad state: validated when it arrives, messages name the user's parameter and key ========


BAD_STEPS = [
    (2**63 - 1, ValueError),
    (2**53 + 1, ValueError),
    (-1, ValueError),
    (10**400, ValueError),
    (np.int64(2**62), ValueError),
    (np.uint64(2**64 - 1), ValueError),
    (True, TypeError),
    (np.bool_(True), TypeError),
    (1.0, TypeError),
    (np.float64(3), TypeError),
    ("3", TypeError),
    (None, TypeError),
    (Fraction(3), TypeError),
]


@pytest.mark.parametrize("value, error", BAD_STEPS, ids=repr)
def test_bad_step_counts_are_refused_where_they_arrive(rng, value, error):
    opt, params = trained(rng)
    state = opt.state_dict()
    state["state"][1]["step"] = value
    assert_refused(
        opt, params, error, "parameter 1", "'step'", call=lambda: opt.load_state_dict(state)
    )
    entry = opt.state[params[1]]
    assert_refused(opt, params, error, "'step'", call=lambda: entry.__setitem__("step", value))
    replacement = {**dict(entry), "step": value}
    assert_refused(
        opt, params, error, "'step'", call=lambda: opt.state.__setitem__(params[1], replacement)
    )


def test_the_largest_step_count_loads_and_then_refuses_to_advance(rng):
    opt, params = trained(rng)
    opt.state[params[2]]["step"] = 2**53
    assert_refused(opt, params, ValueError, "group 1, parameter 0", "2**53")


@pytest.mark.parametrize(
    "key, value, error, needle",
    [
        ("exp_avg", np.zeros((4, 4), np.float32), ValueError, "shape"),
        ("exp_inf", np.zeros((4, 3), np.int64), TypeError, "int64"),
        ("exp_avg", np.zeros((4, 3), ">f4"), TypeError, "exp_avg"),
        ("exp_inf", np.zeros((4, 3), np.complex64), TypeError, "complex64"),
        ("exp_avg", np.zeros((4, 3), np.float32)[::-1].T.T, None, None),
    ],
)
def test_state_arrays_assigned_by_hand_are_checked_at_the_next_step(rng, key, value, error, needle):
    opt, params = trained(rng)
    opt.state[params[0]][key] = value
    if error is None:  # a reversed view is a fine state array: the step uses it as it is
        opt.step()
        return
    message = assert_refused(opt, params, error, "group 0, parameter 0", key)
    assert needle in message


@pytest.mark.parametrize(
    "state_dtype, saved, error",
    [
        (None, np.int64, TypeError),
        (None, np.int32, TypeError),
        (None, np.bool_, TypeError),
        (None, np.complex128, TypeError),
        (np.float32, np.float64, TypeError),
    ],
)
def test_state_of_another_kind_does_not_load(rng, state_dtype, saved, error):
    opt, params = trained(rng, dtype=np.float64, state_dtype=state_dtype)
    state = opt.state_dict()
    state["state"][0]["exp_avg"] = state["state"][0]["exp_avg"].astype(saved)
    assert_refused(
        opt, params, error, "parameter 0", "exp_avg", call=lambda: opt.load_state_dict(state)
    )


# == 7. Huge integers and other numbers that do not fit =========================================


HUGE = [10**400, -(10**400), Fraction(10**400, 3), np.longdouble("1e4000")]
#: How messages name each hyperparameter.
NAMED = {
    "lr": "lr|learning rate",
    "beta1": "beta",
    "beta2": "beta",
    "eps": "eps|epsilon",
    "weight_decay": "weight_decay",
}


@pytest.mark.parametrize("key", ["lr", "beta1", "beta2", "eps", "weight_decay"])
@pytest.mark.parametrize("value", HUGE, ids=["1e400", "-1e400", "Fraction", "longdouble"])
def test_numbers_too_large_for_a_float_are_value_errors_everywhere(rng, key, value):
    opt, params = trained(rng)
    kwargs = {"betas": (value, 0.999)} if key == "beta1" else {key: value}
    if key == "beta2":
        kwargs = {"betas": (0.9, value)}
    with pytest.raises(ValueError, match=NAMED[key]):
        Adamax([Parameter(np.ones(2))], **kwargs)
    assert_refused(
        opt,
        params,
        ValueError,
        call=lambda: opt.add_param_group({"params": [Parameter(np.ones(2))], key: value}),
    )
    assert len(opt.param_groups) == 2
    opt.param_groups[1][key] = value
    assert_refused(opt, params, ValueError, "group 1")
    opt.param_groups[1][key] = {"beta1": 0.9, "beta2": 0.999}.get(key, 0.01)
    state = opt.state_dict()
    state["param_groups"][0][key] = value
    assert_refused(opt, params, ValueError, call=lambda: opt.load_state_dict(state))
    arrays = [np.ones(2)], [np.ones(2)], [np.zeros(2)], [np.zeros(2)], [1]
    with pytest.raises(ValueError, match=NAMED[key]):
        functional.adamax(*arrays, **{**HYPER, key: value})


@pytest.mark.parametrize(
    "value",
    [2**31, 2**64, 10**400, 1025, -1, np.int64(-5)],
    ids=["2**31", "2**64", "10**400", "1025", "-1", "np.int64(-5)"],
)
def test_thread_counts_out_of_range_are_value_errors(value):
    # 10**400 was found by this file: an int too large for the conversion is a TypeError.
    before = adamax_rs.get_num_threads()
    with pytest.raises(ValueError, match="between 0 and 1024"):
        adamax_rs.set_num_threads(value)
    assert adamax_rs.get_num_threads() == before


@pytest.mark.parametrize("value", [True, 1.5, "2", None, np.float64(2)])
def test_thread_counts_of_the_wrong_type_are_type_errors(value):
    before = adamax_rs.get_num_threads()
    with pytest.raises(TypeError):
        adamax_rs.set_num_threads(value)
    assert adamax_rs.get_num_threads() == before


# == 8. torch's "betas" is never silently ignored ================================================


@pytest.mark.parametrize(
    "betas", [(0.5, 0.6), (0.5, 0.6, 0.7), [0.5, 0.6], (0.9,), None, "ab", np.array([0.5, 0.6])]
)
def test_betas_set_on_a_group_after_construction_is_refused(rng, betas):
    opt, params = trained(rng)
    opt.param_groups[1]["betas"] = betas
    assert_refused(opt, params, ValueError, "group 1", "'betas'", "beta1")


def test_betas_given_to_add_param_group_or_load_state_dict_is_used_or_refused(rng):
    opt, params = trained(rng)
    new = Parameter(np.ones(2))
    with pytest.raises(TypeError, match="pair"):
        opt.add_param_group({"params": [new], "betas": (0.5, 0.6, 0.7)})
    with pytest.raises(ValueError, match="not both"):
        opt.add_param_group({"params": [new], "betas": (0.5, 0.6), "beta1": 0.5})
    opt.add_param_group({"params": [new], "betas": (0.5, 0.6)})
    assert (opt.param_groups[2]["beta1"], opt.param_groups[2]["beta2"]) == (0.5, 0.6)
    assert "betas" not in opt.param_groups[2]
    state = opt.state_dict()
    group = state["param_groups"][0]
    del group["beta1"], group["beta2"]
    group["betas"] = (0.25, 0.75)
    opt.load_state_dict(state)  # torch's layout: taken, not ignored
    assert (opt.param_groups[0]["beta1"], opt.param_groups[0]["beta2"]) == (0.25, 0.75)


# == 9. Arrays that are written must not overlap themselves =======================================


def overlapping_windows(n_rows=3, width=4, dtype=np.float64):
    """A writeable view whose rows overlap: row i starts one element after row i - 1."""
    base = np.arange(n_rows + width, dtype=dtype)
    itemsize = base.itemsize
    return as_strided(base, (n_rows, width), (itemsize, itemsize), writeable=True)


def zero_stride(shape=(4,), dtype=np.float64):
    return as_strided(np.zeros(1, dtype), shape, (0,) * len(shape), writeable=True)


@pytest.mark.parametrize("make", [zero_stride, overlapping_windows], ids=["zero", "windows"])
def test_self_overlapping_parameters_are_refused(rng, make):
    opt, params = trained(rng, dtype=np.float64)
    bad = Parameter(make())
    bad.grad = np.ones(bad.shape)
    opt.param_groups[1]["params"].append(bad)
    assert_refused(opt, params, ValueError, "group 1, parameter 1", "the parameter", "same memory")
    with pytest.raises(ValueError, match="group 0, parameter 0.*same memory"):
        functional.adamax([make()], [np.ones(make().shape)], [np.zeros(make().shape)],
                          [np.zeros(make().shape)], [1], **HYPER)  # fmt: skip


@pytest.mark.parametrize("key", ["exp_avg", "exp_inf"])
@pytest.mark.parametrize("make", [zero_stride, overlapping_windows], ids=["zero", "windows"])
def test_self_overlapping_state_arrays_are_refused(rng, key, make):
    shape = make().shape
    opt, params = trained(rng, shapes=(shape, (2,), (3,)), dtype=np.float64)
    opt.state[params[0]][key] = make()
    assert_refused(opt, params, ValueError, "group 0, parameter 0", key, "same memory")
    arrays = {"exp_avg": np.zeros(shape), "exp_inf": np.zeros(shape), key: make()}
    with pytest.raises(ValueError, match=f"{key} reaches the same memory"):
        functional.adamax([np.ones(shape)], [np.ones(shape)], [arrays["exp_avg"]],
                          [arrays["exp_inf"]], [1], **HYPER)  # fmt: skip


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16])
def test_self_overlapping_master_copies_are_refused(rng, half):
    p = Parameter(np.ones((3, 4), half))
    p.grad = np.ones((3, 4), half)
    opt = Adamax([p], master_weights=True)
    opt.step()
    opt.state[p]["master"] = overlapping_windows(dtype=np.float32)
    assert_refused(opt, [p], ValueError, "group 0, parameter 0", "master", "same memory")


def test_broadcast_and_overlapping_gradients_are_fine_they_are_only_read(rng):
    init = rng.standard_normal((3, 4))
    grads = [np.broadcast_to(rng.standard_normal(4), (3, 4)), overlapping_windows()]
    for grad in grads:
        p = Parameter(init.copy())
        p.grad = grad
        Adamax([p], **{k: v for k, v in HYPER.items() if "beta" not in k}).step()
        expected = adamax_reference_step(init, np.array(grad), np.zeros((3, 4)),
                                         np.zeros((3, 4)), 1, **HYPER)  # fmt: skip
        assert p.data.tobytes() == expected[0].tobytes()


# == 10. The smaller ones, and their relatives ====================================================


@pytest.mark.parametrize("junk", [np.ones(3), "w", None, 3, b"x", {"data": np.ones(2)}])
def test_junk_appended_to_a_groups_params_is_a_type_error(rng, junk):
    opt, params = trained(rng)
    opt.param_groups[0]["params"].append(junk)
    assert_refused(opt, params, TypeError, "group 0, parameter 2", type(junk).__name__)


def test_zero_grad_in_place_is_all_or_nothing(rng):
    opt, params = trained(rng)
    frozen = np.ones((2,), np.float32)
    frozen.flags.writeable = False
    for bad in (frozen, [1.0, 2.0], "g"):
        params[2].grad = bad
        grads = [np.array(p.grad, copy=True) for p in params[:2]]
        with pytest.raises(TypeError, match="group 1, parameter 0"):
            opt.zero_grad(set_to_none=False)
        for p, g in zip(params[:2], grads):
            assert p.grad.tobytes() == g.tobytes()


class ReadOnlyGrad:
    """A parameter of another library: its grad is a read-only property."""

    def __init__(self):
        self.data = np.ones(2)

    @property
    def grad(self):
        return np.ones(2)


class RefusesNone(Parameter):
    """A parameter whose grad setter validates: None is refused with a TypeError."""

    @property
    def grad(self):
        return Parameter.grad.__get__(self)

    @grad.setter
    def grad(self, value):
        if value is None:
            raise TypeError("grad must be an array")
        Parameter.grad.__set__(self, value)


@pytest.mark.parametrize("odd", [ReadOnlyGrad, RefusesNone], ids=lambda c: c.__name__)
def test_zero_grad_to_none_is_all_or_nothing(rng, odd):
    # RefusesNone was found by this file: only AttributeError was undone, so a setter that
    # raised anything else left the earlier gradients set to None.
    first = Parameter(np.ones(2))
    first.grad = np.ones(2)
    other = odd(np.ones(2)) if odd is RefusesNone else odd()
    if odd is RefusesNone:
        other.grad = np.ones(2)
    opt = Adamax([first, other])
    with pytest.raises(TypeError, match="group 0, parameter 1"):
        opt.zero_grad()
    assert first.grad is not None, "zero_grad() changed a gradient and then failed"


def test_state_entry_update_is_all_or_nothing(rng):
    # Found by this file: update() sets item by item, so a bad item after a good one leaves
    # the good one set.
    opt, params = trained(rng)
    entry = opt.state[params[0]]
    for bad in ({"step": 5, "exp_avg": "junk"}, {"step": 7, "nonsense": np.zeros(3)}):
        before = snapshot(opt, params)
        with pytest.raises((TypeError, ValueError)):
            entry.update(bad)
        assert_unchanged(before, opt, params)
    before = snapshot(opt, params)
    with pytest.raises(TypeError):
        entry.update(step=9, exp_inf=[1, 2])
    assert_unchanged(before, opt, params)


def test_a_plan_given_a_state_without_its_keys_refuses_to_step():
    # Found by this file: a ParameterState whose entries cannot hold exp_avg/exp_inf made the
    # step keep its moments out of sight (in its cache) and store only the count.
    p = Parameter(np.ones(3))
    p.grad = np.ones(3)
    group = {"params": [p], "weight_decay": 0.0, "maximize": False, "eps_inside_max": False,
             "decoupled_weight_decay": False, **HYPER}  # fmt: skip
    for keys in (["x"], [], ["exp_avg"]):
        state = ParameterState(keys)
        with pytest.raises((TypeError, ValueError), match="exp_inf|exp_avg"):
            _core.StepPlan().step([group], state)
        assert (p.data == 1).all() and p not in state


OPTIONAL = ["weight_decay", "maximize", "eps_inside_max", "decoupled_weight_decay"]


@pytest.mark.parametrize("key", OPTIONAL)
def test_none_for_an_optional_hyperparameter_is_refused_or_works(rng, key):
    # Found by this file: None passes the checks at construction, add_param_group and
    # load_state_dict (it means "the default" to _core.Hyperparameters), is stored in the
    # group, and the first step then refuses it. Either refuse it at once or let it step.
    def steps_or_was_refused(make):
        try:
            opt, params = make()
        except TypeError as error:
            assert key in str(error)
            return
        opt.step()

    def construct():
        p = Parameter(np.ones(2))
        p.grad = np.ones(2)
        return Adamax([p], **{key: None}), [p]

    def add_group():
        opt, params = trained(rng)
        p = Parameter(np.ones(2))
        p.grad = np.ones(2)
        opt.add_param_group({"params": [p], key: None})
        return opt, params

    def load():
        opt, params = trained(rng)
        state = opt.state_dict()
        state["param_groups"][0][key] = None
        opt.load_state_dict(state)
        return opt, params

    for make in (construct, add_group, load):
        steps_or_was_refused(make)
    arrays = [np.ones(2)], [np.ones(2)], [np.zeros(2)], [np.zeros(2)], [1]
    with pytest.raises(TypeError, match=key):
        functional.adamax(*arrays, **{**HYPER, key: None})


class Real(float):
    """A float subclass: a numbers.Real a user might use for a hyperparameter."""


@pytest.mark.parametrize(
    "key, value",
    [
        ("lr", np.float32(0.01)),
        ("lr", np.float16(0.01)),
        ("eps", np.float64(1e-8)),
        ("weight_decay", np.int64(0)),
        ("weight_decay", np.uint8(1)),
        ("lr", Fraction(1, 100)),
        ("lr", Real(0.01)),
        ("maximize", np.bool_(True)),
    ],
    ids=repr,
)
def test_every_hyperparameter_a_step_accepts_a_checkpoint_saves(rng, tmp_path, key, value):
    # Fraction was found by this file: a step takes any numbers.Real, save_checkpoint only
    # Python and numpy numbers.
    opt, params = trained(rng)
    opt.param_groups[0][key] = value
    opt.step()
    save_checkpoint(opt, tmp_path / "c.safetensors")
    fresh = Adamax([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    load_checkpoint(fresh, tmp_path / "c.safetensors")
    assert float(fresh.param_groups[0][key]) == float(value)


def test_a_value_json_cannot_hold_in_a_group_is_a_value_error(rng, tmp_path):
    # Found by this file (a TypeError now): a float is a JSON number; NaN is a wrong value of
    # the right type.
    opt, params = trained(rng)
    opt.param_groups[0]["note"] = float("nan")
    with pytest.raises(ValueError, match="note"):
        save_checkpoint(opt, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


def test_checkpoints_follow_the_umask_keep_modes_and_keep_links(rng, tmp_path):
    opt, _ = trained(rng)
    old = os.umask(0o027)
    try:
        save_checkpoint(opt, tmp_path / "new.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.safetensors").st_mode) == 0o640
    os.chmod(tmp_path / "new.safetensors", 0o604)
    save_checkpoint(opt, tmp_path / "new.safetensors")
    assert stat.S_IMODE(os.stat(tmp_path / "new.safetensors").st_mode) == 0o604
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "c.safetensors"
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)  # dangling: the target is created through it
    for _ in range(2):
        save_checkpoint(opt, link)
        assert link.is_symlink() and target.is_file()
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["c.safetensors"]


def test_a_parameter_turned_complex_after_a_cached_step_names_its_state(rng):
    p = Parameter(rng.standard_normal(3).astype(np.float32))
    p.grad = np.ones(3, np.float32)
    opt = Adamax([p])
    opt.step()
    p.data = p.data.astype(np.complex64)
    p.grad = np.ones(3, np.complex64)
    message = assert_refused(opt, [p], TypeError, "group 0, parameter 0", "float32 state")
    assert "complex64 is not supported" not in message, message
    opt.state[p].clear()  # fresh state: a complex parameter is supported
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == np.complex64


def test_a_step_after_rebinding_to_another_layout_matches_the_reference(rng):
    # The cached description must be dropped when p.data is rebound to the same memory seen
    # another way (here, a transposed view: the state no longer pairs element for element).
    init = rng.standard_normal((4, 4))
    grad = rng.standard_normal((4, 4))
    p = Parameter(init.copy())
    p.grad = grad
    opt = Adamax([p], **{k: v for k, v in HYPER.items() if "beta" not in k})
    opt.step()
    ref = ReferenceAdamax([init], **HYPER)
    ref.step([grad])
    p.data = p.data.T
    opt.step()
    ref2 = adamax_reference_step(ref.params[0].T, grad, ref.state[0][1], ref.state[0][2], 2,
                                 **HYPER)  # fmt: skip
    assert np.ascontiguousarray(p.data).tobytes() == np.ascontiguousarray(ref2[0]).tobytes()


def test_a_key_compared_while_a_later_groups_options_are_read_cannot_move_a_checked_buffer():
    # Found by review: reading group 1's options looks up "betas" in its dict; an extra key with
    # the same hash has its __eq__ called by that lookup, even in an exact dict. That ran after
    # group 0's arrays were read on the fast path (which runs no Python code), so nothing
    # checked them again, and the update wrote the buffer __eq__ had freed. Every group's
    # options are now read before any array.
    n = 4096
    base = np.full(n, 0.5, np.float32)  # the memory parameter 0 views, kept alive
    p0 = Parameter(np.ones(n, np.float32))
    p0.grad = np.ones(n, np.float32)
    p1 = Parameter(np.ones(4, np.float32))
    p1.grad = np.ones(4, np.float32)
    opt = Adamax([{"params": [p0]}, {"params": [p1]}], lr=0.1)
    opt.step()
    p0.data = base[:]
    opt.step()  # the caches now hold the view of `base`: the next step takes the fast path
    armed = []

    class CollidesWithBetas:
        def __hash__(self):
            return hash("betas")

        def __eq__(self, other):
            if armed:
                armed.clear()
                p0.data.__setstate__((1, (n,), np.dtype(np.float32), False, bytes(4 * n)))
            return False

    opt.param_groups[1][CollidesWithBetas()] = None
    base_before = base.copy()
    armed.append(True)
    opt.step()
    assert not armed, "the lookup did not compare the colliding key"
    np.testing.assert_array_equal(base, base_before)  # the old memory was not written
    # The step updated the memory the parameter holds now: zeros, stepped once by lr.
    np.testing.assert_allclose(p0.data, np.full(n, -0.1, np.float32), rtol=1e-6)


@pytest.mark.parametrize("change", ["moved", "read-only", "retyped"])
def test_a_state_array_changed_in_place_between_steps_is_checked_again(change):
    # Found by review: between steps the fast path compared only the parameter's header and
    # trusted the state's version for its state arrays, which an in-place change of an array
    # keeps. A moved buffer was written after it was freed; a read-only or retyped exp_avg was
    # written as it was checked before.
    n = 4096
    base = np.zeros(n, np.float32)
    p = Parameter(np.ones(n, np.float32))
    p.grad = np.ones(n, np.float32)
    opt = Adamax([p], lr=0.1)
    opt.step()
    opt.state[p]["exp_avg"] = base[:]
    opt.step()  # cached: the next step takes the fast path
    exp_avg = opt.state[p]["exp_avg"]
    if change == "moved":
        base_before = base.copy()
        exp_avg.__setstate__((1, (n,), np.dtype(np.float32), False, bytes(4 * n)))
        opt.step()
        np.testing.assert_array_equal(base, base_before)  # the old memory was not written
        assert opt.state[p]["step"] == 3
        # exp_avg was zeros when the step began: 0.9 * 0 + 0.1 * 1.
        np.testing.assert_allclose(exp_avg, np.full(n, 0.1, np.float32), rtol=1e-6)
        return
    if change == "read-only":
        exp_avg.flags.writeable = False
        error, message = ValueError, "group 0, parameter 0: exp_avg is read-only"
    else:
        exp_avg.dtype = np.float16  # the same memory seen as twice as many float16
        error, message = TypeError, "group 0, parameter 0: .*exp_avg has dtype float16"
    before = p.data.copy(), np.copy(opt.state[p]["exp_inf"]), opt.state[p]["step"]
    with pytest.raises(error, match=message):
        opt.step()
    np.testing.assert_array_equal(p.data, before[0])
    np.testing.assert_array_equal(opt.state[p]["exp_inf"], before[1])
    assert opt.state[p]["step"] == before[2]
