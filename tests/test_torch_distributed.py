"""DistributedDataParallel plus ZeroRedundancyOptimizer(optimizer_class=adamax_rs.torch.Adamax).

Two processes on loopback, over gloo, started as subprocesses with a timeout (a hang fails the
test, and every process is killed). The same run with ``torch.optim.Adamax`` is the reference:
parameters and the state gathered by ``consolidate_state_dict()`` must be equal bit for bit;
that state must load into a single-process ``adamax_rs.torch.Adamax`` (and into a new ZeRO
optimizer) and training must continue exactly. examples/torch_ddp_zero.py is run with torchrun.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch was built without gloo", allow_module_level=True)

from torch_training import assert_same_bits, loss_of, make_mlp  # noqa: E402

import adamax_rs.torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "torch_ddp_zero.py"
TIMEOUT = 240
WORLD = 2
STEPS = 30
KWARGS = {"lr": 0.01, "weight_decay": 0.01}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def groups(model):
    """Two groups, as lists (ZeroRedundancyOptimizer reads a group's params twice: a generator
    would leave the group empty)."""
    first, _, second, _, third = model
    return [
        {"params": [*first.parameters(), *second.parameters()]},
        {"params": list(third.parameters()), "lr": 0.02, "betas": (0.8, 0.99)},
    ]


def zero_worker(rank: int, port: int, kind: str, out: str, resume: str) -> None:
    """One rank: DDP + ZeRO training, then the gathered state saved by rank 0. With ``resume``,
    a new ZeRO optimizer first loads the state saved there and training continues from it."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        model = make_mlp()
        start = 0
        if resume:
            saved = torch.load(resume, weights_only=True)
            model.load_state_dict(saved["model"])
            start = STEPS
        ddp = DistributedDataParallel(model)
        optimizer_class = adamax_rs.torch.Adamax if kind == "adamax_rs" else torch.optim.Adamax
        zero = ZeroRedundancyOptimizer(
            groups(model), optimizer_class=optimizer_class, foreach=False, **KWARGS
        )
        local = [p for g in zero.optim.param_groups for p in g["params"]]
        assert 0 < len(local) < len(list(model.parameters())), "not sharded"
        assert isinstance(zero.optim, optimizer_class)
        if resume:
            zero.load_state_dict(saved["optimizer"])
        for step in range(start, start + STEPS):
            zero.zero_grad()
            loss_of(ddp, WORLD * step + rank, torch.float32).backward()
            zero.step()
        zero.consolidate_state_dict(to=0)
        if rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": zero.state_dict()}, out)
    finally:
        dist.destroy_process_group()


def launch(commands, timeout=TIMEOUT):
    """Run the commands at once; wait for all; kill every one (and its children) on timeout.
    Returns their outputs; a command that fails fails the test."""
    processes = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for command in commands
    ]
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            outputs.append(output)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the distributed run did not finish in {timeout} s (a hang?)")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for i, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"process {i} failed:\n{output}"
    return outputs


