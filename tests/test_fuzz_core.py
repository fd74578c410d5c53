"""A hypothesis fuzz of the bindings' argument parsing and checks.

Entry points fuzzed: ``_core.adamax_arrays`` (through ``functional.adamax``),
``_core.StepPlan.step``,
``_core.Hyperparameters``, ``StateEntry`` and ``ParameterState`` assignment, and the
``Parameter`` constructor and ``data``/``grad`` setters; with random arrays (float16, bfloat16,
float32/64, complex64/128, ints, bools, objects, big-endian), shapes (0-d, empty, up to 41
dimensions), layouts (Fortran, reversed, gaps, permuted axes, zero strides, overlapping
windows, a byte offset that misaligns), read-only flags, arrays aliased between roles and
tensors, and random hyperparameters (huge ints, NaN, inf, numpy scalars, bools, strings).

The property: every call either succeeds, with every written array equal bit for bit to
tests/reference.py's step and not one byte outside the arrays' elements changed, or raises
TypeError (for a problem of type) or ValueError (for a problem of value), as an oracle written
here from the documented rules predicts, and then changes nothing. Every array lives in a
buffer of its own, filled with a sentinel around it, so that a stray write is seen.

Each property runs in an interpreter of its own (a crash must fail the test, not kill pytest),
with a fixed budget: ``derandomize=True``, a fixed ``max_examples``, no deadline, no database.
``python tests/test_fuzz_core.py NAME`` runs one property directly.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from adamax_rs import Parameter, ParameterState, StateEntry, _core, functional  # noqa: E402
from reference import adamax_reference_step  # noqa: E402

MAX_STEP = 2**53
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(t) for t in (np.float16, np.float32, np.float64)] + [BF16]
COMPLEX = [np.dtype(np.complex64), np.dtype(np.complex128)]
SUPPORTED = FLOATS + COMPLEX
UNSUPPORTED = [np.dtype(t) for t in ("int32", "int64", "bool", "O", ">f4", ">f8", "uint8")]
UNSUPPORTED.append(np.dtype(np.longdouble))
SENTINEL = 0xA5
#: What the examples did (printed when a property is run as a script).
OUTCOMES: Counter[str] = Counter()

FUZZ_SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)


# -- the arrays ----------------------------------------------------------------------------------


class Problems:
    """What the oracle found wrong: of type (TypeError) and of value (ValueError)."""

    def __init__(self) -> None:
        self.type: list[str] = []
        self.value: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.type or self.value)

    def allowed(self) -> tuple[type, ...]:
        return ((TypeError,) if self.type else ()) + ((ValueError,) if self.value else ())

    def __repr__(self) -> str:
        return f"Problems(type={self.type}, value={self.value})"


@dataclass
class Built:
    """An array made in a buffer of its own, and that buffer."""

    array: Any
    base: np.ndarray | None
    layout: str = "c"


def element_alignment(dtype: np.dtype) -> int:
    return dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize


def c_strides(shape, itemsize):
    strides, step = [], itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]


def layout_strides(shape, itemsize, layout, permutation):
    shape = list(shape)
    moving = [i for i, n in enumerate(shape) if n > 1]
    if layout == "f":
        return c_strides(shape[::-1], itemsize)[::-1]
    if layout == "gaps" and shape:
        wide = shape[:-1] + [2 * shape[-1]]
        strides = c_strides(wide, itemsize)
        strides[-1] = 2 * itemsize
        return strides
    if layout == "reversed":
        return [-s for s in c_strides(shape, itemsize)]
    if layout == "permuted" and len(shape) > 1:
        order = sorted(range(len(shape)), key=lambda i: permutation[i % len(permutation)])
        permuted = c_strides([shape[i] for i in order], itemsize)
        strides = [0] * len(shape)
        for position, axis in enumerate(order):
            strides[axis] = permuted[position]
        return strides
    if layout == "zero" and moving:
        strides = c_strides(shape, itemsize)
        strides[moving[0]] = 0
        return strides
    if layout == "overlap" and len(moving) >= 2:
        strides = c_strides(shape, itemsize)
        strides[moving[0]] = itemsize  # rows that start one element apart
        return strides
    return c_strides(shape, itemsize)


def build(shape, dtype, layout, values_seed, writeable=True, permutation=(0,)) -> Built:
    """An array of ``shape`` and ``dtype`` laid out as ``layout``, alone in a sentinel-filled
    buffer; ``misaligned`` puts it one byte off its alignment."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(values_seed)
    values = rng.uniform(-2, 2, size=shape)
    if dtype.kind == "c":
        values = values + 1j * rng.uniform(-2, 2, size=shape)
    if dtype.hasobject:
        out = np.empty(shape, dtype)
        out[...] = values
        return Built(out, None)
    misaligned = layout == "misaligned" and math.prod(shape) > 0 and element_alignment(dtype) > 1
    strides = layout_strides(shape, dtype.itemsize, layout, permutation)
    if math.prod(shape) == 0:
        low = high = 0
    else:
        low = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
        high = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + dtype.itemsize
    base = np.full(high - low + 32, SENTINEL, np.uint8)
    offset = 16 - low + (1 if misaligned else 0)
    array = np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)
    if dtype == BF16 or dtype.kind in "fc":
        array[...] = values.astype(dtype)
    else:
        array[...] = values.real.astype(dtype)
    if not writeable:
        array.flags.writeable = False
    return Built(array, base, "misaligned" if misaligned else layout)


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def extent(a: np.ndarray) -> tuple[int, int] | None:
    """The bytes ``a`` can touch (written independently of the engine)."""
    if a.size == 0:
        return None
    low = sum(min(0, (n - 1) * s) for n, s in zip(a.shape, a.strides))
    high = sum(max(0, (n - 1) * s) for n, s in zip(a.shape, a.strides)) + a.itemsize
    return address(a) + low, address(a) + high


