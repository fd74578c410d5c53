"""`NumpyAdamax`: the same optimizer written with numpy ufuncs, as a baseline to compare with.

It computes the formula of :class:`adamax_rs.Adamax` in the same order of operations (so
it gives the same numbers), in place, one ufunc call per operation. The demo and the
benchmark use it to show what the Rust core saves; the test suite has its own, separate
reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["NumpyAdamax"]


class NumpyAdamax:
    """Adamax over objects with ``.data`` and ``.grad``, in numpy.

    Parameters
    ----------
    params : sequence of Parameter
        The parameters to update.
    lr, betas, eps, weight_decay
        As in :class:`adamax_rs.Adamax` (coupled weight decay, eps in the denominator).
    """

    def __init__(
        self,
        params: Sequence[Any],
        lr: float = 0.002,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = list(params)
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.weight_decay = weight_decay
        self.state: dict[int, list[Any]] = {}

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for p in self.params:
            grad = p.grad
            if grad is None:
                continue
            st = self.state.get(id(p))
            if st is None:
                st = self.state[id(p)] = [0, np.zeros_like(p.data), np.zeros_like(p.data)]
            st[0] += 1
            step, m, u = st
            if self.weight_decay != 0:
                grad = grad + self.weight_decay * p.data
            m *= self.beta1
            m += (1 - self.beta1) * grad
            u *= self.beta2
            np.maximum(u, np.abs(grad), out=u)
            denominator = u + self.eps
            update = (self.lr / (1 - self.beta1**step)) * m
            update /= denominator
            p.data -= update

    def zero_grad(self) -> None:
        """Set every gradient to ``None``."""
        for p in self.params:
            p.grad = None
