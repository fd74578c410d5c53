"""Train a small MLP, save a checkpoint every 10 steps, resume after a crash.

Run it, kill it at any moment (Ctrl-C, kill -9, a power cut), run it again: it goes on from
the last checkpoint and ends with the same numbers, to the bit, as a run never interrupted.
This is the README's example; test_training_checkpoint.py runs it and kills it.
"""

import os
import sys

import numpy as np

from adamax_rs import Adamax, Parameter, load_training_checkpoint, save_training_checkpoint
from adamax_rs.lr_scheduler import CosineAnnealingLR

path = sys.argv[1] if len(sys.argv) > 1 else "training.safetensors"
steps, batch = 300, 32

# Data: a noisy linear function, the same in every run.
data = np.random.default_rng(0)
x = data.standard_normal((1024, 16), dtype=np.float32)
y = x @ data.standard_normal((16, 1), dtype=np.float32)
y += 0.1 * data.standard_normal((1024, 1), dtype=np.float32)

# A two-layer MLP, its optimizer and schedule, and the generator that draws the batches.
init = np.random.default_rng(1)
w1 = Parameter(0.25 * init.standard_normal((16, 32), dtype=np.float32))
b1 = Parameter(np.zeros(32, np.float32))
w2 = Parameter(0.18 * init.standard_normal((32, 1), dtype=np.float32))
b2 = Parameter(np.zeros(1, np.float32))
optimizer = Adamax([w1, b1, w2, b2], lr=0.03)
scheduler = CosineAnnealingLR(optimizer, T_max=steps)
batches = np.random.default_rng(2)

start = 0
if os.path.exists(path):
    # Parameters (in place), optimizer and schedule; and our own values, as saved.
    extra = load_training_checkpoint(optimizer, path, scheduler=scheduler)
    start = extra["step"]
    batches.bit_generator.state = extra["batches"]
    print(f"resumed at step {start}", flush=True)

for step in range(start, steps):
    rows = batches.integers(0, len(x), batch)
    hidden = np.maximum(x[rows] @ w1.data + b1.data, 0)
    error = hidden @ w2.data + b2.data - y[rows]
    # Gradients of the mean squared error.
    grad_out = 2 * error / batch
    w2.grad, b2.grad = hidden.T @ grad_out, grad_out.sum(0)
    grad_hidden = (grad_out @ w2.data.T) * (hidden > 0)
    w1.grad, b1.grad = x[rows].T @ grad_hidden, grad_hidden.sum(0)
    optimizer.step()
    scheduler.step()
    if (step + 1) % 10 == 0:
        # One file, replaced atomically: a crash leaves the previous checkpoint or this one.
        save_training_checkpoint(
            optimizer,
            path,
            scheduler=scheduler,
            extra={"step": step + 1, "batches": batches.bit_generator.state},
        )
        print(f"step {step + 1}: loss {float(np.mean(error**2)):.5f}", flush=True)
