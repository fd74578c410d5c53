"""A plain numpy Adamax, written for the tests from the formula in the README.

It shares no code with the package: the tests compare the Rust update against it.
"""

from __future__ import annotations

import numpy as np

DEFAULTS = {
    "lr": 0.002,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "maximize": False,
    "eps_inside_max": False,
    "decoupled_weight_decay": False,
}


def adamax_reference_step(param, grad, exp_avg, exp_inf, t, **hyper):
    """One step on copies; returns the new ``(param, exp_avg, exp_inf)``.

    Python floats mixed with float32 arrays are rounded to float32 by numpy, exactly as the
    Rust core rounds its coefficients, so this gives the same bits for both dtypes.
    """
    h = {**DEFAULTS, **hyper}
    lr, beta1, beta2, eps, wd = h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"]
    g = -grad if h["maximize"] else grad.copy()
    p = param.copy()
    if wd != 0 and not h["decoupled_weight_decay"]:
        g = g + wd * p
    if wd != 0 and h["decoupled_weight_decay"]:
        p = p * (1 - lr * wd)
    m = beta1 * exp_avg + (1 - beta1) * g
    if h["eps_inside_max"]:
        u = np.maximum(beta2 * exp_inf, np.abs(g) + eps)
        denominator = u
    else:
        u = np.maximum(beta2 * exp_inf, np.abs(g))
        denominator = u + eps
    p = p - (lr / (1 - beta1**t)) * m / denominator
    return p.astype(param.dtype), m.astype(param.dtype), u.astype(param.dtype)


class ReferenceAdamax:
    """Per-parameter state and step counts, for arrays (not Parameter objects)."""

    def __init__(self, arrays, **hyper):
        self.params = [a.copy() for a in arrays]
        self.hyper = hyper
        self.state = [None] * len(arrays)

    def step(self, grads, hyper=None):
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            if self.state[i] is None:
                self.state[i] = [0, np.zeros_like(self.params[i]), np.zeros_like(self.params[i])]
            st = self.state[i]
            st[0] += 1
            self.params[i], st[1], st[2] = adamax_reference_step(
                self.params[i], grad, st[1], st[2], st[0], **(hyper or self.hyper)
            )