def element_offsets(a: np.ndarray) -> np.ndarray:
    """The byte offset of every element from ``address(a)``."""
    offsets = np.zeros((), np.int64)
    for n, s in zip(a.shape, a.strides):
        offsets = offsets[..., None] + np.arange(n, dtype=np.int64) * s
    return offsets.ravel()


def overlaps_itself(a: np.ndarray) -> bool:
    if a.size <= 1:
        return False
    offsets = np.sort(element_offsets(a))
    return bool((np.diff(offsets) < a.itemsize).any())


def aligned(a: np.ndarray) -> bool:
    align = element_alignment(a.dtype)
    strides_ok = all(n <= 1 or s % align == 0 for n, s in zip(a.shape, a.strides))
    return address(a) % align == 0 and strides_ok


def supported(dtype: np.dtype) -> bool:
    return dtype in SUPPORTED and (dtype.isnative or dtype.itemsize == 1)


def real_of(dtype: np.dtype) -> np.dtype:
    if dtype.kind == "c":
        return np.dtype(np.float32 if dtype == np.complex64 else np.float64)
    return dtype


def state_ok_for(param: np.dtype, state: np.dtype) -> bool:
    """The state element types an update exists for (the functional form's documented rule)."""
    if param.kind == "c":
        return state in COMPLEX
    return state in (np.dtype(np.float32), np.dtype(np.float64))


def check_written(a, name, shape, problems: Problems) -> None:
    """The checks of an array the step writes (its type already known to be supported)."""
    if a.shape != shape:
        problems.value.append(f"{name} shape")
    if not aligned(a):
        problems.type.append(f"{name} misaligned")
    if not a.flags.writeable:
        problems.value.append(f"{name} read-only")
    if overlaps_itself(a):
        problems.value.append(f"{name} overlaps itself")


@dataclass
class Tensor:
    """One parameter's arrays for one step, and the buffers they live in."""

    param: Any
    grad: Any
    exp_avg: Any
    exp_inf: Any
    master: Any = None
    step: Any = 1
    bases: list = field(default_factory=list)
    #: State made by the step (not by the test): only the parameter is compared here.
    fresh: bool = False

    def written(self) -> list[tuple[str, Any]]:
        named = [("param", self.param), ("exp_avg", self.exp_avg), ("exp_inf", self.exp_inf)]
        if self.master is not None:
            named.append(("master", self.master))
        return named


def check_tensor(t: Tensor, state_rule, problems: Problems) -> None:
    """The checks of one tensor; ``state_rule(param dtype, state dtype)`` says whether the
    state's element type is allowed."""
    if t.grad is t.param:
        problems.value.append("grad is param")
    if not isinstance(t.param, np.ndarray):
        problems.type.append("param not an array")
        return
    if not supported(t.param.dtype):
        problems.type.append("param dtype")
        return
    if not isinstance(t.grad, np.ndarray):
        problems.type.append("grad not an array")
    elif t.grad is t.param:
        pass
    elif t.grad.dtype != t.param.dtype:
        problems.type.append("grad dtype")
    else:
        if t.grad.shape != t.param.shape:
            problems.value.append("grad shape")
        if not aligned(t.grad):
            problems.type.append("grad misaligned")
    check_written(t.param, "param", t.param.shape, problems)
    states = [(n, a) for n, a in t.written() if n != "param"]
    for name, a in states:
        if not isinstance(a, np.ndarray):
            problems.type.append(f"{name} not an array")
            return
        if not supported(a.dtype):
            problems.type.append(f"{name} dtype")
            return
    if len({a.dtype for _, a in states}) > 1:
        problems.type.append("state dtypes differ")
    if not state_rule(t.param.dtype, t.exp_avg.dtype):
        problems.type.append("state dtype for this parameter")
    for name, a in states:
        check_written(a, name, t.param.shape, problems)


