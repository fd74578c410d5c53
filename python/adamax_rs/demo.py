"""`python -m adamax_rs demo`: train a small network on two spirals, in plain numpy.

The forward and backward passes are written out by hand; the optimizer is adamax_rs with a
cosine learning-rate schedule. The same training then runs again with the numpy baseline
optimizer (same schedule), to show that the losses are the same and how much time the
optimizer step takes in each. On a terminal a progress bar shows (when ``tqdm`` is
installed); otherwise, as in a log file, only a plain line every ``--every`` epochs.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

from ._cli_values import finite_float, integer_at_least, seed
from ._plot import prepare_plot, save_figure
from .adamax import Adamax
from .lr_scheduler import CosineAnnealingLR
from .numpy_adamax import NumpyAdamax
from .parameter import Parameter

#: The --state-dtype choices and the Adamax options each stands for: each compressed state as
#: by default (rounded stochastically), and with ``stochastic_rounding=False``.
STATE_DTYPES: dict[str, dict[str, Any]] = {
    "float32": {},
    "bfloat16": {"state_dtype": "bfloat16"},
    "bfloat16-nearest": {"state_dtype": "bfloat16", "stochastic_rounding": False},
    "8bit": {"state_dtype": "8bit"},
    "8bit-directed": {"state_dtype": "8bit", "stochastic_rounding": False},
}


def two_spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on two interleaved spirals (inputs float32, labels 0/1)."""
    half = n // 2
    t = np.sqrt(rng.uniform(0.0, 1.0, half)) * 3.0 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3.0 * np.pi)
    x = np.concatenate([arm, -arm]) + rng.normal(0.0, noise, (2 * half, 2))
    y = np.concatenate([np.zeros(half, np.int64), np.ones(half, np.int64)])
    return x.astype(np.float32), y


class MLP:
    """A multi-layer perceptron with tanh hidden layers and a softmax output."""

    def __init__(self, sizes: list[int], rng: np.random.Generator) -> None:
        self.params: list[Parameter] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            scale = np.sqrt(1.0 / n_in)
            self.params.append(
                Parameter(rng.normal(0.0, scale, (n_in, n_out)).astype(np.float32), name=f"W{i}")
            )
            self.params.append(Parameter(np.zeros(n_out, np.float32), name=f"b{i}"))

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on a batch; sets every parameter's ``grad``."""
        activations = [x]
        h = x
        layers = len(self.params) // 2
        for i in range(layers):
            w, b = self.params[2 * i].data, self.params[2 * i + 1].data
            z = h @ w + b
            h = np.tanh(z) if i < layers - 1 else z
            activations.append(h)
        logits = h - h.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        n = len(y)
        loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
        accuracy = float((probs.argmax(axis=1) == y).mean())
        delta = probs
        delta[np.arange(n), y] -= 1.0
        delta /= n
        for i in reversed(range(layers)):
            a_in = activations[i]
            self.params[2 * i].grad = (a_in.T @ delta).astype(np.float32)
            self.params[2 * i + 1].grad = delta.sum(axis=0).astype(np.float32)
            if i > 0:
                delta = (delta @ self.params[2 * i].data.T) * (1.0 - activations[i] ** 2)
        return loss, accuracy


def train(
    make_optimizer: Callable[[list[Parameter]], Any],
    args: argparse.Namespace,
    schedule: Callable[[Any, int], None],
    report: Callable[[int, float, float], None] | None = None,
) -> dict[str, Any]:
    """Train from the seed in ``args``; return the losses, final accuracy and step time.

    ``schedule(optimizer, epoch)`` runs after each epoch (it sets the learning rate).
    """
    rng = np.random.default_rng(args.seed)
    x, y = two_spirals(args.samples, args.noise, rng)
    model = MLP([2] + [args.hidden] * args.layers + [2], rng)
    optimizer = make_optimizer(model.params)
    losses, step_seconds = [], 0.0
    batches = max(1, len(x) // args.batch_size)
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x))
        epoch_loss = 0.0
        for b in range(batches):
            index = order[b * args.batch_size : (b + 1) * args.batch_size]
            loss, _ = model.loss_and_grads(x[index], y[index])
            epoch_loss += loss
            started = time.perf_counter()
            optimizer.step()
            step_seconds += time.perf_counter() - started
        losses.append(epoch_loss / batches)
        schedule(optimizer, epoch)
        if report is not None:
            _, accuracy = model.loss_and_grads(x, y)
            report(epoch, losses[-1], accuracy)
    _, accuracy = model.loss_and_grads(x, y)
    return {
        "losses": losses,
        "accuracy": accuracy,
        "step_seconds": step_seconds,
        "steps": batches * args.epochs,
    }


def _on_terminal() -> bool:
    """Whether both output streams are terminals (the bar goes to stderr, lines to stdout)."""
    return all(stream is not None and stream.isatty() for stream in (sys.stdout, sys.stderr))


def _progress(total: int, quiet: bool) -> Any:
    """A tqdm bar on a terminal when tqdm is installed, else ``None``.

    Not in a log: a bar redraws itself with carriage returns, which a file keeps.
    """
    if quiet or not _on_terminal():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="epoch", leave=False, dynamic_ncols=True)


