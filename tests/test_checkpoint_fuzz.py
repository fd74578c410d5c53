"""Fuzzing checkpoint loading with hypothesis, on a fixed budget.

Two properties, over both formats:

- byte-level edits (set, insert, delete, truncate) of a good file give a ValueError that
  changes nothing, or a load identical to the good file's;
- any JSON value put anywhere in the metadata documents (checksums recomputed, so the value
  reaches the checks behind them) gives a ValueError that changes nothing, or a load after
  which the optimizer steps without error.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from checkpoint_snapshot import assert_same, take
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors_layout import rewrite
from test_checkpoint_hostile import outcome, v1_contents, write_v1

from adamax_rs import (
    Adamax,
    Parameter,
    load_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from adamax_rs.lr_scheduler import StepLR

BUDGET = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: a fixed budget, no flaky CI
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def make():
    params = [
        Parameter(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)),
        Parameter(np.array([0.5 + 1j, -2j], np.complex64)),
    ]
    opt = Adamax([{"params": params[:1], "tag": "a"}, {"params": params[1:], "lr": 0.01}])
    scheduler = StepLR(opt, step_size=2)
    for p in params:
        p.grad = np.ones(p.shape, p.dtype)
    opt.step()
    scheduler.step()
    return opt, scheduler, params


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    opt, scheduler, _ = make()
    v2 = folder / "good.safetensors"
    save_training_checkpoint(opt, v2, scheduler=scheduler, extra={"epoch": 1, "seed": [1, 2]})
    v1 = folder / "good.npz"
    write_v1(v1, *v1_contents(opt))
    files = {"v2": v2.read_bytes(), "v1": v1.read_bytes()}
    expected = {}
    for name, blob in files.items():
        fresh = make()[0]
        (folder / "probe").write_bytes(blob)
        load_checkpoint(fresh, folder / "probe")
        expected[name] = outcome(fresh)
    return files, expected


EDIT = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 2**20), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 2**20), st.just(0)),
)


def apply(blob: bytes, edits) -> bytes:
    data = bytearray(blob)
    for kind, position, value in edits:
        at = position % (len(data) + 1)
        if kind == "set" and at < len(data):
            data[at] = value if value != data[at] else value ^ 0x80
        elif kind == "insert":
            data[at:at] = value
        elif kind == "delete":
            del data[at : at + value]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


@BUDGET
@given(version=st.sampled_from(["v1", "v2"]), edits=st.lists(EDIT, min_size=1, max_size=4))
def test_edited_bytes_are_refused_or_harmless(tmp_path, good_files, version, edits):
    files, expected = good_files
    path = tmp_path / "edited"
    path.write_bytes(apply(files[version], edits))
    opt = make()[0]
    before = take(opt)
    try:
        load_checkpoint(opt, path)
    except ValueError:
        assert_same(before, opt)
    else:
        assert outcome(opt) == expected[version]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(value, prefix=()):
    """Every place in a JSON document: (path to the container, key or index)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix, key
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield prefix, index
            yield from paths(item, prefix + (index,))


@BUDGET
@given(data=st.data(), value=JSON, training=st.booleans())
def test_any_json_value_anywhere_is_refused_or_usable(tmp_path, good_files, data, value, training):
    files, _ = good_files
    path = tmp_path / "changed"
    path.write_bytes(files["v2"])

    def change(header, docs):
        places = [(doc, place) for doc in sorted(docs) for place in paths(docs[doc])]
        places += [(doc, ((), None)) for doc in sorted(docs)]
        doc, (container_path, key) = data.draw(st.sampled_from(places))
        if key is None:
            docs[doc] = value
            return
        container = docs[doc]
        for step in container_path:
            container = container[step]
        container[key] = value

    rewrite(path, change)
    opt, scheduler, params = make()
    before = take(opt, scheduler)
    try:
        if training:
            load_training_checkpoint(opt, path, scheduler=scheduler)
        else:
            load_checkpoint(opt, path)
    except ValueError:
        assert_same(before, opt, scheduler)
        return
    for p in params:
        p.grad = np.ones(p.shape, p.dtype)
    opt.step()  # what loaded is usable
    scheduler.step()
    json.dumps(scheduler.state_dict())
