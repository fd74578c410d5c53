"""A plain numpy Adamax, written for the tests from the formula in the README.

It shares no code with the package: the tests compare the Rust update against it.
"""

from __future__ import annotations

from fractions import Fraction

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


def _round_to(value: Fraction, dtype) -> float:
    """``value`` rounded once to ``dtype`` (nearest, ties to even)."""
    nearest = np.float64(float(value))  # correctly rounded to float64
    if dtype == np.float64:
        return nearest
    candidate = np.float32(nearest)  # within one float32 ulp of the exact value
    best = None
    for c in (
        np.nextafter(candidate, np.float32(-np.inf)),
        candidate,
        np.nextafter(candidate, np.float32(np.inf)),
    ):
        if not np.isfinite(c):
            continue
        error = abs(Fraction(float(c)) - value)
        even = int(np.float32(c).view(np.uint32)) % 2 == 0
        key = (error, not even)
        if best is None or key < best[0]:
            best = (key, c)
    return best[1] if best is not None else candidate


def fused_multiply_add(a, b, c):
    """``a * b + c`` element-wise with a single rounding, as a hardware FMA computes it."""
    a, b, c = np.broadcast_arrays(*(np.asarray(x) for x in (a, b, c)))
    dtype = c.dtype
    out = np.empty(c.shape, dtype=dtype)
    for index in np.ndindex(c.shape):
        x, y, z = float(a[index]), float(b[index]), float(c[index])
        if all(np.isfinite((x, y, z))):
            exact = Fraction(x) * Fraction(y) + Fraction(z)
            out[index] = _round_to(exact, dtype)
        else:
            out[index] = dtype.type(x) * dtype.type(y) + dtype.type(z)
    return out


def adamax_reference_step(param, grad, exp_avg, exp_inf, t, **hyper):
    """One step on copies; returns the new ``(param, exp_avg, exp_inf)``.

    Python floats mixed with float32 arrays are rounded to float32 by numpy, exactly as the
    Rust core rounds its coefficients, so this gives the same bits for both dtypes. With
    ``eps_inside_max`` the first moment and the weight decay follow torch's CPU kernels
    (ATen's lerp and ``add(alpha=)`` are fused multiply-adds).
    """
    h = {**DEFAULTS, **hyper}
    lr, beta1, beta2, eps, wd = h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"]
    torch_order = h["eps_inside_max"]
    dtype = param.dtype.type
    g = -grad if h["maximize"] else grad.copy()
    p = param.copy()
    if wd != 0 and not h["decoupled_weight_decay"]:
        g = fused_multiply_add(dtype(wd), p, g) if torch_order else g + wd * p
    if wd != 0 and h["decoupled_weight_decay"]:
        p = p * (1 - lr * wd)
    if torch_order:
        weight = dtype(1 - beta1)
        delta = g - exp_avg
        if abs(weight) < 0.5:
            m = fused_multiply_add(weight, delta, exp_avg)
        else:
            m = fused_multiply_add(-(dtype(1) - weight), delta, g)
    else:
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
