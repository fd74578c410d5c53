"""Crash-prone scenarios of tests/test_adversarial.py, each run in an interpreter of its own.

``python adversarial_scenarios.py NAME [SEED]`` runs one scenario. It ends by printing one line
``RESULT <json>``; a failed check raises (exit status 1, traceback on stderr). A crash, an abort
or a hang is the caller's failure too: it runs this with a timeout and checks the exit status.

The checks compare against tests/reference.py. Arrays are built so that the mutations the
scenarios make leave their values meaningful: palindromic vectors (a reversed view holds the same
values), symmetric matrices (a transposed view holds the same values), and tiled patterns (every
element is one of a few, so the reference runs on the pattern alone).
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import adamax_rs  # noqa: E402
from adamax_rs import Adamax, Parameter, functional  # noqa: E402
from reference import ReferenceAdamax  # noqa: E402

# Setting ``ndarray.strides`` is deprecated in recent numpy: these scenarios do it on purpose.
warnings.simplefilter("ignore", DeprecationWarning)

HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
#: How long each race runs.
RACE_SECONDS = 1.5


def result(**values: object) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def palindrome(rng: np.random.Generator, n: int, dtype: type) -> np.ndarray:
    half = rng.standard_normal(n // 2).astype(dtype)
    return np.concatenate([half, half[::-1]])


def symmetric(rng: np.random.Generator, n: int, dtype: type) -> np.ndarray:
    a = rng.standard_normal((n, n))
    return ((a + a.T) / 2).astype(dtype)


def reference_after(inits, grads, steps, **hyper):
    """Parameters and state after ``steps`` steps of constant ``grads`` (tests/reference.py)."""
    ref = ReferenceAdamax(inits, **{**HYPER, **hyper})
    for _ in range(steps):
        ref.step(grads)
    return ref


def assert_bits(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    actual = np.ascontiguousarray(actual)
    expected = np.ascontiguousarray(expected)
    if actual.dtype != expected.dtype or actual.tobytes() != expected.tobytes():
        bad = np.flatnonzero(actual.ravel() != expected.ravel())
        raise AssertionError(
            f"{what}: {bad.size} elements differ from the reference, first at {bad[:5]}: "
            f"{actual.ravel()[bad[:3]]} != {expected.ravel()[bad[:3]]}"
        )


def assert_tiled(actual: np.ndarray, pattern: np.ndarray, what: str) -> None:
    """``actual`` holds ``pattern`` repeated, bit for bit (without building the repetition)."""
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[pattern.itemsize]
    rows = np.ascontiguousarray(actual).view(bits).reshape(-1, pattern.size)
    same = rows == np.ascontiguousarray(pattern).view(bits)
    if actual.dtype != pattern.dtype or not same.all():
        bad = np.flatnonzero(~same.ravel())
        raise AssertionError(f"{what}: {bad.size} elements differ from the reference")


class Outcomes:
    """What the threads of a scenario saw: clean errors, and anything else (a failure)."""

    def __init__(self) -> None:
        self.clean: list[str] = []
        self.bad: list[str] = []
        self.lock = threading.Lock()

    def run(self, action) -> bool:
        """Run a step (or another library call that must only refuse with TypeError or
        ValueError); True if it returned."""
        try:
            action()
            return True
        except (TypeError, ValueError) as error:
            with self.lock:
                self.clean.append(f"{type(error).__name__}: {error}")
            return False
        except BaseException as error:  # noqa: BLE001 - every other exception is a failure
            with self.lock:
                self.bad.append(f"{type(error).__name__}: {error}")
            return False

    def mutate(self, action) -> None:
        """Run a mutation: numpy refuses some in-place changes (AttributeError for a shape a
        view cannot take, ValueError for a dtype), and threads race to delete entries
        (KeyError); anything else is a failure."""
        try:
            action()
        except (TypeError, ValueError, AttributeError, KeyError):
            pass
        except BaseException as error:  # noqa: BLE001
            with self.lock:
                self.bad.append(f"mutation: {type(error).__name__}: {error}")

    def check(self) -> None:
        if self.bad:
            raise AssertionError(f"{len(self.bad)} unexpected exceptions, first: {self.bad[:3]}")
        for message in self.clean:
            # Every refusal names the group (and the parameter, for a tensor's problem).
            if "group " not in message:
                raise AssertionError(f"an error names no group: {message}")


# -- class 1: array headers changed in place while steps run ---------------------------------


def step_until_the_deadline(
    gate: threading.Barrier, opt: Any, outcomes: Any, done: threading.Event
) -> None:
    """A race's stepping thread: after the start gate, step ``opt`` for ``RACE_SECONDS``,
    recording each outcome, then say it is done."""
    gate.wait()
    deadline = time.monotonic() + RACE_SECONDS
    while time.monotonic() < deadline:
        outcomes.run(opt.step)
    done.set()


def header_race(seed: int) -> None:
    """One optimizer stepped on one thread while two others change its arrays' headers in place
    (dtype, shape, strides), rebind data, grads and state arrays to views, and edit the groups.
    Every change leaves the values meaningful, so after the race the parameters and state must
    be exactly the reference's after as many steps as succeeded, and every failed step a clean
    error that changed nothing."""
    sys.setswitchinterval(1e-5)  # switch threads as often as possible
    rng = np.random.default_rng(seed)
    n0, n1 = 1 << 15, 64  # both large enough for the step to release the GIL
    inits = [palindrome(rng, n0, np.float32), symmetric(rng, n1, np.float64)]
    inits.append(rng.standard_normal(7).astype(np.float32))
    grads = [palindrome(rng, n0, np.float32), symmetric(rng, n1, np.float64)]
    grads.append(rng.standard_normal(7).astype(np.float32))
    params = [Parameter(x.copy()) for x in inits]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    opt = Adamax(params, weight_decay=0.01, **{k: v for k, v in HYPER.items() if "beta" not in k})
    outcomes = Outcomes()
    done = threading.Event()
    gate = threading.Barrier(3)

    stepper = functools.partial(step_until_the_deadline, gate, opt, outcomes, done)

    chance = random.Random(seed)

    def pause() -> None:
        """Sometimes give the GIL away while an array is changed: a step then sees it so."""
        if chance.random() < 0.3:
            time.sleep(0)

    def toggle_dtype(a: np.ndarray, other: type) -> None:
        original = a.dtype
        a.dtype = other
        pause()
        a.dtype = original

    def toggle_shape(a: np.ndarray) -> None:
        original = a.shape
        a.shape = (a.size // 2, 2) if a.size % 2 == 0 else (1, a.size)
        pause()
        a.shape = original

    def transpose_in_place(a: np.ndarray) -> None:
        a.strides = a.strides[::-1]

    def mutations(local: random.Random, worker: int) -> list:
        """Worker 0 changes parameters 0 and 2 and the groups, worker 1 parameter 1: two
        workers changing one array would leave it changed (a reversed view of a reshaped
        array), which is theirs to avoid, not the optimizer's."""
        p0, p1, p2 = params
        group = opt.param_groups[0]

        def state_view(p: Parameter, key: str, view) -> None:
            entry = opt.state.get(p)
            if entry is not None and key in entry:
                entry[key] = view(entry[key])

        def state_dtype(p: Parameter, key: str) -> None:
            entry = opt.state.get(p)
            if entry is not None and key in entry:
                toggle_dtype(entry[key], np.int8)

        def append_junk() -> None:
            group["params"].append(local.choice([np.ones(3), "w", None, p0]))
            pause()
            del group["params"][-1]

        def betas() -> None:
            group["betas"] = (0.5, 0.6)
            pause()
            del group["betas"]

        if worker == 1:
            return [
                lambda: toggle_dtype(p1.data, np.float32),
                lambda: toggle_shape(p1.data),
                lambda: transpose_in_place(p1.data),
                lambda: setattr(
                    p1,
                    "data",
                    np.lib.stride_tricks.as_strided(
                        p1.data, p1.data.shape, p1.data.strides[::-1], writeable=True
                    ),
                ),
                lambda: toggle_shape(p1.grad),
                lambda: setattr(p1, "grad", p1.grad.T),
                lambda: state_dtype(p1, "exp_inf"),
                lambda: state_view(p1, "exp_inf", lambda a: a.T),
            ]
        return [
            lambda: toggle_dtype(p0.data, np.int8),
            lambda: toggle_dtype(p2.data, np.int32),
            lambda: toggle_shape(p0.data),
            lambda: setattr(p0, "data", p0.data[::-1]),
            lambda: toggle_dtype(p0.grad, np.int8),
            lambda: setattr(p0, "grad", p0.grad[::-1]),
            lambda: setattr(p2, "grad", p2.grad.copy()),
            lambda: state_dtype(p0, "exp_avg"),
            lambda: state_view(p0, "exp_avg", lambda a: a[::-1]),
            lambda: group.__setitem__("lr", float(repr(HYPER["lr"]))),
            append_junk,
            betas,
        ]

    def mutator(worker: int) -> None:
        local = random.Random(seed * 10 + worker)
        actions = mutations(local, worker)
        gate.wait()
        while not done.is_set():
            outcomes.mutate(local.choice(actions))
            time.sleep(local.random() * 2e-4)  # let some steps through untouched

    threads = [threading.Thread(target=stepper)]
    threads += [threading.Thread(target=mutator, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes.check()
    counts = {opt.state[p]["step"] for p in params}
    assert len(counts) == 1, f"parameters stepped different numbers of times: {counts}"
    (k,) = counts
    ref = reference_after(inits, grads, k, weight_decay=0.01)
    for i, p in enumerate(params):
        assert_bits(p.data, ref.params[i], f"parameter {i}")
        assert_bits(opt.state[p]["exp_avg"], ref.state[i][1], f"exp_avg {i}")
        assert_bits(opt.state[p]["exp_inf"], ref.state[i][2], f"exp_inf {i}")
    assert k > 0 and outcomes.clean, "the race never interleaved: it tested nothing"
    result(steps=k, refused_steps=len(outcomes.clean))


def shared_memory_race(seed: int) -> None:
    """Two optimizers and a functional caller step one buffer from three threads (each through
    its own view object), while a fourth changes those views' headers in place. Steps on shared
    memory must run one after another: with no weight decay the buffer ends as its start plus
    every successful step's update, and each optimizer's state is the reference's exactly."""
    sys.setswitchinterval(1e-5)
    rng = np.random.default_rng(seed)
    n = 1 << 13  # 64 KB per array: the steps release the GIL
    # float64: the rounding of the interleaved additions (~1e-15 each) stays far below the
    # smallest update (~1e-2), so a lost or doubled update cannot hide in it.
    start = rng.standard_normal(n)
    buffer = start.copy()
    grads = [rng.standard_normal(n) for _ in range(3)]
    lrs = [1e-2, 2e-2, 3e-2]
    a, b = Parameter(buffer[:]), Parameter(buffer[:])
    a.grad, b.grad = grads[0].copy(), grads[1].copy()
    opts = [Adamax([a], lr=lrs[0]), Adamax([b], lr=lrs[1])]
    functional_view = buffer[:]
    moments = [np.zeros(n), np.zeros(n)]
    functional_steps = [0]
    outcomes = Outcomes()
    done = threading.Event()
    gate = threading.Barrier(4)

    def functional_step() -> None:
        t = functional_steps[0] + 1
        functional.adamax(
            [functional_view], [grads[2]], [moments[0]], [moments[1]], [t], lr=lrs[2],
            beta1=HYPER["beta1"], beta2=HYPER["beta2"], eps=HYPER["eps"],
        )  # fmt: skip
        functional_steps[0] = t

    def loop(action) -> None:
        gate.wait()
        deadline = time.monotonic() + RACE_SECONDS
        stepped = 0
        while time.monotonic() < deadline and stepped < 2000:  # the reference's time
            stepped += outcomes.run(action)

    def mutator() -> None:
        local = random.Random(seed)
        gate.wait()
        while not done.is_set():
            view = local.choice([a.data, b.data, functional_view])

            def toggle(view: np.ndarray = view) -> None:
                original = view.dtype
                view.dtype = local.choice([np.int8, np.float32, np.complex128])
                if local.random() < 0.3:
                    time.sleep(0)  # let a step see it
                view.dtype = original

            outcomes.mutate(toggle)

    steppers = [threading.Thread(target=loop, args=(o.step,)) for o in opts]
    steppers.append(threading.Thread(target=loop, args=(functional_step,)))
    chaos = threading.Thread(target=mutator)
    for t in [*steppers, chaos]:
        t.start()
    for t in steppers:
        t.join()
    done.set()
    chaos.join()
    # A clean error of the functional form names no group index beyond "group 0": fine.
    outcomes.check()
    counts = [opts[0].state[a].get("step", 0), opts[1].state[b].get("step", 0)]
    counts.append(functional_steps[0])
    expected = start.copy()
    for i, (lr, count) in enumerate(zip(lrs, counts)):
        ref = reference_after([np.zeros(n)], [grads[i]], count, lr=lr)
        expected += ref.params[0]
        if i < 2 and count:
            entry = opts[i].state[(a, b)[i]]
            assert_bits(entry["exp_avg"], ref.state[0][1], f"optimizer {i} exp_avg")
            assert_bits(entry["exp_inf"], ref.state[0][2], f"optimizer {i} exp_inf")
    worst = float(np.max(np.abs(buffer - expected)))
    assert worst < 1e-8, f"the shared buffer is {worst} away from the sum of the updates"
    assert min(counts) > 0 and outcomes.clean, "the race never interleaved: it tested nothing"
    result(steps=counts, refused_steps=len(outcomes.clean), worst=worst)


def chaos_race(seed: int) -> None:
    """Anything a user can do from another thread while steps run: delete and replace state
    entries, clear the state, load state dicts, add groups, rebind data to arrays of other
    dtypes, zero gradients, step the same memory through the functional form. No check of the
    numbers (the mutations change them): the process must not crash, every exception must be a
    TypeError or ValueError, and afterwards the optimizer must still work and be exact."""
    sys.setswitchinterval(1e-5)
    rng = np.random.default_rng(seed)
    shapes = [(1 << 14,), (32, 32), (5,)]
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    opt = Adamax([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}])
    opt.step()
    saved = opt.state_dict()
    outcomes = Outcomes()
    done = threading.Event()

    def mutations(local: random.Random) -> list:
        def pick() -> Parameter:
            return local.choice(params)

        def delete_entry() -> None:
            p = pick()
            if p in opt.state:
                try:
                    del opt.state[p]
                except KeyError:
                    pass  # another thread deleted it first

        def rebind_data() -> None:
            p = pick()
            p.data = p.data.astype(local.choice([np.float64, np.float32, np.complex64]))

        def restore_data() -> None:
            p = pick()
            p.data = np.ascontiguousarray(p.data.real, dtype=np.float32)

        def bad_grad() -> None:
            p = pick()
            p.grad = local.choice(
                [np.ones(3, np.float32), np.ones(p.shape, np.int64), "g", p.data, None]
            )

        def good_grad() -> None:
            p = pick()
            p.grad = rng.standard_normal(p.shape).astype(p.data.dtype)

        def replace_state_array() -> None:
            p = pick()
            entry = opt.state[p]
            key = local.choice(["exp_avg", "exp_inf"])
            entry[key] = local.choice(
                [np.zeros(p.shape, np.float32), np.zeros(3), np.zeros(p.shape, np.int8)]
            )

        def set_step() -> None:
            opt.state[pick()]["step"] = local.choice([0, 5, 2**53, 2**53 + 1, -1, True, 1.5])

        def functional_on_shared() -> None:
            p = pick()
            m, u = np.zeros(p.shape, p.data.dtype), np.zeros(p.shape, p.data.dtype)
            functional.adamax([p.data], [p.grad], [m], [u], [1], **HYPER)

        def add_group() -> None:
            extra = Parameter(np.zeros(3, np.float32))
            extra.grad = np.ones(3, np.float32)
            opt.add_param_group({"params": [extra]})
            del opt.param_groups[-1]

        def edit_list() -> None:
            group = opt.param_groups[0]["params"]
            group.append(local.choice([pick(), np.ones(2), Parameter(np.ones(2))]))
            del group[-1]

        return [
            delete_entry,
            rebind_data,
            restore_data,
            bad_grad,
            good_grad,
            replace_state_array,
            set_step,
            functional_on_shared,
            add_group,
            edit_list,
            lambda: opt.state.clear(),
            lambda: opt.load_state_dict(saved),
            lambda: opt.zero_grad(set_to_none=local.random() < 0.5),
            lambda: opt.state_dict(),
        ]

    gate = threading.Barrier(3)

    stepper = functools.partial(step_until_the_deadline, gate, opt, outcomes, done)

    def mutator(worker_seed: int) -> None:
        local = random.Random(worker_seed)
        actions = mutations(local)
        gate.wait()
        while not done.is_set():
            outcomes.run(local.choice(actions))  # library calls: refusals must be clean

    threads = [threading.Thread(target=stepper)]
    threads += [threading.Thread(target=mutator, args=(seed * 7 + i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if outcomes.bad:
        raise AssertionError(f"unexpected exceptions: {outcomes.bad[:5]}")
    # Afterwards: a clean start over the same Parameter objects steps exactly as the reference.
    inits = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for p, x, g in zip(params, inits, grads):
        p.data, p.grad = x.copy(), g.copy()
    opt.state.clear()
    for group in opt.param_groups:
        group["lr"] = HYPER["lr"]
    for _ in range(3):
        opt.step()
    ref = reference_after(inits, grads, 3)
    for i, p in enumerate(params):
        assert_bits(p.data, ref.params[i], f"parameter {i} after the chaos")
    result(errors=len(outcomes.clean))


# -- class 1, Python code inside a step --------------------------------------------------------


def python_code_in_a_step_changes_checked_arrays(seed: int) -> None:
    """Python code that a step runs (a later parameter's ``grad`` getter) changes the arrays of
    a parameter the step has already checked: their headers in place, rebinding, the state, the
    groups. The step must end as if the change came before it or after it (or refuse cleanly,
    changing nothing), and never use a description it did not check."""
    rng = np.random.default_rng(seed)
    n = 64
    failures = []
    outcomes: dict[str, str] = {}
    cases = {
        "data dtype": lambda ctx: setattr(ctx.p.data, "dtype", np.int8),
        "data shape": lambda ctx: setattr(ctx.p.data, "shape", (n // 2, 2)),
        "grad dtype": lambda ctx: setattr(ctx.p.grad, "dtype", np.int8),
        "grad shape": lambda ctx: setattr(ctx.p.grad, "shape", (n // 2, 2)),
        "data rebound": lambda ctx: setattr(ctx.p, "data", ctx.p.data.copy()),
        "grad rebound": lambda ctx: setattr(ctx.p, "grad", ctx.p.grad.copy()),
        "exp_avg dtype": lambda ctx: setattr(ctx.opt.state[ctx.p]["exp_avg"], "dtype", np.int8),
        "exp_avg rebound": lambda ctx: ctx.opt.state[ctx.p].__setitem__(
            "exp_avg", ctx.opt.state[ctx.p]["exp_avg"].copy()
        ),
        "entry deleted": lambda ctx: ctx.opt.state.__delitem__(ctx.p),
        "state cleared": lambda ctx: ctx.opt.state.clear(),
        "resized": lambda ctx: ctx.p.data.resize((2 * n,)),
    }

    class Context:
        pass

    def one(name: str, change) -> None:
        ctx = Context()
        init = rng.standard_normal(n).astype(np.float32)
        grad = rng.standard_normal(n).astype(np.float32)
        ctx.p = Parameter(init.copy())
        ctx.p.grad = grad.copy()
        armed: list[bool] = []

        class Changes(Parameter):
            @property
            def grad(self):
                if armed:
                    armed.pop()
                    change(ctx)
                return np.ones(3, np.float32)

        later = Changes(np.ones(3, np.float32))
        ctx.opt = Adamax([ctx.p, later], lr=1e-2)
        ctx.opt.step()  # the first step: the state exists and is cached
        data0, grad0 = ctx.p.data, ctx.p.grad
        entry0 = ctx.opt.state[ctx.p]
        m0 = entry0["exp_avg"]
        ref = reference_after([init], [grad], 1)
        before = (ref.params[0].copy(), ref.state[0][1].copy(), ref.state[0][2].copy())
        ref.step([grad])
        after = (ref.params[0], ref.state[0][1], ref.state[0][2])
        armed.append(True)
        try:
            ctx.opt.step()
            outcome = "stepped"
        except (TypeError, ValueError) as error:
            outcome = f"refused ({error})"
        except BaseException as error:  # noqa: BLE001
            failures.append(f"{name}: {type(error).__name__}: {error}")
            return
        outcomes[name] = outcome[:60]
        # Undo the change of view, so that the values can be compared.
        for array, dtype in ((data0, np.float32), (grad0, np.float32), (m0, np.float32)):
            array.dtype = dtype
            if array.size == n:
                array.shape = (n,)
        finished = data0 if data0.size == n else data0[:n]

        def same(a, b) -> bool:
            return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()

        if outcome != "stepped":
            ok = same(finished, before[0]) and same(m0, before[1])
        elif name == "data rebound":
            # Before the step: the new array is updated; after it: the old one is.
            ok = (same(data0, after[0]) and same(ctx.p.data, before[0])) or (
                same(data0, before[0]) and same(ctx.p.data, after[0])
            )
        elif name == "exp_avg rebound":
            ok = same(finished, after[0]) and (
                same(m0, after[1]) or same(ctx.opt.state[ctx.p]["exp_avg"], after[1])
            )
        elif name in ("entry deleted", "state cleared"):
            # After the step: updated, and the state has no entry for it.
            after_ok = same(finished, after[0]) and ctx.p not in ctx.opt.state
            # Before it: a fresh state, stepped once from the parameter as it was.
            fresh = reference_after([before[0]], [grad], 1)
            entry = ctx.opt.state.get(ctx.p)
            before_ok = (
                same(finished, fresh.params[0]) and entry is not None and entry.get("step") == 1
            )
            ok = after_ok or before_ok
        else:
            ok = same(finished, after[0]) and same(m0, after[1]) and entry0["step"] == 2
        if not ok:
            entry = ctx.opt.state.get(ctx.p)
            failures.append(
                f"{name}: {outcome}, but the arrays are not as in either order (parameter "
                f"updated: {same(finished, after[0])}, unchanged: {same(finished, before[0])}; "
                f"state: {None if entry is None else sorted(entry.items(), key=str)[:1]})"
            )

    for name, change in cases.items():
        one(name, change)
    result(outcomes=outcomes, failures=failures)
    assert not failures, failures


def _write_during_first_step(value_factory):
    """Step ``first`` (its state entry empty) and ``second``, whose ``grad`` getter (Python code
    that the step runs after it has read ``first``) writes ``first``'s ``exp_avg``."""
    first = Parameter(np.ones(3, np.float32))
    first.grad = np.ones(3, np.float32)
    written: dict[str, object] = {}
    stepping: list[Adamax] = []

    class Writes(Parameter):
        @property
        def grad(self):
            if stepping and not written:
                entry = stepping[0].state[first]
                value = value_factory(entry)
                written["id"] = id(value)
                entry["exp_avg"] = value
            return np.ones(3, np.float32)

    second = Writes(np.ones(3, np.float32))
    opt = Adamax([first, second])
    opt.state[first]  # noqa: B018 - an empty entry, as torch's defaultdict makes
    stepping.append(opt)
    try:
        opt.step()
        outcome = "stepped"
    except (TypeError, ValueError) as error:
        outcome = f"refused: {error}"
    return opt, first, outcome, written


def finalized_once_during_commit(seed: int) -> None:
    """No object may be finalized twice: the step's commit must not drop Python objects while
    it holds the state's internals (a finalizer that writes the entry would run inside)."""
    del seed
    finalized: list[int] = []

    class Noisy(np.ndarray):
        """An array that records its finalization and writes its entry from there."""

        def __del__(self) -> None:
            finalized.append(id(self))
            entry = getattr(self, "entry", None)
            if entry is not None:
                self.entry = None
                entry["exp_avg"] = np.zeros(3, np.float32)

    def make(entry):
        value = np.zeros(3, np.float32).view(Noisy)
        value.entry = entry
        return value

    opt, first, outcome, _ = _write_during_first_step(make)
    del opt, first
    result(outcome=outcome, finalized=len(finalized), distinct=len(set(finalized)))
    assert len(finalized) == len(set(finalized)), (
        f"an array was finalized twice, re-entrantly, inside the step's commit: {finalized}"
    )


def write_during_step_is_kept(seed: int) -> None:
    """Python code run by a step (a parameter's getter) writes the state of an earlier
    parameter of that step, one stepped for the first time. The outcome must be that of one of
    the two orders: step then write (the written array stays in the entry), or write then step
    (a state without 'step': refused, nothing changed). Never the write silently lost."""
    del seed
    opt, first, outcome, written = _write_during_first_step(lambda entry: np.zeros(3, np.float32))
    entry = dict(opt.state[first])
    kept = "exp_avg" in entry and id(entry["exp_avg"]) == written["id"]
    result(outcome=outcome, write_kept=kept, entry=sorted(entry))
    if outcome == "stepped":
        assert kept, "the step's commit replaced an array written while the step ran"
    else:
        assert (first.data == 1).all(), "a refused step changed the parameter"


# -- class 3: fork ------------------------------------------------------------------------------


def _pattern(rng: np.random.Generator, distinct: int, reps: int, dtype: type):
    base = rng.standard_normal(distinct).astype(dtype)
    return base, np.tile(base, reps)


def _child_checks(opt, p, base_init, base_grad, reps, other_thread_arrays) -> None:
    """In a forked child: the state is between two steps, and everything works at once."""
    k = opt.state[p]["step"] if p in opt.state else 0
    ref = reference_after([base_init], [base_grad], k)
    assert_tiled(p.data, ref.params[0], f"child parameter after {k} steps")
    if k:
        assert_tiled(opt.state[p]["exp_avg"], ref.state[0][1], "child exp_avg")
        assert_tiled(opt.state[p]["exp_inf"], ref.state[0][2], "child exp_inf")
    opt.step()
    assert opt.state[p]["step"] == k + 1
    ref.step([base_grad])
    assert_tiled(p.data, ref.params[0], "child parameter after its own step")
    opt.state_dict()
    other = Parameter(p.data)
    other.grad = p.grad
    Adamax([other]).step()
    zeros = [np.zeros_like(a) for a in other_thread_arrays]
    functional.adamax(other_thread_arrays[:1], other_thread_arrays[1:2], zeros[:1], zeros[1:2],
                      [1], **HYPER)  # fmt: skip
    adamax_rs.set_num_threads(2)
    opt.step()


def _fork_and_check(child_body, forks: int, max_fork_seconds: float) -> dict:
    """Fork ``forks`` times; each child runs ``child_body`` under a 30 s alarm."""
    slowest = 0.0
    statuses = []
    for _ in range(forks):
        time.sleep(random.random() * 0.02)
        began = time.monotonic()
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)
            code = 0
            try:
                child_body()
            except BaseException as error:  # noqa: BLE001 - reported through the status
                print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr)
                code = 3
            sys.stderr.flush()
            os._exit(code)
        slowest = max(slowest, time.monotonic() - began)
        deadline = time.monotonic() + 40
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("a forked child hung")
            time.sleep(0.005)
        statuses.append(os.waitstatus_to_exitcode(status))
        if slowest > max_fork_seconds:
            break
    assert all(s == 0 for s in statuses), f"forked children failed: {statuses}"
    assert slowest <= max_fork_seconds, (
        f"fork() took {slowest:.1f} s while other threads were stepping (no step there takes "
        f"more than a few milliseconds)"
    )
    return {"forks": len(statuses), "slowest_fork_s": round(slowest, 3)}


def fork_mid_step(seed: int) -> None:
    """Fork while other threads are inside steps: one optimizer stepping a large parameter,
    two more optimizers stepping one shared buffer, a functional caller on arrays of its own.
    Each child finds every optimizer between two steps (its parameter and state exactly the
    reference's after its step count) and can step, save, make new optimizers over the same
    memory and call the functional form at once."""
    random.seed(seed)
    rng = np.random.default_rng(seed)
    reps = 1 << 14
    base_init, init = _pattern(rng, 64, reps, np.float32)
    base_grad, grad = _pattern(rng, 64, reps, np.float32)
    p = Parameter(init.copy())
    p.grad = grad.copy()
    opt = Adamax([p], **{k: v for k, v in HYPER.items() if "beta" not in k})
    shared = np.zeros(1 << 16)
    sharers = [Parameter(shared), Parameter(shared)]
    for s in sharers:
        s.grad = np.ones_like(shared)
    shared_opts = [Adamax([s]) for s in sharers]
    own = [np.ones(1 << 16, np.float32), np.ones(1 << 16, np.float32)]
    stop = threading.Event()
    failures: list[str] = []

    def loop(action) -> None:
        try:
            while not stop.is_set():
                action()
        except BaseException as error:  # noqa: BLE001
            failures.append(repr(error))

    def functional_step() -> None:
        m, u = np.zeros_like(own[0]), np.zeros_like(own[0])
        functional.adamax([own[0]], [own[1]], [m], [u], [1], **HYPER)

    threads = [threading.Thread(target=loop, args=(opt.step,))]
    threads += [threading.Thread(target=loop, args=(o.step,)) for o in shared_opts]
    threads.append(threading.Thread(target=loop, args=(functional_step,)))
    for t in threads:
        t.start()
    try:
        time.sleep(0.05)

        def child() -> None:
            _child_checks(opt, p, base_init, base_grad, reps, own)
            for o in shared_opts:
                o.step()

        summary = _fork_and_check(child, 12, 5.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures
    result(**summary)


def fork_while_functional_steps_share_memory(seed: int) -> None:
    """Two threads call the functional form on one buffer (so one often waits for the other's
    memory) while a third forks. Each step takes milliseconds: fork() must not stall for its
    full safety timeout, and the child must be able to step that buffer."""
    random.seed(seed)
    n = 1 << 21
    buffer = np.ones(n, np.float32)
    grad = np.ones(n, np.float32)
    stop = threading.Event()

    def worker() -> None:
        m, u = np.zeros(n, np.float32), np.zeros(n, np.float32)
        t = 0
        while not stop.is_set():
            t += 1
            functional.adamax([buffer], [grad], [m], [u], [t], **HYPER)

    def child() -> None:
        m, u = np.zeros(n, np.float32), np.zeros(n, np.float32)
        functional.adamax([buffer], [grad], [m], [u], [1], **HYPER)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.1)
        summary = _fork_and_check(child, 8, 3.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    result(**summary)


def fork_while_a_closure_holds_the_lock(seed: int) -> None:
    """A thread is inside ``step(closure)`` (holding the optimizer's lock) when another forks:
    the fork waits for that step, and the child's optimizer works (a fresh lock)."""
    del seed
    p = Parameter(np.ones(1 << 16, np.float32))
    p.grad = np.ones_like(p.data)
    opt = Adamax([p])
    entered = threading.Event()

    def slow_closure() -> None:
        entered.set()
        time.sleep(0.5)

    stepper = threading.Thread(target=lambda: opt.step(slow_closure))
    stepper.start()
    entered.wait()

    def child() -> None:
        assert opt.state[p]["step"] == 1, "the child saw the optimizer inside a step"
        opt.step()
        assert opt.state[p]["step"] == 2
        opt.state_dict()

    try:
        summary = _fork_and_check(child, 1, 5.0)
    finally:
        stepper.join()
    result(**summary)


# -- class 4: interrupts --------------------------------------------------------------------------


#: The process that sends the signals: outside this one, so that when a signal arrives does not
#: depend on which thread holds the GIL here.
_SENDER = """
import os, signal, sys, time
parent = int(sys.argv[1])
for line in sys.stdin:
    time.sleep(float(line))
    os.kill(parent, signal.SIGINT)
    print("fired", flush=True)
"""


class Interrupter:
    """Sends SIGINT to this process once per trial, at a random moment within ``window`` s.

    The handler raises KeyboardInterrupt, as Python's default one does, but only while a trial
    runs; a signal handled after the trial (by then it has no effect) is counted as late.
    """

    def __init__(self, seed: int, window: float) -> None:
        self.random = random.Random(seed)
        self.window = window
        self.armed = False
        self.late = 0
        signal.signal(signal.SIGINT, self.handle)
        self.sender = subprocess.Popen(
            [sys.executable, "-c", _SENDER, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def handle(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        self.late += 1

    def trial(self, action) -> bool:
        """Run ``action`` with one SIGINT landing around it; True if it was interrupted."""
        assert self.sender.stdin is not None and self.sender.stdout is not None
        interrupted = False
        self.armed = True
        try:
            self.sender.stdin.write(f"{self.random.random() * self.window}\n")
            self.sender.stdin.flush()
            action()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.armed = False
        # Unarmed: a signal that arrives after the action only counts as late.
        self.sender.stdout.readline()
        return interrupted

    def close(self) -> None:
        if self.sender.stdin is not None:
            self.sender.stdin.close()
        self.sender.wait(10)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _step_duration(action) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def interrupted_steps(seed: int) -> None:
    """SIGINT lands at random moments during ``step(closure)`` over two large parameters
    (float32 and float64), many times: in the closure (the step must then not happen), in the
    update, just as it returns. After every trial each parameter and its state must be exactly
    the reference's after the step count its state says, and both counts equal: a step is all
    or nothing, interrupts included."""
    adamax_rs.set_num_threads(1)  # longer steps: more of the signals land inside one
    rng = np.random.default_rng(seed)
    reps = 1 << 13
    patterns = [_pattern(rng, 64, reps, dt) for dt in (np.float32, np.float64)]
    grads = [_pattern(rng, 64, reps, dt) for dt in (np.float32, np.float64)]
    params = [Parameter(full.copy()) for _, full in patterns]
    opt = Adamax(params, lr=1e-2)

    def closure() -> None:
        for p, (_, g) in zip(params, grads):
            p.grad = g  # the same arrays each time
        total = 0
        for i in range(20000):  # Python work, where a signal may land
            total += i

    window = 1.5 * _step_duration(lambda: opt.step(closure))
    interrupter = Interrupter(seed, window)
    ref = ReferenceAdamax([b for b, _ in patterns], **HYPER)
    ref.step([b for b, _ in grads])
    trajectory = [[a.copy() for a in ref.params]]
    moments = [[(s[1].copy(), s[2].copy()) for s in ref.state]]
    interrupted = 0
    trials = 100
    try:
        for _ in range(trials):
            interrupted += interrupter.trial(lambda: opt.step(closure))
            counts = {opt.state[p]["step"] for p in params}
            assert len(counts) == 1, f"an interrupt split a step: counts {counts}"
            (k,) = counts
            while len(trajectory) < k:
                ref.step([b for b, _ in grads])
                trajectory.append([a.copy() for a in ref.params])
                moments.append([(s[1].copy(), s[2].copy()) for s in ref.state])
            for i, p in enumerate(params):
                assert_tiled(p.data, trajectory[k - 1][i], f"parameter {i} after {k} steps")
                m, u = moments[k - 1][i]
                assert_tiled(opt.state[p]["exp_avg"], m, f"exp_avg {i} after {k} steps")
                assert_tiled(opt.state[p]["exp_inf"], u, f"exp_inf {i} after {k} steps")
    finally:
        interrupter.close()
    assert interrupted > 0, "no trial was interrupted: the test did not test anything"
    result(trials=trials, interrupted=interrupted, late=interrupter.late, steps=k)


def interrupted_functional_steps(seed: int) -> None:
    """SIGINT during large ``functional.adamax`` calls: after each, the arrays hold exactly the
    reference's values after some number of steps (all elements and all arrays the same)."""
    adamax_rs.set_num_threads(1)
    rng = np.random.default_rng(seed)
    reps = 1 << 14
    base_init, init = _pattern(rng, 64, reps, np.float32)
    base_grad, grad = _pattern(rng, 64, reps, np.float32)
    param, m, u = init.copy(), np.zeros_like(init), np.zeros_like(init)
    count = [0]

    def call() -> None:
        functional.adamax([param], [grad], [m], [u], [count[0] + 1], **HYPER)

    ref = ReferenceAdamax([base_init], **HYPER)
    states = [(base_init, np.zeros(64, np.float32), np.zeros(64, np.float32))]

    def state_after(k: int):
        while len(states) <= k:
            ref.step([base_grad])
            states.append((ref.params[0].copy(), ref.state[0][1].copy(), ref.state[0][2].copy()))
        return states[k]

    window = 1.5 * _step_duration(call)
    count[0] = 1
    interrupter = Interrupter(seed, window)
    interrupted = 0
    trials = 100
    try:
        for _ in range(trials):
            interrupted += interrupter.trial(call)
            if param[:64].tobytes() == state_after(count[0] + 1)[0].tobytes():
                count[0] += 1
            expected = state_after(count[0])
            for array, values, name in zip((param, m, u), expected, ("param", "exp_avg", "u")):
                assert_tiled(array, values, f"{name} after {count[0]} steps")
    finally:
        interrupter.close()
    assert interrupted > 0, "no trial was interrupted: the test did not test anything"
    result(trials=trials, interrupted=interrupted, late=interrupter.late, steps=count[0])


def first_bfloat16_array_runs_no_python_code(seed: int) -> None:
    """The first bfloat16 array a process steps goes through the functional form, beside a
    float32 one. Recognising its dtype ran Python code (numpy's ``dtype.__str__``) after the
    float32 arrays' headers were read; a profiler hook there moved the float32 parameter's
    buffer, and the update went to freed memory. A hook records every Python function called
    inside the step, and moves the buffer if one is."""
    import ml_dtypes

    from adamax_rs import _core

    rng = np.random.default_rng(seed)
    n = 4096
    init = rng.standard_normal(n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    p0, m0, u0 = init.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    p1 = np.zeros(8, ml_dtypes.bfloat16)
    g1 = np.ones(8, ml_dtypes.bfloat16)
    m1, u1 = np.zeros(8, np.float32), np.zeros(8, np.float32)
    hyper = _core.Hyperparameters(**HYPER)
    # A float32 step first: the core's one-time set-up (numpy's C API, its version check) runs
    # Python code before any header is read, and is not what this checks.
    warm = [np.zeros(4, np.float32) for _ in range(4)]
    _core.adamax_arrays(warm[:1], warm[1:2], warm[2:3], warm[3:], [1], hyperparameters=hyper)
    called: list[str] = []

    def hook(frame, event, arg):
        if event == "call":
            called.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")
            if len(called) == 1:
                p0.__setstate__((1, (n,), np.dtype(np.float32), False, init.tobytes()))

    sys.setprofile(hook)
    try:
        _core.adamax_arrays([p0, p1], [grad, g1], [m0, m1], [u0, u1], [1, 1], hyperparameters=hyper)
    finally:
        sys.setprofile(None)
    expected = reference_after([init], [grad], 1)
    assert_bits(p0, expected.params[0], "the float32 parameter")
    result(called=called)


SCENARIOS = {
    f.__name__: f
    for f in (
        first_bfloat16_array_runs_no_python_code,
        header_race,
        shared_memory_race,
        chaos_race,
        python_code_in_a_step_changes_checked_arrays,
        finalized_once_during_commit,
        write_during_step_is_kept,
        fork_mid_step,
        fork_while_functional_steps_share_memory,
        fork_while_a_closure_holds_the_lock,
        interrupted_steps,
        interrupted_functional_steps,
    )
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](int(sys.argv[2]) if len(sys.argv) > 2 else 0)
