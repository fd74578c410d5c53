"""A plain numpy Adamax, written for the tests from the formula in docs/update_rule.md.

It shares no code with the package: the tests compare the Rust update against it.
"""

from __future__ import annotations

import math
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


# -- compressed state: 8-bit block codes and bfloat16, written from the format's description --

#: Elements per block of 8-bit state.
BLOCK = 256


def _signed_code_values():
    """The magnitudes of the 128 non-negative exp_avg codes: 4 exponent bits (bias 7), 3
    mantissa bits, subnormals below exponent 1; code ``c`` stands for this value."""
    values = []
    for code in range(128):
        exponent, mantissa = code >> 3, code & 7
        if exponent == 0:
            values.append(mantissa * 2.0**-9)
        else:
            values.append((8 + mantissa) * 2.0 ** (exponent - 10))
    return np.array(values)


def _unsigned_code_values():
    """The values of the 256 exp_inf codes: 4 exponent bits (bias 7), 4 mantissa bits."""
    values = []
    for code in range(256):
        exponent, mantissa = code >> 4, code & 15
        if exponent == 0:
            values.append(mantissa * 2.0**-10)
        else:
            values.append((16 + mantissa) * 2.0 ** (exponent - 11))
    return np.array(values)


SIGNED_VALUES = _signed_code_values()
UNSIGNED_VALUES = _unsigned_code_values()


def block_scale(largest, top, compute):
    """A block's scale: ``largest / top`` in float32, then the next float32 up until
    ``top * scale``, computed in ``compute``, is at least ``largest`` (every code fits)."""
    scale = np.float32(np.float32(largest) / np.float32(top))
    while np.isfinite(scale) and compute(top) * compute(scale) < compute(largest):
        scale = np.nextafter(scale, np.float32(np.inf))
    return scale


def power_of_two_scale(largest, top, compute):
    """A block's scale: the smallest power of two (a float32, subnormal ones included) for which
    ``top * scale``, computed in ``compute``, is at least ``largest`` (NaN and infinity pass
    through); the tightest scale (``block_scale``) where that ``top * scale`` is infinite."""
    if not np.isfinite(largest):
        return np.float32(largest)

    def fits(exponent):
        return compute(top) * compute(np.float32(2.0**exponent)) >= compute(largest)

    with np.errstate(over="ignore"):
        exponent = max(math.ceil(math.log2(float(largest)) - math.log2(top)), -149)
        while exponent <= 127 and not fits(exponent):
            exponent += 1
        while exponent > -149 and fits(exponent - 1):
            exponent -= 1
        if exponent > 127:
            return np.float32(np.inf)
        scale = np.float32(2.0**exponent)
        if not np.isfinite(compute(top) * compute(scale)):
            return block_scale(largest, top, compute)
    return scale


def decayed_scale(previous, beta2, compute):
    """An exp_inf block's previous scale decayed: ``previous * beta2`` (``beta2`` as
    ``compute`` holds it), rounded to float32, then 8 float32 steps up."""
    decayed = np.float32(np.float64(previous) * np.float64(compute(beta2)))
    return (decayed.reshape(1).view(np.uint32) + np.uint32(8)).view(np.float32)[0]


def encode_block(
    values,
    signed,
    compute,
    previous=None,
    beta2=None,
    noise=None,
    limit=None,
    exp_avg=None,
    bound=None,
):
    """Codes and scale of one block of moments held in ``compute`` (float32 or float64).

    ``stored[k]`` is what code ``k`` decodes to, computed in ``compute``. exp_avg (signed) takes
    the largest code whose stored magnitude is not above ``|x|``, with ``x``'s sign; exp_inf takes
    the smallest code whose stored value is not below ``x``.

    The scale is the smallest power of two that fits (``power_of_two_scale``), except for exp_inf
    rounded up (no ``noise``): there it is the tightest (``block_scale``), and in a step
    (``previous``, the block's scale before, and ``beta2`` given) the previous scale decayed
    (``decayed_scale``) is kept when it is at least the tightest and below twice it.

    Rounded stochastically (``noise``: 32-bit words, one per value), all in ``compute``:

    - exp_avg, with ``limit`` (Adamax's bound times the new exp_inf, per value): a magnitude
      whose code ``k`` is below the top (0 to 126) moves up to ``k + 1`` when
      ``f * (stored[k + 1] - stored[k]) < |x| - stored[k]`` and ``stored[k + 1] <= limit``,
      ``f`` being the word's high 16 bits times 2**-16;
    - exp_inf, with ``exp_avg`` (the stored exp_avg magnitudes, per value) and ``bound``
      (Adamax's bound): a value whose code ``k`` is above 16 moves down to ``k - 1`` when
      ``f * (stored[k] - stored[k - 1]) < stored[k] - x`` and
      ``exp_avg <= bound * stored[k - 1]``, ``f`` being the word's low 16 bits times 2**-16.
    """
    values = np.asarray(values, dtype=compute)
    table = SIGNED_VALUES if signed else UNSIGNED_VALUES
    top = table[-1]
    largest = np.abs(values).max()
    codes = np.zeros(len(values), np.uint8)
    if largest == 0:
        return codes, np.float32(0)
    if signed or noise is not None:
        scale = power_of_two_scale(largest, top, compute)
    else:
        scale = block_scale(largest, top, compute)
    if (
        not signed
        and noise is None
        and previous is not None
        and np.isfinite(previous)
        and previous > 0
    ):
        decayed = decayed_scale(previous, beta2, compute)
        if np.isfinite(decayed) and scale <= decayed < 2 * scale:
            scale = decayed
    stored = table.astype(compute) * compute(scale)
    for i, x in enumerate(values):
        if signed:
            k = int(np.searchsorted(stored, abs(x), side="right")) - 1
            if noise is not None and k < 127:
                f = compute(int(noise[i]) >> 16) * compute(2.0**-16)
                drawn = f * (stored[k + 1] - stored[k]) < abs(x) - stored[k]
                if drawn and stored[k + 1] <= limit[i]:
                    k += 1
            codes[i] = k | (0x80 if (x < 0 and k != 0) else 0)
        else:
            k = min(int(np.searchsorted(stored, x, side="left")), 255)
            if noise is not None and k > 16:
                f = compute(int(noise[i]) & 0xFFFF) * compute(2.0**-16)
                drawn = f * (stored[k] - stored[k - 1]) < stored[k] - x
                if drawn and exp_avg[i] <= bound * stored[k - 1]:
                    k -= 1
            codes[i] = k
    return codes, scale