def check_overlaps(tensors: list[Tensor], problems: Problems) -> None:
    """No array written overlaps another array of the step (reads may overlap reads)."""
    written, read = [], []
    for i, t in enumerate(tensors):
        for name, a in t.written():
            if isinstance(a, np.ndarray) and extent(a):
                written.append((f"{name} {i}", extent(a)))
        if isinstance(t.grad, np.ndarray) and extent(t.grad):
            read.append((f"grad {i}", extent(t.grad)))
    for j, (name, (lo, hi)) in enumerate(written):
        for other, (lo2, hi2) in written[j + 1 :] + read:
            if lo < hi2 and lo2 < hi:
                problems.value.append(f"{name} overlaps {other}")


# -- the reference --------------------------------------------------------------------------------


def compute_dtype(param: np.dtype, state: np.dtype) -> np.dtype:
    wide = np.dtype(np.float64) in (real_of(param), real_of(state))
    return np.dtype(np.float64 if wide else np.float32)


def as_pairs(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values as a flat float array of ``dtype``; complex values as (real, imag) pairs."""
    a = np.array(a)
    if a.dtype.kind == "c":
        return np.stack([a.real.ravel(), a.imag.ravel()], -1).astype(dtype)
    return (a.astype(np.float32) if a.dtype == BF16 else a).ravel().astype(dtype)


def from_pairs(values: np.ndarray, like: np.dtype, shape) -> np.ndarray:
    if like.kind == "c":
        return (values[:, 0] + 1j * values[:, 1]).astype(like).reshape(shape)
    return values.astype(like).reshape(shape)


def expected_step(t: Tensor, hyper: dict) -> dict[str, np.ndarray]:
    """The arrays after one step of tensor ``t``, by tests/reference.py."""
    p_dtype, s_dtype = t.param.dtype, t.exp_avg.dtype
    c = compute_dtype(p_dtype, s_dtype)
    start = t.master if t.master is not None else t.param
    new_p, new_m, new_u = adamax_reference_step(
        as_pairs(start, c), as_pairs(t.grad, c), as_pairs(t.exp_avg, c),
        as_pairs(t.exp_inf, c), int(t.step), **hyper,
    )  # fmt: skip
    shape = t.param.shape
    out = {
        "exp_avg": from_pairs(new_m, s_dtype, shape),
        "exp_inf": from_pairs(new_u, s_dtype, shape),
    }
    if t.master is not None:
        master = from_pairs(new_p, s_dtype, shape)
        out["master"] = master
        out["param"] = master.astype(p_dtype)
    else:
        out["param"] = from_pairs(new_p, p_dtype, shape)
    return out


def snapshot_bases(bases) -> list[bytes]:
    return [b.tobytes() for b in bases]


def assert_bases_unchanged(bases, before, what="a refused call") -> None:
    for base, old in zip(bases, before):
        assert base.tobytes() == old, f"{what} changed memory"


def same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal bit for bit, except that any NaN matches any NaN (payloads are not specified)."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if got.tobytes() == want.tobytes():
        return True
    real = (lambda a: a.astype(np.float32)) if got.dtype == BF16 else (lambda a: a)
    g, w = real(got).ravel(), real(want).ravel()
    if g.dtype.kind == "c":
        g, w = np.concatenate([g.real, g.imag]), np.concatenate([w.real, w.imag])
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[g.itemsize]
    return bool(((g.view(width) == w.view(width)) | (np.isnan(g) & np.isnan(w))).all())


def assert_step_result(tensors, expected, bases, before) -> None:
    """Each written array equals the reference bit for bit; no other byte changed."""
    touched = {id(b): np.zeros(b.size, bool) for b in bases}
    for t, exp in zip(tensors, expected):
        if exp is None:
            continue
        for name, a in t.written():
            if t.fresh and name != "param":
                continue  # the step made these arrays: compared through the state
            assert same_bits(a, exp[name]), (
                f"{name} differs from the reference:\n{np.array(a)!r}\n{exp[name]!r}"
            )
            for b in bases:
                if np.shares_memory(a, b):
                    first = address(a) - address(b) + element_offsets(a)
                    every = (first[:, None] + np.arange(a.itemsize)).ravel()
                    touched[id(b)][every] = True
    for b, old in zip(bases, before):
        now = np.frombuffer(b.tobytes(), np.uint8)
        was = np.frombuffer(old, np.uint8)
        stray = (now != was) & ~touched[id(b)]
        assert not stray.any(), f"{int(stray.sum())} bytes outside the arrays were written"


# -- strategies ------------------------------------------------------------------------------------


def sometimes(draw, probability: float) -> bool:
    """True with about ``probability``; the simplest draw (what hypothesis tries most and
    shrinks towards) is False, the ordinary case."""
    return draw(st.integers(0, 999)) >= 1000 * (1 - probability)


LAYOUTS = ["c", "c", "c", "f", "gaps", "reversed", "permuted", "zero", "overlap", "misaligned"]

shapes = st.one_of(
    st.just(()),
    st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
    st.integers(30, 40).map(lambda k: (1,) * k + (2,)),
    st.integers(1, 3).map(lambda k: (2,) * k + (1, 3)),
)


@st.composite
def arrays(draw, shape, dtype, *, odd=0.15):
    """An array of ``shape`` and ``dtype`` in a random layout; read-only with probability
    ``odd``."""
    layout = draw(st.sampled_from(LAYOUTS))
    writeable = not sometimes(draw, odd)
    permutation = draw(st.permutations(range(max(len(shape), 1))))
    return build(shape, dtype, layout, draw(st.integers(0, 2**16)), writeable, permutation)


@st.composite
def maybe_other_dtype(draw, dtype, chance=0.1):
    if sometimes(draw, chance):
        return draw(st.sampled_from(SUPPORTED + UNSUPPORTED))
    return dtype


@st.composite
def maybe_other_shape(draw, shape, chance=0.08):
    if sometimes(draw, chance):
        return draw(shapes)
    return shape


NOT_ARRAYS = [None, "x", 3, [1.0, 2.0], 1.5]


@st.composite
def tensors(draw, state_rule_dtype):
    """A tensor with mostly valid, sometimes odd, arrays; ``state_rule_dtype(param dtype)`` is
    the state dtype a valid tensor uses."""
    shape = draw(shapes)
    p_dtype = draw(maybe_other_dtype(draw(st.sampled_from(SUPPORTED))))
    built = [draw(arrays(shape, p_dtype))]
    g = draw(arrays(draw(maybe_other_shape(shape)), draw(maybe_other_dtype(p_dtype)), odd=0.5))
    built.append(g)
    s_dtype = state_rule_dtype(p_dtype) if p_dtype in SUPPORTED else np.dtype(np.float32)
    for _ in range(2):
        built.append(draw(arrays(draw(maybe_other_shape(shape)), draw(maybe_other_dtype(s_dtype)))))
    master = None
    if sometimes(draw, 0.2):
        master = draw(arrays(shape, draw(maybe_other_dtype(s_dtype))))
        built.append(master)
    t = Tensor(built[0].array, built[1].array, built[2].array, built[3].array)
    t.master = master.array if master else None
    t.bases = [b.base for b in built if b.base is not None]
    if sometimes(draw, 0.05):
        setattr(
            t,
            draw(st.sampled_from(["param", "grad", "exp_avg"])),
            draw(st.sampled_from(NOT_ARRAYS)),
        )
    return t


ALIASES = ["grad=param", "exp_avg=exp_inf", "param=param", "grad=grad", "exp_avg=param view",
           "grad=param reversed", "master=exp_avg"]  # fmt: skip


def alias(draw, ts: list[Tensor]) -> str | None:
    """Sometimes make two roles (of one tensor or two) share memory."""
    if not sometimes(draw, 0.25):
        return None
    kind = draw(st.sampled_from(ALIASES))
    a, b = ts[0], ts[-1]
    if kind == "grad=param":
        a.grad = a.param
    elif kind == "exp_avg=exp_inf":
        a.exp_avg = a.exp_inf
    elif kind == "param=param" and len(ts) > 1:
        b.param = a.param
    elif kind == "grad=grad" and len(ts) > 1:
        b.grad = a.grad
    elif kind == "exp_avg=param view" and isinstance(a.param, np.ndarray):
        a.exp_avg = a.param[...]
    elif kind == "grad=param reversed" and isinstance(a.param, np.ndarray) and a.param.ndim:
        a.grad = a.param[::-1]
    elif kind == "master=exp_avg":
        a.master = a.exp_avg
    return kind


finite = st.floats(allow_nan=False, allow_infinity=False)
valid_hyper = st.fixed_dictionaries(
    {
        "lr": st.floats(0, 1),
        "beta1": st.floats(0, 0.999),
        "beta2": st.floats(0, 0.9999),
        "eps": st.floats(0, 1e-3),
        "weight_decay": st.one_of(st.just(0.0), st.floats(0, 0.5)),
        "maximize": st.booleans(),
        "eps_inside_max": st.booleans(),
        "decoupled_weight_decay": st.booleans(),
    }
)

odd_numbers = st.sampled_from(
    [
        10**400, -(10**400), 2**1024, float("nan"), float("inf"), -float("inf"), -0.0, -1,
        1.0, 0, True, False, np.bool_(True), np.float32(0.5), np.float16(0.1), np.int64(0),
        np.uint64(2**64 - 1), np.longdouble("1e4000"), np.float64("nan"), np.complex64(1),
        Fraction(1, 3), Fraction(10**400, 3), "0.1", None, [0.1], b"1", 1j,
    ]
)  # fmt: skip


def number_problem(value, low, high, high_open) -> str | None:
    """The problem of ``value`` as a hyperparameter in [low, high) / [low, high]: "type",
    "value" or None (an oracle of the documented rules)."""
    if isinstance(value, (bool, np.bool_)):
        return "type"
    if isinstance(value, (int, float, np.integer, np.floating, Fraction)):
        try:
            x = float(value)
        except OverflowError:
            return "value"
        if math.isnan(x) or math.isinf(x) or x < low or x > high or (high_open and x == high):
            return "value"
        return None
    return "type"


RANGES = {
    "lr": (0, math.inf, False),
    "beta1": (0, 1, True),
    "beta2": (0, 1, True),
    "eps": (0, math.inf, False),
    "weight_decay": (0, math.inf, False),
}


def flag_problem(value) -> str | None:
    return None if isinstance(value, (bool, np.bool_)) else "type"


@st.composite
def hyperparameters(draw, odd=0.15):
    """Valid hyperparameters, one or two of them (with probability ``odd``) odd."""
    h = draw(valid_hyper)
    if sometimes(draw, odd):
        for _ in range(2 if sometimes(draw, 0.3) else 1):
            h[draw(st.sampled_from(sorted(h)))] = draw(odd_numbers)
    return h


def hyper_problems(h: dict, problems: Problems) -> None:
    for key, value in h.items():
        kind = flag_problem(value) if key not in RANGES else number_problem(value, *RANGES[key])
        if kind:
            getattr(problems, kind).append(f"{key}={value!r}")


def steps_problem(value) -> str | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return "type"
    return None if 1 <= int(value) <= MAX_STEP else "value"


step_values = st.one_of(
    st.integers(1, 100),
    st.sampled_from(
        [
            MAX_STEP,
            MAX_STEP + 1,
            0,
            -1,
            10**400,
            True,
            np.int64(3),
            np.uint64(2**64 - 1),
            2.0,
            "1",
            None,
        ]
    ),  # fmt: skip
)


def functional_state_dtype(p_dtype: np.dtype) -> np.dtype:
    if p_dtype.kind == "c":
        return p_dtype
    return np.dtype(np.float32) if p_dtype in (np.float16, BF16) else p_dtype


# -- property 1: _core.adamax_arrays -------------------------------------------------------------


@settings(FUZZ_SETTINGS, max_examples=800)
@given(st.data())
def check_adamax_arrays(data):
    draw = data.draw
    ts = draw(st.lists(tensors(functional_state_dtype), min_size=1, max_size=3))
    for t in ts:  # the state may have another precision than the parameter
        if sometimes(draw, 0.3) and isinstance(t.param, np.ndarray) and supported(t.param.dtype):
            other = draw(st.sampled_from(COMPLEX if t.param.dtype.kind == "c" else FLOATS[:3]))
            layout = draw(st.sampled_from(LAYOUTS))
            for name in ("exp_avg", "exp_inf") + (("master",) if t.master is not None else ()):
                made = build(t.param.shape, other, layout, draw(st.integers(0, 99)))
                setattr(t, name, made.array)
                t.bases.append(made.base)
    for t in ts:
        t.step = draw(step_values)
        if sometimes(draw, 0.15):
            t.grad = None
    what = alias(draw, ts)
    hyper = draw(valid_hyper)
    bases = [b for t in ts for b in t.bases]
    before = snapshot_bases(bases)
    problems = Problems()
    active = [t for t in ts if t.grad is not None]
    for t in active:
        kind = steps_problem(t.step)
        if kind:
            getattr(problems, kind).append(f"step {t.step!r}")
        check_tensor(t, state_ok_for, problems)
    if not problems:
        check_overlaps(active, problems)
    masters = [t.master for t in ts] if any(t.master is not None for t in ts) else None
    arguments = [[getattr(t, n) for t in ts] for n in ("param", "grad", "exp_avg", "exp_inf")]
    call = lambda: functional.adamax(  # noqa: E731
        *arguments, [t.step for t in ts], masters=masters, **hyper
    )
    run_and_judge(call, problems, ts, hyper, bases, before, what)


def run_and_judge(call, problems, ts, hyper, bases, before, note) -> None:
    expected = None
    if not problems:
        expected = [expected_step(t, hyper) if t.grad is not None else None for t in ts]
    try:
        call()
    except (TypeError, ValueError) as error:
        OUTCOMES[f"refused ({type(error).__name__})"] += 1
        assert problems, f"refused a valid call ({note}): {type(error).__name__}: {error}"
        assert isinstance(error, problems.allowed()), (
            f"{type(error).__name__} ({error}) for {problems}"
        )
        assert_bases_unchanged(bases, before)
        return
    assert not problems, f"accepted a call with {problems} ({note})"
    assert_step_result(ts, expected, bases, before)
    OUTCOMES["stepped"] += 1
    for t in ts:
        if t.grad is not None:
            OUTCOMES[f"stepped {t.param.dtype} with {t.exp_avg.dtype} state"] += 1


# -- property 2: _core.StepPlan.step --------------------------------------------------------------


def policy_state_dtype(p_dtype: np.dtype, requested: str | None) -> np.dtype:
    real = np.dtype(requested) if requested else None
    if p_dtype.kind == "c":
        real = real or real_of(p_dtype)
        return np.dtype(np.complex64 if real == np.float32 else np.complex128)
    if real is not None:
        return real
    return np.dtype(np.float32) if p_dtype in (np.float16, BF16) else p_dtype


class Junk:
    """An object without ``data`` or ``grad``."""


@settings(FUZZ_SETTINGS, max_examples=600)
@given(st.data())
def check_step_plan(data):
    draw = data.draw
    requested = draw(st.sampled_from([None, "float32", "float64"]))
    master_weights = draw(st.booleans())
    names = ["exp_avg", "exp_inf"] + (["master"] if master_weights else [])
    plan = _core.StepPlan(state_dtype=requested, master_weights=master_weights)
    state = ParameterState(names)

    def policy(p_dtype):
        return policy_state_dtype(p_dtype, requested)

    def exact_policy(p_dtype, s_dtype):
        return s_dtype == policy(p_dtype)

    def wants_master(p_dtype):
        return master_weights and p_dtype in (np.float16, BF16)

    ts = draw(st.lists(tensors(policy), min_size=1, max_size=3))
    note = alias(draw, ts)
    problems, bases = Problems(), [b for t in ts for b in t.bases]
    params: list[Any] = []
    for t in ts:
        kind = t.param.dtype.kind if isinstance(t.param, np.ndarray) else "?"
        if kind not in "fc" and not (isinstance(t.param, np.ndarray) and t.param.dtype == BF16):
            # Parameter itself refuses such data (fuzzed in check_parameter).
            replacement = build((2,), np.float32, "c", 0)
            t.param = replacement.array
            bases.append(replacement.base)
        p = Parameter(t.param)
        params.append(p)
        if t.grad is None or sometimes(draw, 0.1):
            t.grad = None
        p.grad = t.grad
        arrays_ok = all(isinstance(a, np.ndarray) for _, a in t.written())
        entry_kind = ["full", "none", "empty", "partial"][
            draw(st.integers(0, 99)) // 30 if sometimes(draw, 0.6) else 0
        ]
        if t.grad is None or not arrays_ok or entry_kind in ("none", "empty"):
            if entry_kind == "empty":
                state[p]  # noqa: B018 - an empty entry, as torch's defaultdict makes
            t.fresh = True
            continue
        entry = state[p]
        count = MAX_STEP if sometimes(draw, 0.05) else draw(st.integers(0, 10))
        entry["step"] = count
        t.step = count + 1
        if count == MAX_STEP:
            problems.value.append("a step count that cannot advance")
        entry["exp_avg"] = t.exp_avg
        if entry_kind == "full":
            entry["exp_inf"] = t.exp_inf
        else:
            problems.value.append("an entry without exp_inf")
        if master_weights and t.master is not None:
            entry["master"] = t.master
            if not wants_master(t.param.dtype):
                problems.value.append("a master copy this parameter does not keep")
        else:
            t.master = None
        if t.master is None and wants_master(t.param.dtype):
            problems.value.append("an entry without its master copy")
    hyper = draw(hyperparameters(odd=0.03))
    hyper_problems(hyper, problems)
    group = {"params": list(params), **hyper}
    if sometimes(draw, 0.05):
        group["betas"] = (0.9, 0.99)
        problems.value.append("betas")
    junk = draw(st.sampled_from([Junk(), np.ones(2), "w"])) if sometimes(draw, 0.05) else None
    if junk is not None:
        group["params"].append(junk)
        problems.type.append("junk in params")
    active = [t for t in ts if t.grad is not None]
    for t in active:
        if t.fresh:
            if not supported(t.param.dtype):
                problems.type.append("param dtype")
                continue
            s_dtype = policy(t.param.dtype)
            t.step = 1
            t.exp_avg = np.zeros(t.param.shape, s_dtype)
            t.exp_inf = np.zeros(t.param.shape, s_dtype)
            t.master = np.array(t.param).astype(s_dtype) if wants_master(t.param.dtype) else None
        check_tensor(t, exact_policy, problems)
    if not problems:
        check_overlaps(active, problems)

    def entries():
        return [
            None
            if p not in state
            else {k: (v if k == "step" else id(v)) for k, v in state[p].items()}
            for p in params
        ]

    before_entries, before = entries(), snapshot_bases(bases)
    expected = None
    if not problems:
        h = _reference_hyper(hyper)
        expected = [expected_step(t, h) if t.grad is not None else None for t in ts]
    try:
        plan.step([group], state)
    except (TypeError, ValueError) as error:
        OUTCOMES[f"refused ({type(error).__name__})"] += 1
        assert problems, f"refused a valid step ({note}): {type(error).__name__}: {error}"
        assert isinstance(error, problems.allowed()), f"{type(error).__name__}: {error}"
        assert_bases_unchanged(bases, before)
        assert entries() == before_entries, "a refused step changed the state"
        return
    assert not problems, f"accepted a step with {problems} ({note})"
    for t, p, exp in zip(ts, params, expected):
        if exp is None:
            continue
        entry = state[p]
        assert entry["step"] == t.step
        for name in ("exp_avg", "exp_inf", "master"):
            if name in exp:
                assert same_bits(entry[name], exp[name]), name
        assert same_bits(p.data, exp["param"]), "param"
    assert_step_result(ts, expected, bases, before)
    OUTCOMES["stepped"] += 1
    OUTCOMES["stepped with an existing state"] += any(not t.fresh for t in active)


def _reference_hyper(h: dict) -> dict:
    """The reference takes Python numbers (numpy scalars would change its rounding)."""
    return {k: (bool(v) if isinstance(v, (bool, np.bool_)) else float(v)) for k, v in h.items()}


# -- property 3: _core.Hyperparameters -----------------------------------------------------------


@settings(FUZZ_SETTINGS, max_examples=2000)
@given(hyperparameters(odd=0.6), st.sets(st.sampled_from(["weight_decay", "maximize"])))
def check_hyperparameters(h, left_out):
    for key in left_out:
        del h[key]
    problems = Problems()
    hyper_problems(h, problems)
    try:
        made = _core.Hyperparameters(**h)
    except (TypeError, ValueError) as error:
        assert problems, f"refused {h}: {error}"
        assert isinstance(error, problems.allowed()), f"{type(error).__name__}: {error} {problems}"
        assert "internal" not in str(error)
        return
    assert not problems, f"accepted {h} with {problems}"
    for key, value in h.items():
        assert getattr(made, key) == (bool(value) if key not in RANGES else float(value)), key


# -- property 4: StateEntry and ParameterState assignment ---------------------------------------


keys = st.one_of(
    st.sampled_from(["step", "exp_avg", "exp_inf", "master", "other", "Step", ""]),
    st.sampled_from([1, None, b"step", ("step",)]),
)
values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(
        [
            0,
            MAX_STEP,
            MAX_STEP + 1,
            10**400,
            True,
            np.bool_(False),
            np.int64(5),
            np.uint64(2**64 - 1),
            np.int8(-3),
            1.0,
            np.float64(2),
            "3",
            None,
            Fraction(2),
            [1],
        ]
    ),  # fmt: skip
    st.builds(lambda d, s: np.zeros(s, d), st.sampled_from(SUPPORTED + UNSUPPORTED), shapes),
)


def entry_problem(key, value) -> str | None:
    if not isinstance(key, str):
        return "type"
    if key == "step":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            return "type"
        return None if 0 <= int(value) <= MAX_STEP else "value"
    if key not in ("exp_avg", "exp_inf"):
        return "value"
    return None if isinstance(value, np.ndarray) else "type"


@settings(FUZZ_SETTINGS, max_examples=500)
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=4), st.booleans())
def check_state_assignment(items, whole):
    state = ParameterState(["exp_avg", "exp_inf"])
    p = Parameter(np.zeros(2))
    entry = state[p]
    entry["step"] = 7
    kept = np.ones(2)
    entry["exp_avg"] = kept
    if whole:  # state[p] = mapping: all or nothing
        mapping = dict(items)
        kinds = [entry_problem(k, v) for k, v in mapping.items()]
        try:
            state[p] = mapping
        except (TypeError, ValueError) as error:
            allowed = {"type": TypeError, "value": ValueError}
            assert any(kinds), f"refused {mapping}: {error}"
            assert isinstance(error, tuple(allowed[k] for k in kinds if k)), error
            assert state[p] is entry and entry["step"] == 7 and entry["exp_avg"] is kept
            return
        assert not any(kinds), f"accepted {mapping}"
        assert isinstance(state[p], StateEntry) and len(state[p]) == len(mapping)
        return
    for key, value in items:
        kind = entry_problem(key, value)
        before = dict(entry)
        try:
            entry[key] = value
        except (TypeError, ValueError) as error:
            assert kind is not None, f"refused {key!r}={value!r}: {error}"
            assert isinstance(error, {"type": TypeError, "value": ValueError}[kind]), error
            after = dict(entry)
            assert after.keys() == before.keys()
            assert all(after[k] is before[k] or after[k] == before[k] for k in after)
            continue
        assert kind is None, f"accepted {key!r}={value!r}"
        assert entry[key] is value or entry[key] == int(value)


# -- property 5: Parameter -----------------------------------------------------------------------


parameter_data = st.one_of(
    st.builds(lambda d, s: np.ones(s, d), st.sampled_from(SUPPORTED + UNSUPPORTED), shapes),
    st.sampled_from(
        [
            1.5,
            [1.0, 2.0],
            [1, 2],
            [True],
            "abc",
            None,
            b"x",
            [[1.0], [2.0, 3.0]],
            np.float32(1),
            3 + 1j,
        ]
    ),  # fmt: skip
)


def data_problem(value, assigning: bool) -> str | None:
    if assigning and not isinstance(value, np.ndarray):
        return "type"
    try:
        array = np.asarray(value)
    except ValueError:
        return "value"
    if array.dtype.kind in "fc" or array.dtype == BF16:
        return None
    return "type"


@settings(FUZZ_SETTINGS, max_examples=300)
@given(parameter_data, parameter_data, st.one_of(parameter_data, st.just(None)))
def check_parameter(first, second, grad):
    kind = data_problem(first, assigning=False)
    try:
        p = Parameter(first)
    except (TypeError, ValueError) as error:
        assert kind, f"refused {first!r}: {error}"
        assert isinstance(error, {"type": TypeError, "value": ValueError}[kind]), error
        return
    assert kind is None, f"accepted {first!r}"
    if isinstance(first, np.ndarray):
        assert p.data is first  # kept, not copied
    data = p.data
    kind = data_problem(second, assigning=True)
    try:
        p.data = second
    except (TypeError, ValueError) as error:
        assert kind, f"refused {second!r}: {error}"
        assert isinstance(error, {"type": TypeError, "value": ValueError}[kind]), error
        assert p.data is data
    else:
        assert kind is None, f"accepted {second!r}"
        assert p.data is second
    p.grad = grad  # anything: the step checks it
    assert p.grad is grad


# -- running ------------------------------------------------------------------------------------


PROPERTIES = {
    f.__name__: f
    for f in (
        check_adamax_arrays,
        check_step_plan,
        check_hyperparameters,
        check_state_assignment,
        check_parameter,
    )
}


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_fuzz(name):
    try:
        done = subprocess.run(
            [sys.executable, __file__, name], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} hung")
    tail = f"\nstdout:\n{done.stdout[-6000:]}\nstderr:\n{done.stderr[-6000:]}"
    if done.returncode < 0:
        pytest.fail(f"{name} was killed by signal {-done.returncode} (a crash){tail}")
    assert done.returncode == 0, f"{name} found a failing case{tail}"


if __name__ == "__main__":
    PROPERTIES[sys.argv[1]]()
    print(dict(OUTCOMES))


def test_step_size_dtype_names_a_float_type():
    base = {"lr": 0.25, "beta1": 0.5, "beta2": 0.75, "eps": 1e-8}
    for name in ("float64", "float32", "float16", "bfloat16"):
        made = _core.Hyperparameters(**base, step_size_dtype=name)
        assert made.step_size_dtype == name
        assert f"step_size_dtype='{name}'" in repr(made)
    assert _core.Hyperparameters(**base).step_size_dtype == "float64"
    with pytest.raises(ValueError, match="step_size_dtype must be 'float64'.* got 'int8'"):
        _core.Hyperparameters(**base, step_size_dtype="int8")
    with pytest.raises(TypeError, match="step_size_dtype must be a str, got bool"):
        _core.Hyperparameters(**base, step_size_dtype=True)
