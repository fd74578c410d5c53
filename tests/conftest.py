from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

#: Set by .ci/run. Tests of optional parts (torch, MPI) must run in CI: there a skip is a failure.
NO_SKIPS = os.environ.get("ADAMAX_RS_NO_SKIPS", "") == "1"


def _fail_if_skipped(report):
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but ADAMAX_RS_NO_SKIPS=1 makes a skip a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ADAMAX_RS_NO_SKIPS=1, report a skipped test (skip, skipif) as failed, with the
    reason. An expected failure (``xfail``) is not a skip: it stays as it is."""
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while collected (``pytest.importorskip``,
    ``pytest.skip(..., allow_module_level=True)``)."""
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.fixture
def rng():
    return np.random.default_rng(20261122)


def snapshot(optimizer, params):
    """Copies of every parameter, gradient and state array, and every hyperparameter."""
    return {
        "data": [p.data.copy() for p in params],
        "state": {
            id(p): {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
            for p, st in optimizer.state.items()
        },
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
    }


def assert_unchanged(before, optimizer, params):
    """Every parameter and state array bit for bit as in ``before``."""
    after = snapshot(optimizer, params)
    for a, b in zip(before["data"], after["data"]):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()
    assert before["state"].keys() == after["state"].keys()
    for key, st in before["state"].items():
        assert st.keys() == after["state"][key].keys()
        for name, value in st.items():
            other = after["state"][key][name]
            if isinstance(value, np.ndarray):
                assert value.tobytes() == other.tobytes()
            else:
                assert value == other