def plot_losses(path: str, ours: list[float], baseline: list[float] | None) -> None:
    """Save the loss curves to ``path`` (PNG); :class:`~adamax_rs._plot.PlotError` if not."""
    plt = prepare_plot(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(ours) + 1), ours, label="adamax_rs.Adamax")
    if baseline is not None:
        ax.plot(range(1, len(baseline) + 1), baseline, "--", label="numpy baseline")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_yscale("log")
    ax.set_title("Two spirals, numpy MLP")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    print(f"loss curve written to {path}")


#: The defaults of the spirals task's options. The character-level model (``--task charlm``)
#: has its own fixed sizes and takes none of them.
DEFAULTS: dict[str, Any] = {
    "epochs": 100,
    "samples": 2000,
    "noise": 0.02,
    "hidden": 64,
    "layers": 2,
    "batch_size": 64,
    "lr": 0.02,
    "every": 10,
}


#: ``--beta2``'s default, torch's.
BETA2_DEFAULT = 0.999


def options_error(args: argparse.Namespace) -> str | None:
    """Why these options do not go together, or ``None``: options that the chosen run would
    ignore are refused rather than silently dropped."""
    if args.task == "charlm":
        given = [name for name, value in DEFAULTS.items() if getattr(args, name) != value]
        if given:
            names = ", ".join("--" + name.replace("_", "-") for name in given)
            return (
                f"--task charlm trains a fixed model (1500 steps, lr 0.01, 256 hidden units) "
                f"and takes no {names}; it takes --seed, --beta2, --state-dtype and --plot"
            )
    if args.distributed and (
        args.task != "spirals"
        or args.state_dtype != "float32"
        or args.beta2 != BETA2_DEFAULT
        or args.plot
    ):
        return (
            "--distributed trains the spirals with float32 state and the default betas, and "
            "plots nothing (ShardedAdamax); leave out --task, --state-dtype, --beta2 and --plot"
        )
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's command-line options."""
    parser.add_argument(
        "--epochs",
        type=integer_at_least(1),
        default=DEFAULTS["epochs"],
        help="passes over the data (default %(default)s)",
    )
    parser.add_argument(
        "--samples",
        type=integer_at_least(2),
        default=DEFAULTS["samples"],
        help="points in the data set (default %(default)s)",
    )
    parser.add_argument(
        "--noise",
        type=finite_float(at_least=0.0),
        default=DEFAULTS["noise"],
        help="noise added to the spirals (default %(default)s)",
    )
    parser.add_argument(
        "--hidden",
        type=integer_at_least(1),
        default=DEFAULTS["hidden"],
        help="units per hidden layer (default %(default)s)",
    )
    parser.add_argument(
        "--layers",
        type=integer_at_least(1),
        default=DEFAULTS["layers"],
        help="hidden layers (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=integer_at_least(1),
        default=DEFAULTS["batch_size"],
        help="examples per step (default %(default)s)",
    )
    parser.add_argument(
        "--lr",
        type=finite_float(above=0.0),
        default=DEFAULTS["lr"],
        help="initial Adamax learning rate (default %(default)s)",
    )
    parser.add_argument(
        "--beta2",
        type=finite_float(at_least=0.0, below=1.0),
        default=BETA2_DEFAULT,
        help="decay rate of the infinity norm exp_inf (default %(default)s)",
    )
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default %(default)s)")
    parser.add_argument(
        "--every",
        type=integer_at_least(1),
        default=DEFAULTS["every"],
        help="print progress every N epochs (default %(default)s)",
    )
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the run with the numpy baseline"
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="save the loss curve as a PNG (needs matplotlib, checked before training)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    parser.add_argument(
        "--task",
        choices=["spirals", "charlm"],
        default="spirals",
        help="spirals (default), or charlm: a character-level language model (harder; fixed "
        "sizes, and every state dtype unless --state-dtype names one)",
    )
    parser.add_argument(
        "--state-dtype",
        choices=list(STATE_DTYPES) + ["all"],
        default="float32",
        help="the optimizer's state: float32 (default), bfloat16 and 8bit (rounded "
        "stochastically, as by default), bfloat16-nearest and 8bit-directed (with "
        "stochastic_rounding=False), or all; other than float32, the run is compared with "
        "float32 state "
        "(loss ratios, --plot curves)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="train data-parallel on the ranks of mpiexec, with ShardedAdamax (needs mpi4py)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code.

    Raises
    ------
    PlotError
        If ``--plot`` was given and the plot cannot be made (checked before training).
    """
    problem = options_error(args)
    if problem is not None:
        print(f"python -m adamax_rs demo: error: {problem}", file=sys.stderr)
        return 2
    if args.distributed:
        from .distributed.demo import main as distributed_main

        return distributed_main(args)
    if args.plot:
        prepare_plot(args.plot)
    if args.task == "charlm" or args.state_dtype != "float32":
        return compare_state_dtypes(args)
    print(
        f"Training a {args.layers}x{args.hidden} MLP on {args.samples} points of two spirals "
        f"with adamax_rs.Adamax(lr={args.lr}) and a cosine schedule, {args.epochs} epochs"
    )
    bar = _progress(args.epochs, args.quiet)
    rates: list[float] = []

    def report(epoch: int, loss: float, accuracy: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", accuracy=f"{accuracy:.1%}")
        if not args.quiet and (epoch == 1 or epoch % args.every == 0 or epoch == args.epochs):
            line = f"  epoch {epoch:4d}   loss {loss:.4f}   accuracy {accuracy:6.1%}"
            if bar is None:
                print(line, flush=True)
            else:
                bar.write(line)

    schedulers: dict[int, CosineAnnealingLR] = {}

    def cosine(optimizer: Any, epoch: int) -> None:
        scheduler = schedulers.setdefault(id(optimizer), CosineAnnealingLR(optimizer, args.epochs))
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])

    betas = (0.9, args.beta2)
    ours = train(lambda ps: Adamax(ps, lr=args.lr, betas=betas), args, cosine, report)
    if bar is not None:
        bar.close()
    per_step = ours["step_seconds"] / ours["steps"] * 1e6
    print(
        f"final: loss {ours['losses'][-1]:.4f}, accuracy {ours['accuracy']:.1%}, "
        f"optimizer {per_step:.1f} us/step over {ours['steps']} steps"
    )
    base = None
    if not args.no_compare:

        def replay(optimizer: Any, epoch: int) -> None:
            optimizer.lr = rates[epoch - 1]  # the schedule adamax_rs followed

        base = train(lambda ps: NumpyAdamax(ps, lr=args.lr, betas=betas), args, replay)
        same = np.array_equal(np.array(ours["losses"]), np.array(base["losses"]))
        base_step = base["step_seconds"] / base["steps"] * 1e6
        print(
            f"numpy baseline: loss {base['losses'][-1]:.4f}, accuracy {base['accuracy']:.1%}, "
            f"optimizer {base_step:.1f} us/step; losses identical: {same}; "
            f"adamax_rs step {base_step / per_step:.1f}x faster"
        )
    if args.plot:
        plot_losses(args.plot, ours["losses"], None if base is None else base["losses"])
    # (One epoch has nothing to compare with.)
    if len(ours["losses"]) > 1 and not ours["losses"][-1] < ours["losses"][0]:
        print("the loss did not fall: something is wrong")
        return 1
    return 0


def compare_state_dtypes(args: argparse.Namespace) -> int:
    """Train the task with float32 state and with the compressed state(s) asked for, from the
    same seed; print each final loss and its ratio to float32's, plot the curves."""
    from .demo_charlm import train_charlm

    kinds = list(STATE_DTYPES) if args.state_dtype in ("all", "float32") else ["float32"]
    width = max(len(kind) for kind in STATE_DTYPES)  # the labels in one column
    if args.state_dtype not in kinds and args.state_dtype != "all":
        kinds.append(args.state_dtype)
    runs: dict[str, list[float]] = {}
    finals: dict[str, float] = {}
    for kind in kinds:
        options = STATE_DTYPES[kind]

        def make(params: list[Parameter], lr: float, options: Any = options) -> Adamax:
            return Adamax(params, lr=lr, betas=(0.9, args.beta2), **options)

        started = time.perf_counter()
        if args.task == "charlm":
            result = train_charlm(lambda ps: make(ps, 0.01), seed=args.seed)
            runs[kind], finals[kind] = result["losses"], result["held_out"]
            what = "held-out loss"
        else:

            def cosine(optimizer: Any, epoch: int, made: dict[int, Any] = {}) -> None:  # noqa: B006
                # One scheduler per optimizer, made at its first epoch.
                made.setdefault(id(optimizer), CosineAnnealingLR(optimizer, args.epochs)).step()

            result = train(lambda ps: make(ps, args.lr), args, cosine)
            runs[kind], finals[kind] = result["losses"], result["losses"][-1]
            what = "final training loss"
        seconds = time.perf_counter() - started
        ratio = finals[kind] / finals["float32"]
        print(
            f"{args.task}, {kind:>{width}} state: {what} {finals[kind]:.4f} "
            f"({ratio:.3f}x float32's, {ratio - 1:+.1%}), {seconds:.1f} s",
            flush=True,
        )
    if args.plot:
        plt = prepare_plot(args.plot)
        fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.5), sharey=True)
        for ax, (kind, losses) in zip(np.atleast_1d(axes), runs.items()):
            ax.plot(runs["float32"], color="0.6", label="float32 state")
            if kind != "float32":
                ax.plot(losses, label=f"{kind} state")
            ax.set_title(f"{kind}: {finals[kind]:.4f}")
            ax.set_yscale("log")
            ax.set_xlabel("epoch" if args.task == "spirals" else "step / 50")
            ax.legend()
        np.atleast_1d(axes)[0].set_ylabel("mean training loss")
        fig.suptitle(f"{args.task}: loss by optimizer state dtype")
        fig.tight_layout()
        save_figure(fig, args.plot)
        print(f"loss curves written to {args.plot}")
    return 0 if all(np.isfinite(list(finals.values()))) else 1
