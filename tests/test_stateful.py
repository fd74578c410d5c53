"""Random sequences of API calls give exactly what a pure-numpy reference optimizer gives."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from adamax_rs import Adamax, Parameter
from reference import DEFAULTS, adamax_reference_step

SHAPES = [(3,), (2, 2), (5,)]
DTYPES = [np.float32, np.float64, np.float32]

hyper_values = {
    "lr": st.floats(0.0, 0.5),
    "beta1": st.floats(0.0, 0.99),
    "beta2": st.floats(0.0, 0.999),
    "eps": st.sampled_from([0.0, 1e-8, 1e-3]),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.5]),
    "maximize": st.booleans(),
    "eps_inside_max": st.booleans(),
    "decoupled_weight_decay": st.booleans(),
}


class Reference:
    """Groups of arrays, per-parameter step counts, the formula from tests/reference.py."""

    def __init__(self, arrays, lr):
        self.params = [a.copy() for a in arrays]
        self.groups = [{**DEFAULTS, "lr": lr, "params": list(range(len(arrays)))}]
        self.state = {}

    def step(self, grads):
        for group in self.groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for i in group["params"]:
                if grads[i] is None:
                    continue
                t, m, u = self.state.get(
                    i, (0, np.zeros_like(self.params[i]), np.zeros_like(self.params[i]))
                )
                self.params[i], m, u = adamax_reference_step(
                    self.params[i], grads[i], m, u, t + 1, **hyper
                )
                self.state[i] = (t + 1, m, u)


class OptimizerMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1), lr=st.floats(0.001, 0.1))
    def setup(self, seed, lr):
        self.rng = np.random.default_rng(seed)
        arrays = [self.rng.standard_normal(s).astype(d) for s, d in zip(SHAPES, DTYPES)]
        self.params = [Parameter(a.copy()) for a in arrays[:2]]
        self.spare = Parameter(arrays[2].copy())
        self.opt = Adamax(self.params, lr=lr)
        self.ref = Reference(arrays, lr)
        self.ref.groups[0]["params"] = [0, 1]

    @rule(
        present=st.lists(st.booleans(), min_size=3, max_size=3),
        scale=st.sampled_from([1e-3, 1.0, 1e3]),
    )
    def step(self, present, scale):
        grads = [None] * 3
        for i, p in enumerate(self.params):
            if present[i]:
                grads[i] = (self.rng.standard_normal(p.shape) * scale).astype(p.dtype)
            p.grad = grads[i]
        self.opt.step()
        self.ref.step(grads)

    @rule(data=st.data())
    def change_hyperparameter(self, data):
        g = data.draw(st.integers(0, len(self.opt.param_groups) - 1))
        key = data.draw(st.sampled_from(sorted(hyper_values)))
        value = data.draw(hyper_values[key])
        self.opt.param_groups[g][key] = value
        self.ref.groups[g][key] = value

    @rule(set_to_none=st.booleans())
    def zero_grad(self, set_to_none):
        self.opt.zero_grad(set_to_none=set_to_none)

    @rule()
    def save_and_load_into_a_new_optimizer(self):
        sd = self.opt.state_dict()
        groups = [{"params": g["params"]} for g in self.opt.param_groups]
        fresh = Adamax(groups, lr=0.123)
        fresh.load_state_dict(sd)
        self.opt = fresh

    @precondition(lambda self: len(self.params) == 2)
    @rule(lr=st.floats(0.001, 0.2))
    def add_param_group(self, lr):
        self.opt.add_param_group({"params": [self.spare], "lr": lr})
        self.params.append(self.spare)
        self.ref.groups.append({**DEFAULTS, "lr": lr, "params": [2]})

    @invariant()
    def same_as_reference(self):
        if not hasattr(self, "opt"):
            return
        for i, p in enumerate(self.params):
            assert p.data.tobytes() == self.ref.params[i].tobytes(), f"parameter {i}"
            if i in self.ref.state:
                t, m, u = self.ref.state[i]
                state = self.opt.state[p]
                assert state["step"] == t
                assert state["exp_avg"].tobytes() == m.tobytes()
                assert state["exp_inf"].tobytes() == u.tobytes()
            else:
                assert p not in self.opt.state


OptimizerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_api_sequences_match_reference = OptimizerMachine.TestCase