def decode(codes, scales, signed, compute=np.float32):
    """The values of flat codes with one scale per block, in ``compute``."""
    codes = np.asarray(codes)
    if signed:
        magnitude = SIGNED_VALUES[codes & 0x7F]
        values = np.where(codes & 0x80, -magnitude, magnitude)
    else:
        values = UNSIGNED_VALUES[codes]
    block_scales = np.repeat(np.asarray(scales, np.float32), BLOCK)[: len(codes)]
    return values.astype(compute) * block_scales.astype(compute)


def quantize(
    values,
    signed,
    compute=np.float32,
    previous=None,
    beta2=None,
    noise=None,
    limit=None,
    exp_avg=None,
    bound=None,
):
    """Flat moments to ``(codes, scales)``, block by block; ``previous`` scales (with
    ``beta2``) for exp_inf in a step, and ``noise`` with ``limit`` (exp_avg) or with
    ``exp_avg`` and ``bound`` (exp_inf) to round stochastically, as ``encode_block`` takes
    them."""
    values = np.asarray(values).reshape(-1)
    codes = np.zeros(len(values), np.uint8)
    scales = np.zeros(-(-len(values) // BLOCK), np.float32)
    for b in range(len(scales)):
        part = slice(b * BLOCK, (b + 1) * BLOCK)
        before = None if previous is None else previous[b]
        bits = None if noise is None else noise[part]
        most = None if limit is None else limit[part]
        stored_avg = None if exp_avg is None else exp_avg[part]
        codes[part], scales[b] = encode_block(
            values[part], signed, compute, before, beta2, bits, most, stored_avg, bound
        )
    return codes, scales


def exp_avg_bound(beta1, beta2, compute):
    """Adamax's bound on ``|exp_avg| / exp_inf``: ``(1 - beta1) / (1 - beta1 / beta2)`` in
    float64 from the betas as ``compute`` holds them, rounded to ``compute``; infinite when
    ``beta1 >= beta2``."""
    b1, b2 = float(compute(beta1)), float(compute(beta2))
    return compute((1.0 - b1) / (1.0 - b1 / b2) if b1 < b2 else np.inf)


def blockwise_reference_step(
    param, grad, state, t, master=None, stochastic_rounding=False, **hyper
):
    """One step of a dense, C-ordered parameter with 8-bit state ``{"exp_avg": codes,
    "exp_inf": codes, "exp_avg_scale": ..., "exp_inf_scale": ...}``: decode in the compute type
    (float64 for float64 parameters, float32 otherwise), the formula in it
    (``adamax_reference_step``), round the parameter to its dtype, encode (both moments
    stochastically with ``state_hash``'s bits, when ``stochastic_rounding``: exp_avg first,
    then exp_inf against the stored exp_avg). Returns ``(param, state, master)``."""
    shape = param.shape
    compute = np.float64 if param.dtype == np.float64 else np.float32
    m = decode(state["exp_avg"].reshape(-1), state["exp_avg_scale"], True, compute)
    u = decode(state["exp_inf"].reshape(-1), state["exp_inf_scale"], False, compute)
    source = (master if master is not None else param).reshape(-1).astype(compute)
    g = grad.reshape(-1).astype(compute)
    p, m, u = adamax_reference_step(source, g, m, u, t, **hyper)
    h = {**DEFAULTS, **hyper}
    noise = state_hash(m, u, g, t) if stochastic_rounding else None
    bound = exp_avg_bound(h["beta1"], h["beta2"], compute)
    # With no bound (infinite: beta1 >= beta2) a zero exp_inf makes the limit NaN, which refuses
    # the move, as the kernel's product does (the value is 0 then, and has no code to move to).
    with np.errstate(invalid="ignore"):
        limit = bound * u
    m_codes, m_scales = quantize(m, True, compute, noise=noise, limit=limit)
    stored_avg = np.abs(decode(m_codes, m_scales, True, compute))
    u_codes, u_scales = quantize(
        u,
        False,
        compute,
        previous=state["exp_inf_scale"],
        beta2=h["beta2"],
        noise=noise,
        exp_avg=stored_avg,
        bound=bound,
    )
    new_state = {
        "exp_avg": m_codes.reshape(shape),
        "exp_inf": u_codes.reshape(shape),
        "exp_avg_scale": m_scales,
        "exp_inf_scale": u_scales,
    }
    new_master = p.reshape(shape) if master is not None else None
    return p.astype(param.dtype).reshape(shape), new_state, new_master


def bfloat16_reference_step(param, grad, exp_avg, exp_inf, t, master=None, **hyper):
    """One step with bfloat16 state: widen to float32, the float32 formula, round the new
    moments to bfloat16 (ml_dtypes' cast: nearest, ties to even). Returns ``(param, exp_avg,
    exp_inf, master)``."""
    source = (master if master is not None else param).astype(np.float32)
    p, m, u = adamax_reference_step(
        source,
        grad.astype(np.float32),
        exp_avg.astype(np.float32),
        exp_inf.astype(np.float32),
        t,
        **hyper,
    )
    new_master = p if master is not None else None
    return p.astype(param.dtype), m.astype(exp_avg.dtype), u.astype(exp_inf.dtype), new_master


# -- stochastic rounding of bfloat16 state, written from docs/compressed_state.md --


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser over a uint32 array (numpy's uint32 products wrap)."""
    x = np.asarray(x, dtype=np.uint32).copy()
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def _rotate_left(x, k):
    return (x << np.uint32(k)) | (x >> np.uint32(32 - k))


def _bits32(values):
    """A float32 array's bits; a float64 array's high half xor its low half."""
    if values.dtype == np.float64:
        bits = values.view(np.uint64)
        return ((bits ^ (bits >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return values.astype(np.float32).view(np.uint32)


def step_salt(t):
    """The hash of step number ``t``."""
    high = _fmix32(np.array([(t >> 32) ^ 0x9E3779B9], dtype=np.uint32))
    return _fmix32(np.array([t & 0xFFFFFFFF], dtype=np.uint32) ^ high)[0]


def state_hash(m, u, grad, t):
    """Each element's 32 random bits for rounding its new moments: one hash of the new
    moments' bits (``exp_inf``'s rotated by 16), the gradient's (rotated by 8) and the step's
    salt."""
    return _fmix32(
        _bits32(m) ^ _rotate_left(_bits32(u), 16) ^ _rotate_left(_bits32(grad), 8) ^ step_salt(t)
    )


def stochastic_bfloat16_noise(m, u, grad, t):
    """The 16 random bits of each element's ``exp_avg`` and ``exp_inf`` rounding: the high
    half of ``state_hash`` for ``exp_avg``, its low half for ``exp_inf``."""
    h = state_hash(m, u, grad, t)
    return h >> np.uint32(16), h & np.uint32(0xFFFF)


def round_bfloat16_stochastically(values, noise):
    """``values`` (float32, or float64 first rounded to float32) to bfloat16: the 16 bits of
    ``noise`` added to the 16 that are dropped, then truncated; NaN stays NaN (its top bits,
    made quiet)."""
    single = values.astype(np.float32)
    bits = single.view(np.uint32)
    rounded = (bits + noise.astype(np.uint32)) >> np.uint32(16)
    # NaN keeps its sign and the top of its payload, made quiet.
    quiet_nan = (bits >> np.uint32(16)) | np.uint32(0x40)
    return np.where(np.isnan(single), quiet_nan, rounded).astype(np.uint16).view(_bfloat16())


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def bfloat16_stochastic_reference_step(param, grad, exp_avg, exp_inf, t, master=None, **hyper):
    """One step with bfloat16 state rounded stochastically: the formula in the compute type
    (float64 for float64 parameters, float32 otherwise), then each moment rounded with the
    hash above. Returns ``(param, exp_avg, exp_inf, master)``."""
    compute = np.float64 if param.dtype == np.float64 else np.float32
    source = (master if master is not None else param).astype(compute)
    g = grad.astype(compute)
    p, m, u = adamax_reference_step(
        source, g, exp_avg.astype(compute), exp_inf.astype(compute), t, **hyper
    )
    avg_noise, inf_noise = stochastic_bfloat16_noise(m, u, g, t)
    new_master = p if master is not None else None
    return (
        p.astype(param.dtype),
        round_bfloat16_stochastically(m, avg_noise),
        round_bfloat16_stochastically(u, inf_noise),
        new_master,
    )