def run_zero(kind: str, out: Path, resume: Path | None = None) -> dict:
    port = free_port()
    code = (
        "import sys; sys.path.insert(0, {tests!r}); import test_torch_distributed as t; "
        "t.zero_worker({rank}, {port}, {kind!r}, {out!r}, {resume!r})"
    )
    launch(
        [
            [
                sys.executable,
                "-c",
                code.format(
                    tests=str(HERE), rank=rank, port=port, kind=kind, out=str(out),
                    resume=str(resume or ""),
                ),
            ]
            for rank in range(WORLD)
        ]
    )  # fmt: skip
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ZeRO runs with each optimizer class: trained, then resumed from their own checkpoint."""
    folder = tmp_path_factory.mktemp("zero")
    out = {}
    for kind in ("adamax_rs", "torch"):
        first = folder / f"{kind}.pt"
        out[kind] = run_zero(kind, first)
        out[f"{kind} resumed"] = run_zero(kind, folder / f"{kind}-resumed.pt", resume=first)
    return out


def assert_same_checkpoint(ours, theirs):
    assert ours["model"].keys() == theirs["model"].keys()
    for name in ours["model"]:
        assert_same_bits(ours["model"][name], theirs["model"][name], name)
    ours_state, theirs_state = ours["optimizer"]["state"], theirs["optimizer"]["state"]
    assert ours_state.keys() == theirs_state.keys() == set(range(6))
    for index in ours_state:
        for key in ("step", "exp_avg", "exp_inf"):
            assert_same_bits(ours_state[index][key], theirs_state[index][key], f"{index} {key}")
    for ours_group, theirs_group in zip(
        ours["optimizer"]["param_groups"], theirs["optimizer"]["param_groups"]
    ):
        for key in ("lr", "betas", "eps", "weight_decay", "maximize", "params"):
            assert ours_group[key] == theirs_group[key], key


def test_zero_with_adamax_rs_equals_zero_with_torch_bit_for_bit(runs):
    assert_same_checkpoint(runs["adamax_rs"], runs["torch"])
    assert runs["adamax_rs"]["optimizer"]["state"][0]["step"].item() == STEPS


def test_zero_resumed_from_its_gathered_state_equals_torch(runs):
    assert_same_checkpoint(runs["adamax_rs resumed"], runs["torch resumed"])
    assert runs["adamax_rs resumed"]["optimizer"]["state"][0]["step"].item() == 2 * STEPS


def test_the_gathered_state_loads_into_a_single_process_optimizer(runs):
    """The consolidated state of the ZeRO run loads into one adamax_rs.torch.Adamax (and
    torch's into one torch.optim.Adamax); both continue exactly alike."""
    pairs = []
    for kind, cls in (("adamax_rs", adamax_rs.torch.Adamax), ("torch", torch.optim.Adamax)):
        model = make_mlp()
        model.load_state_dict(runs[kind]["model"])
        opt = cls(groups(model), **KWARGS)
        opt.load_state_dict(copy.deepcopy(runs[kind]["optimizer"]))
        pairs.append((model, opt))
    (model, ours), (ref_model, ref) = pairs
    assert ours.param_groups[1]["betas"] == (0.8, 0.99)
    for step in range(STEPS, STEPS + 10):
        for m, opt in pairs:
            opt.zero_grad()
            loss_of(m, step, torch.float32).backward()
            opt.step()
    for i, (p, q) in enumerate(zip(model.parameters(), ref_model.parameters())):
        assert_same_bits(p, q, f"parameter {i}")
        for key in ("step", "exp_avg", "exp_inf"):
            assert_same_bits(ours.state[p][key], ref.state[q][key], f"parameter {i} {key}")
    assert ours.state[model[0].weight]["step"].item() == STEPS + 10


def test_the_example_runs_with_torchrun(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    assert torchrun.exists(), torchrun
    checkpoint = tmp_path / "zero.pt"
    port = free_port()
    command = [
        str(torchrun),
        "--nproc-per-node",
        str(WORLD),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        str(EXAMPLE),
        "--steps",
        "60",
        "--checkpoint",
        str(checkpoint),
    ]
    (output,) = launch([command])
    assert "rank 0: updates" in output and "rank 1: updates" in output
    found = re.search(r"held-out loss: ([0-9.]+) before, ([0-9.]+) after", output)
    assert found, output
    before, after = map(float, found.groups())
    assert after < before / 2, output
    saved = torch.load(checkpoint, weights_only=True)
    assert len(saved["optimizer"]["state"]) == 6  # every parameter's state, gathered
    model = load_example().make_model()
    model.load_state_dict(saved["model"])
    opt = adamax_rs.torch.Adamax(model.parameters())
    opt.load_state_dict(saved["optimizer"])
    assert opt.state[model[0].weight]["step"].item() == 60


def load_example():
    """examples/torch_ddp_zero.py as a module (its main runs only under torchrun)."""
    spec = importlib.util.spec_from_file_location("torch_ddp_zero", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_refuses_to_run_without_torchrun():
    env = {k: v for k, v in os.environ.items() if k != "RANK"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "torchrun --nproc-per-node 2" in done.stderr
