"""Threads: the GIL is released, optimizers step in parallel, sharing is safe, fork works."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import adamax_rs
from adamax_rs import Adamax, Parameter
from reference import ReferenceAdamax

BIG = 1 << 22  # 4M float32 elements: well above the size that goes to the thread pool


def test_other_python_threads_run_while_a_step_is_in_rust():
    p = Parameter(np.ones(BIG * 4, np.float32))
    p.grad = np.ones_like(p.data)
    opt = Adamax([p])
    opt.step()
    ticks: list[float] = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    adamax_rs.set_num_threads(1)  # a longer step, so the window is easy to see
    counter = threading.Thread(target=count)
    counter.start()
    try:
        windows = []
        for _ in range(5):
            started = time.perf_counter()
            opt.step()
            windows.append((started, time.perf_counter()))
    finally:
        stop.set()
        counter.join()
        adamax_rs.set_num_threads(0)
    # With the GIL held for the whole step, the counter could not tick inside a step.
    inside = sum(1 for t in ticks for a, b in windows if a + 1e-3 < t < b - 1e-3)
    longest = max(b - a for a, b in windows)
    assert longest > 3e-3, "step too short to tell"
    assert inside > 0


def test_optimizers_on_many_threads_match_serial_runs(rng):
    count = 4
    inits = [rng.standard_normal(BIG // 4).astype(np.float32) for _ in range(count)]
    grads = [
        [rng.standard_normal(BIG // 4).astype(np.float32) for _ in range(5)] for _ in range(count)
    ]

    def train(i, out):
        p = Parameter(inits[i].copy())
        opt = Adamax([p], lr=0.01, weight_decay=0.1)
        for g in grads[i]:
            p.grad = g
            opt.step()
        out[i] = p.data

    threaded: dict[int, np.ndarray] = {}
    workers = [threading.Thread(target=train, args=(i, threaded)) for i in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(count):
        ref = ReferenceAdamax([inits[i]], lr=0.01, weight_decay=0.1)
        for g in grads[i]:
            ref.step([g])
        np.testing.assert_array_equal(threaded[i], ref.params[0])


def test_one_optimizer_shared_by_threads_counts_every_step(rng):
    params = [Parameter(rng.standard_normal(n).astype(np.float32)) for n in (BIG // 2, 100, 7)]
    opt = Adamax(params, lr=1e-3)
    calls_per_thread, threads = 10, 4
    errors: list[BaseException] = []

    def work(seed):
        local = np.random.default_rng(seed)
        try:
            for k in range(calls_per_thread):
                with opt._lock:  # set grads and step as one unit, as a training loop would
                    for p in params:
                        p.grad = local.standard_normal(p.shape).astype(np.float32)
                    opt.step()
                if k % 3 == 0:
                    opt.state_dict()
                    opt.zero_grad()
        except BaseException as e:  # noqa: BLE001 - the test reports any failure
            errors.append(e)

    workers = [threading.Thread(target=work, args=(s,)) for s in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert all(opt.state[p]["step"] == calls_per_thread * threads for p in params)


def test_two_optimizers_sharing_a_parameter_on_two_threads_are_serialised(rng):
    # Two Parameter objects over one array, each in its own optimizer, stepped from two
    # threads: the Rust core runs steps that share memory one after the other. Without weight
    # decay an update does not depend on the parameter, so any serial order gives the sum of
    # the same updates, up to the rounding of the additions.
    x = rng.standard_normal(BIG)
    array = x.copy()
    a, b = Parameter(array), Parameter(array)
    a.grad, b.grad = rng.standard_normal(BIG), rng.standard_normal(BIG)
    opts = [Adamax([a], lr=0.01), Adamax([b], lr=0.02)]
    start = threading.Barrier(2)

    def run(opt):
        start.wait()
        for _ in range(10):
            opt.step()

    workers = [threading.Thread(target=run, args=(opt,)) for opt in opts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = x.copy()
    for grad, lr in ((a.grad, 0.01), (b.grad, 0.02)):
        ref = ReferenceAdamax([np.zeros(BIG)], lr=lr)
        for _ in range(10):
            ref.step([grad])
        total += ref.params[0]
    np.testing.assert_allclose(array, total, rtol=1e-12, atol=1e-12)
    assert opts[0].state[a]["step"] == opts[1].state[b]["step"] == 10


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_step_in_a_forked_child_completes():
    p = Parameter(np.ones(BIG, np.float32))
    p.grad = np.ones_like(p.data)
    opt = Adamax([p])
    opt.step()  # the parent's pool is running now
    pid = os.fork()
    if pid == 0:  # child: a large step must not wait for the parent's (absent) threads
        try:
            opt.step()
            os._exit(0 if opt.state[p]["step"] == 2 else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in its step")


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip("POSIX threads and fork")
