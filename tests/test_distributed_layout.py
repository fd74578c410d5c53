"""The shard layout of adamax_rs.distributed (plain numpy, no MPI needed), and that MPI stays
optional: ``import adamax_rs`` never imports mpi4py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adamax_rs
from adamax_rs.distributed.layout import ShardLayout, flat_real, memory_order
from adamax_rs.distributed.mean import mean_in_place

DTYPES = [np.float32, np.float64, np.float16, np.complex64, np.complex128]


def make_groups(sizes_by_group, dtypes):
    groups, k = [], 0
    for sizes in sizes_by_group:
        group = []
        for size in sizes:
            dtype = dtypes[k % len(dtypes)]
            group.append(adamax_rs.Parameter(np.zeros(size, dtype)))
            k += 1
        groups.append(group)
    return groups


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.lists(st.integers(0, 40), max_size=5), min_size=1, max_size=4),
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=3),
    ranks=st.integers(1, 9),
)
def test_every_element_belongs_to_exactly_one_rank_and_ranks_are_balanced(sizes, dtypes, ranks):
    groups = make_groups(sizes, dtypes)
    layout = ShardLayout.of(groups, ranks)
    params = [p for g in groups for p in g]
    # Count, per parameter element (reals), how many ranks hold it.
    held = [np.zeros(p.data.size * (2 if p.data.dtype.kind == "c" else 1), int) for p in params]
    empty_owners = {}
    for rank in range(ranks):
        previous_end = {}
        for piece in layout.pieces(rank):
            slot = piece.slot
            held[slot.number][piece.start : piece.stop] += 1
            if slot.size == 0:
                empty_owners.setdefault(slot.number, []).append(rank)
                continue
            # Within a bucket, a rank's pieces are one contiguous range, in flattened order.
            begin = slot.offset + piece.start
            if slot.bucket in previous_end:
                assert begin == previous_end[slot.bucket]
            previous_end[slot.bucket] = slot.offset + piece.stop
            bounds = layout.buckets[slot.bucket].bounds
            assert bounds[rank] <= begin and slot.offset + piece.stop <= bounds[rank + 1]
    for counts in held:
        assert (counts == 1).all()
    for p_index, p in enumerate(params):
        if p.data.size == 0:
            assert len(empty_owners[p_index]) == 1  # exactly one rank keeps its state
    for bucket in layout.buckets:
        counts = bucket.counts()
        assert sum(counts) == bucket.size
        assert max(counts) - min(counts) <= 1  # balanced to within one element
    # One bucket per element type (complex with its reals), in order of first appearance.
    kinds = []
    for p in params:
        real = np.dtype(p.data.dtype.type(0).real.dtype)
        if real not in kinds:
            kinds.append(real)
    assert [b.dtype for b in layout.buckets] == kinds


def test_a_fortran_ordered_parameter_is_flattened_in_memory_order():
    data = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    order = memory_order(data, "here")
    assert order == "F"
    flat = flat_real(data, order)
    assert np.shares_memory(flat, data)
    assert flat.tolist() == data.ravel(order="F").tolist()
    complex_data = np.array([1 + 2j, 3 + 4j], np.complex64)
    reals = flat_real(complex_data, "C")
    assert np.shares_memory(reals, complex_data)
    assert reals.tolist() == [1, 2, 3, 4]


def test_a_strided_parameter_is_refused_with_a_clear_error():
    data = np.zeros((4, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="group 1, parameter 2: the parameter is neither C- nor F"):
        memory_order(data, "group 1, parameter 2")


def test_the_slot_view_has_the_parameters_shape_and_order():
    groups = [[adamax_rs.Parameter(np.asfortranarray(np.zeros((2, 3), np.complex64)))]]
    layout = ShardLayout.of(groups, 2)
    slot = layout.slots[0]
    flat = np.arange(12, dtype=np.float32)
    view = slot.shaped(flat)
    assert view.dtype == np.complex64 and view.shape == (2, 3) and view.flags.f_contiguous
    assert view[1, 0] == 2 + 3j  # the second complex number in memory order
    wide = slot.shaped(np.arange(12, dtype=np.float64))
    assert wide.dtype == np.complex128


@pytest.mark.parametrize("ranks", [2, 3, 4, 7])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_mean_is_numpys_sum_over_n_for_reals_and_complex_numbers(ranks, dtype):
    rng = np.random.default_rng(ranks)
    reals = rng.standard_normal(11).astype(dtype)
    complex_type = np.complex64 if dtype == np.float32 else np.complex128
    numbers = (rng.standard_normal(5) + 1j * rng.standard_normal(5)).astype(complex_type)
    buffer = np.concatenate([reals[:4], numbers.view(dtype), reals[4:]])
    mean_in_place(buffer, ranks, [(4, 14)])
    assert buffer[:4].tobytes() == (reals[:4] / ranks).tobytes()
    assert buffer[4:14].view(complex_type).tobytes() == (numbers / ranks).tobytes()
    assert buffer[14:].tobytes() == (reals[4:] / ranks).tobytes()


def python_prints(code: str) -> str:
    """What a fresh Python process running ``code`` prints (it must succeed): for what must
    not leak into, or depends on what is imported in, the test process."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_adamax_rs_does_not_import_mpi4py():
    code = (
        "import sys, adamax_rs, adamax_rs.distributed; "
        "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'; print('ok')"
    )
    stdout = python_prints(code)
    assert stdout.strip() == "ok"


def test_without_mpi4py_the_error_says_how_to_install_it():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "import numpy as np, adamax_rs\n"
        "from adamax_rs.distributed import ShardedAdamax\n"
        "try:\n"
        "    ShardedAdamax([adamax_rs.Parameter(np.zeros(3, np.float32))])\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    stdout = python_prints(code)
    assert "pip install 'adamax_rs[mpi]'" in stdout


def test_8bit_state_is_refused_with_the_reason():
    # A shard may start inside a block of 256, and the gathered state dict has no place for
    # codes and scales: refused, not a silently different run or a state dict of code numbers.
    code = (
        "import numpy as np, adamax_rs\n"
        "from adamax_rs.distributed import ShardedAdamax\n"
        "p = adamax_rs.Parameter(np.zeros(8192, np.float32))\n"
        "try:\n"
        "    ShardedAdamax([p], lr=0.01, state_dtype='8bit')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        "ShardedAdamax([p], lr=0.01, state_dtype='bfloat16', stochastic_rounding=True)\n"
    )
    stdout = python_prints(code)
    assert "ShardedAdamax does not support state_dtype='8bit'" in stdout
