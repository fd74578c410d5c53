"""adamax_rs.torch.Adamax and Python threads, signals and fork; and torch stays optional.

The step runs in Rust with the GIL released; optimizers on different threads step in parallel
and give torch's results; one optimizer shared by threads counts every step; an interrupt lands
between steps, never inside one; ``import adamax_rs`` does not import torch.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

torch = pytest.importorskip("torch")

from torch_training import assert_same_training, loss_of, make_mlp  # noqa: E402

import adamax_rs  # noqa: E402
from adamax_rs.torch import Adamax  # noqa: E402

nn = torch.nn
BIG = 1 << 23  # 8M float32 elements: a step of some milliseconds


def run_together(*targets, timeout=120):
    """Runs each target on a thread of its own, released together, and fails on any error one
    raised, or if one is still running after ``timeout`` seconds (a step that kept its claims)."""
    start = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target):
        try:
            start.wait()
            target()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=run, args=(t,)) for t in targets]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=timeout)
    assert not any(w.is_alive() for w in workers), "a thread is still running"
    assert errors == []


def test_import_adamax_rs_does_not_import_torch():
    code = (
        "import sys, adamax_rs, adamax_rs.optimizer, adamax_rs.lr_scheduler\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
        "import adamax_rs.torch\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_other_python_threads_run_while_a_step_is_in_rust():
    p = nn.Parameter(torch.ones(BIG))
    p.grad = torch.ones(BIG)
    opt = Adamax([p])
    opt.step()
    ticks: list[float] = []
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    adamax_rs.set_num_threads(1)  # a longer step, so that the window is easy to see
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
    assert max(b - a for a, b in windows) > 3e-3, "step too short to tell"
    assert inside > 0
    assert opt.state[p]["step"].item() == 6


def test_optimizers_on_two_threads_train_as_torch_does_serially():
    """Two models, each trained by its own optimizer on its own thread (forward, backward and
    step), against torch.optim.Adamax training copies of them one after the other."""
    models = [make_mlp(seed=s) for s in (1, 2)]
    copies = [make_mlp(seed=s) for s in (1, 2)]
    ours = [Adamax(m.parameters(), lr=0.01, weight_decay=0.01) for m in models]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def train(model, opt):
        try:
            start.wait()
            for step in range(40):
                opt.zero_grad()
                loss_of(model, step, torch.float32).backward()
                opt.step()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=train, args=pair) for pair in zip(models, ours)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    for model, opt in zip(copies, ours):
        ref = torch.optim.Adamax(model.parameters(), lr=0.01, weight_decay=0.01)
        for step in range(40):
            ref.zero_grad()
            loss_of(model, step, torch.float32).backward()
            ref.step()
        assert_same_training(opt, ref, "after 40 steps")


def test_large_steps_on_two_threads_over_disjoint_parameters():
    """Large tensors (each step uses the thread pool) on two threads at once."""
    generator = torch.Generator().manual_seed(0)
    inits = [torch.randn(BIG // 4, generator=generator) for _ in range(2)]
    grads = [[torch.randn(BIG // 4, generator=generator) for _ in range(4)] for _ in range(2)]
    params = [nn.Parameter(x.clone()) for x in inits]
    opts = [Adamax([p], lr=0.01) for p in params]
    start = threading.Barrier(2)

    def run(i):
        start.wait()
        for g in grads[i]:
            params[i].grad = g
            opts[i].step()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(2):
        q = nn.Parameter(inits[i].clone())
        ref = torch.optim.Adamax([q], lr=0.01)
        for g in grads[i]:
            q.grad = g
            ref.step()
        assert_same_training(opts[i], ref, f"thread {i}")


def test_one_optimizer_shared_by_threads_counts_every_step():
    """Four threads step one optimizer; with a fixed gradient the order of the steps does not
    matter, so the result is torch's after all the steps, one after the other."""
    init = torch.randn(BIG // 8, generator=torch.Generator().manual_seed(3))
    grad = torch.randn(BIG // 8, generator=torch.Generator().manual_seed(4))
    small_init, small_grad = torch.randn(7), torch.randn(7)
    params = [nn.Parameter(init.clone()), nn.Parameter(small_init.clone())]
    params[0].grad, params[1].grad = grad, small_grad
    opt = Adamax(params, lr=1e-3)

    def work():
        for k in range(6):
            opt.step()
            if k % 2:
                opt.state_dict()

    run_together(work, work, work, work)
    refs = [nn.Parameter(init.clone()), nn.Parameter(small_init.clone())]
    refs[0].grad, refs[1].grad = grad, small_grad
    ref = torch.optim.Adamax(refs, lr=1e-3)
    for _ in range(24):
        ref.step()
    assert_same_training(opt, ref, "after 24 steps")


def test_two_optimizers_sharing_one_step_tensor_on_two_threads_count_every_step():
    """A state built by hand to share one ``step`` tensor between two optimizers: their steps
    are serialised on it, and each reads the count only once it holds it, so no step is lost
    (read before, both would count the same step: 21 here instead of 41)."""
    params = [nn.Parameter(torch.zeros(BIG // 8)) for _ in range(2)]
    for p in params:
        p.grad = torch.ones(BIG // 8)
    opts = [Adamax([p], lr=1e-3) for p in params]
    for opt in opts:
        opt.step()
    shared = opts[0].state[params[0]]["step"]
    opts[1].state[params[1]]["step"] = shared

    def twenty_steps(opt):
        def run():
            for _ in range(20):
                opt.step()

        return run

    run_together(*(twenty_steps(opt) for opt in opts))
    assert shared.item() == 41
    assert opts[1].state[params[1]]["step"] is shared


def test_a_count_refused_while_waiting_for_another_threads_step_changes_nothing():
    """B shares A's count on its first parameter and has a count that is not one on its second:
    B's steps wait for A's (often: A's steps are long and release the GIL), then are refused
    under the claims, changing nothing and releasing them, so A counts on undisturbed."""
    a, b, b_small = (nn.Parameter(torch.zeros(n)) for n in (BIG // 8, BIG // 8, 5))
    for p in (a, b, b_small):
        p.grad = torch.ones_like(p)
    opt_a, opt_b = Adamax([a], lr=1e-3), Adamax([b, b_small], lr=1e-3)
    opt_a.step()
    opt_b.step()
    shared = opt_a.state[a]["step"]
    opt_b.state[b]["step"] = shared
    opt_b.state[b_small]["step"] = torch.tensor(float("nan"))
    before = [t.clone() for t in (b, b_small)]
    before += [opt_b.state[p][k].clone() for p in (b, b_small) for k in ("exp_avg", "exp_inf")]
    refusals: list[str] = []

    def step_a():
        for _ in range(20):
            opt_a.step()

    def step_b():
        for _ in range(20):
            with pytest.raises(ValueError) as refused:
                opt_b.step()
            refusals.append(str(refused.value))

    run_together(step_a, step_b)
    assert len(refusals) == 20
    assert all(r.startswith("group 0, parameter 1: its state's 'step' must be") for r in refusals)
    assert shared.item() == 21
    after = [b, b_small]
    after += [opt_b.state[p][k] for p in (b, b_small) for k in ("exp_avg", "exp_inf")]
    for old, new in zip(before, after):
        assert torch.equal(old, new)
    assert opt_b.state[b_small]["step"].isnan()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_an_interrupt_lands_between_steps_never_inside():
    """KeyboardInterrupt raised by a timer, again and again, while steps run: at every
    interrupt the parameters and the step counts must agree, as torch's after as many steps
    (the gradients are fixed, so the result depends only on the number of steps)."""
    generator = torch.Generator().manual_seed(5)
    shapes = [(20_000,), (300, 7), (5,)]
    inits = [torch.randn(s, generator=generator) for s in shapes]
    grads = [torch.randn(s, generator=generator) for s in shapes]
    params = [nn.Parameter(x.clone()) for x in inits]
    for p, g in zip(params, grads):
        p.grad = g
    opt = Adamax(params, lr=0.01, weight_decay=0.1)

    armed = [False]
    delays = random.Random(0)

    def interrupt(signum, frame):
        # The next one after a random delay, so that interrupts land all over the step.
        signal.setitimer(signal.ITIMER_REAL, delays.uniform(1e-4, 4e-3))
        # Only around opt.step(), once per arming: the loop itself must not be interrupted.
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupts = 0
    deadline = time.monotonic() + 2.0
    try:
        signal.setitimer(signal.ITIMER_REAL, 1e-3)
        while time.monotonic() < deadline and interrupts < 300:
            try:
                armed[0] = True
                opt.step()
                armed[0] = False
            except KeyboardInterrupt:
                interrupts += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert interrupts > 10, "too few interrupts to tell"
    counts = {opt.state[p]["step"].item() for p in params if p in opt.state}
    steps = int(counts.pop()) if len(counts) == 1 else pytest.fail(f"step counts {counts}")
    assert steps > 10, "too few steps completed to tell"
    refs = [nn.Parameter(x.clone()) for x in inits]
    for q, g in zip(refs, grads):
        q.grad = g
    ref = torch.optim.Adamax(refs, lr=0.01, weight_decay=0.1)
    for _ in range(steps):
        ref.step()
    assert_same_training(opt, ref, f"after {steps} steps and {interrupts} interrupts")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_steps_while_the_parent_was_stepping_on_another_thread():
    p = nn.Parameter(torch.ones(BIG // 2))
    p.grad = torch.ones(BIG // 2)
    opt = Adamax([p])
    stop = threading.Event()

    def keep_stepping():
        while not stop.is_set():
            opt.step()

    stepper = threading.Thread(target=keep_stepping)
    stepper.start()
    try:
        time.sleep(0.05)
        pid = os.fork()
        if pid == 0:  # the child: its copy of the optimizer lies between two steps
            try:
                before = opt.state[p]["step"].item()
                opt.step()
                os._exit(0 if opt.state[p]["step"].item() == before + 1 else 1)
            except BaseException:  # noqa: BLE001
                os._exit(2)
    finally:
        stop.set()
        stepper.join()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in its step")


CTRL_C_AFTER_THE_UPDATE = """
import json, sys, torch
from adamax_rs.torch import Adamax
p = torch.nn.Parameter(torch.ones(3))
p.grad = torch.ones(3)
opt = Adamax([p], lr=0.1)
held = (p * p).sum()  # a graph that saved p: backward must refuse once p changes in place
before, version = p.detach().clone(), p._version
after_update = []
def ctrl_c(frame, event, arg):
    # A signal handler runs at the next bytecode. Model a Ctrl-C arriving at the worst moment:
    # raise KeyboardInterrupt in the first Python function that runs once the parameter changed.
    if event == "call" and not after_update and not torch.equal(p.detach(), before):
        after_update.append({"function": frame.f_code.co_name,
                             "version_moved": p._version > version})
        raise KeyboardInterrupt
sys.setprofile(ctrl_c)
try:
    opt.step()
    raised = False
except KeyboardInterrupt:
    raised = True
finally:
    sys.setprofile(None)
try:
    held.backward()
    backward_refused = False
except RuntimeError as e:
    backward_refused = "modified by an inplace operation" in str(e)
report = {
    "raised": raised,
    "after_update": after_update,
    "param": p.detach().tolist(),
    "state": {k: v.tolist() for k, v in opt.state.get(p, {}).items()},
    "version_moved": p._version > version,
    "backward_refused": backward_refused,
}
opt.step()
report["step_after_another"] = opt.state[p]["step"].item()
print(json.dumps(report))
"""


def run_ctrl_c_after_the_update():
    """One step under a profile hook that raises KeyboardInterrupt in the first Python function
    called after the parameter changed (in a fresh process: the hook sees every call)."""
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_AFTER_THE_UPDATE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_an_interrupt_after_the_update_keeps_the_state_it_committed():
    report = run_ctrl_c_after_the_update()
    assert report["param"] != [1.0, 1.0, 1.0]  # the hook interrupts only after the update
    assert report["state"]["step"] == 1
    assert report["state"]["exp_avg"] == pytest.approx([0.1] * 3)
    assert report["step_after_another"] == 2


def test_an_interrupt_after_the_update_still_tells_autograd():
    # The version counter moves before any Python code runs after the update (the step calls
    # torch's C function, not its Python wrapper), so autograd sees the in-place change even
    # when Ctrl-C lands at the first moment it can.
    report = run_ctrl_c_after_the_update()
    assert all(call["version_moved"] for call in report["after_update"]), report
    assert report["version_moved"]
    assert report["backward_refused"]
