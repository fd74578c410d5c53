//! 8-bit optimizer state: one byte per element for each moment, and one float32 scale per block
//! of [`BLOCK`] elements (block-wise quantization, as Dettmers et al. 2022 do for Adam).
//!
//! The codes are small floating-point formats, decoded and encoded with integer and float
//! arithmetic only (no table), so the loop over a block still vectorises:
//! - `exp_avg` (signed): sign, 4 exponent bits, 3 mantissa bits (bias 7; largest 480, smallest
//!   2^-9, so 2^18 between them). It is **truncated toward zero**: a stored `|m|` is never larger
//!   than the computed one. With stochastic rounding, values are rounded up or down at random
//!   instead, unbiased: at most one code above (1/8 in the normal range), and never above
//!   Adamax's bound (below).
//! - `exp_inf` (never negative): 4 exponent bits, 4 mantissa bits (bias 7; largest 496, smallest
//!   2^-10). It is **rounded up**: a stored `u` is never smaller than the computed one, and a
//!   positive `u` never becomes 0. With stochastic rounding, values whose code below is in the
//!   normal range are rounded down or up at random instead, unbiased, but never below what
//!   Adamax's bound allows for the stored `m`, and never to 0.
//!
//! A block's scale is the smallest power of two that fits its largest magnitude
//! ([`power_of_two_scale`]): the codes are floating-point, so a power of two loses no precision,
//! and it makes dividing by the scale exact in f32, so the encoders read codes off the
//! quotients' bits with no check after (f64 values still check once). Only `exp_inf` rounded up (without stochastic rounding) uses another
//! scale: its previous scale decayed ([`exp_inf_scale`]), or else the tightest ([`block_scale`]).
//! Why the rounding directions: Adamax's step is bounded because `|m| <= K u` with
//! `K = (1 - beta1) / (1 - beta1 / beta2)` (by induction over `m = beta1 m + (1 - beta1) g`,
//! `u = max(beta2 u, |g|)`). Truncating `m` and rounding `u` up keep exactly that induction true
//! for the stored values, so no 8-bit update can exceed the float32 bound. Rounding
//! stochastically keeps it too: `m` never takes a code above `K` times the new `u`
//! ([`exp_avg_bound`]), and `u` then never takes a code below the stored `|m|` over `K`
//! ([`encode_exp_inf_stochastic`]). `u` decays even rounded up: an element that only decays
//! keeps its code while the block's scale decays by `beta2` (but not in a block whose largest
//! value new gradients keep refreshing; stochastic rounding decays it there).
//!
//! The update of a block reads the codes and scales once, computes the new moments into a stack
//! buffer of [`BLOCK`] values (L1, not memory), writes the parameter, then encodes the moments and
//! writes them with the new scales: one pass over memory, no temporary float32 state.

use super::float::Float;
use super::hyperparameters::Coefficients;
use super::precision::Storage;
use super::stochastic::state_noise;
use super::update::adamax_math;

/// Elements per block (one scale per moment per block).
pub const BLOCK: usize = 256;

/// The largest value of the `exp_avg` code, `(8 + 7) * 2^(15 - 10)`.
pub const MAX_SIGNED: f32 = 480.0;
/// The largest value of the `exp_inf` code, `(16 + 15) * 2^(15 - 11)`.
pub const MAX_UNSIGNED: f32 = 496.0;

/// `2^n` as an f32 (for `-126 <= n <= 127`).
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

// The codes are worked on as `u32`, one per 32-bit lane, and narrowed to bytes only when stored:
// arithmetic on bytes next to arithmetic on floats makes LLVM pack and unpack the vectors at
// every step. A normal code is an f32's exponent and top mantissa bits, rebiased (from 127 to
// 7), so decoding one is an integer add and a shift, with no table.

/// The value of an unsigned small float `code` with 4 exponent bits (bias 7) and `MANTISSA`
/// mantissa bits: subnormal below exponent 1, in steps of `2^-(6 + MANTISSA)`; otherwise the f32
/// whose exponent is the code's plus 120 and whose mantissa starts with the code's.
#[inline(always)]
fn small_float_value<const MANTISSA: u32>(code: u32) -> f32 {
    // Through i32: x86 has no vector conversion from u32 before AVX-512, and `code` is small.
    let subnormal = code as i32 as f32 * pow2(-6 - MANTISSA as i32);
    if code < 1 << MANTISSA {
        subnormal
    } else {
        normal_small_float_value::<MANTISSA>(code)
    }
}

/// [`small_float_value`] of a code known to be normal (`code >= 2^MANTISSA`), without the
/// subnormal branch: the stochastic roundings decode only such codes, and this saves them a
/// conversion, a product and a blend per decode. (Any other `code` gives a meaningless value.)
#[inline(always)]
fn normal_small_float_value<const MANTISSA: u32>(code: u32) -> f32 {
    f32::from_bits((code + (120 << MANTISSA)) << (23 - MANTISSA))
}

/// The magnitude of an `exp_avg` code's low 7 bits `magnitude` (`0..=127`).
#[inline(always)]
fn signed_magnitude(magnitude: u32) -> f32 {
    small_float_value::<3>(magnitude)
}

/// The value of an `exp_inf` code `code` (`0..=255`).
#[inline(always)]
fn unsigned_value(code: u32) -> f32 {
    small_float_value::<4>(code)
}

/// The value of an `exp_avg` code (before scaling).
#[inline(always)]
pub fn decode_signed(code: u8) -> f32 {
    let c = u32::from(code);
    f32::from_bits(signed_magnitude(c & 0x7F).to_bits() | ((c & 0x80) << 24))
}

/// The value of an `exp_inf` code (before scaling).
#[inline(always)]
pub fn decode_unsigned(code: u8) -> f32 {
    unsigned_value(u32::from(code))
}

/// `floor(v)` for `0 <= v <= 2^22`, by float and integer arithmetic only. Rust's float-to-int
/// conversion saturates, and maps NaN to 0, which LLVM does element by element, outside the
/// vectors: it made the encoding loops scalar.
#[inline(always)]
fn floor_small(v: f32) -> u32 {
    // Adding 2^23 rounds `v` to the nearest integer, which is then the low bits of the sum; one
    // less if that rounded up.
    const SHIFT: f32 = 8_388_608.0;
    let sum = v + SHIFT;
    let nearest = sum.to_bits() - SHIFT.to_bits();
    nearest - u32::from(sum - SHIFT > v)
}

/// The code (`0..=127`) of the largest magnitude not above `magnitude`, which is not negative
/// (NaN gives 0).
#[inline(always)]
fn magnitude_toward_zero(magnitude: f32) -> u32 {
    // Normal: rebias the exponent from 127 to 7 and drop the 20 low mantissa bits (truncation).
    let normal = (magnitude.to_bits().wrapping_sub(120 << 23) >> 20).min(0x7F);
    // Below 2^-6: multiples of 2^-9, rounded down (NaN is not below, and gives 0).
    let small = magnitude < pow2(-6);
    let subnormal = floor_small(if small { magnitude * 512.0 } else { 0.0 });
    if small {
        subnormal
    } else if magnitude >= pow2(-6) {
        normal
    } else {
        0
    }
}

/// The code (`0..=255`) of the smallest value not below `x` (`x <= 496`); only 0, a negative
/// `x` or NaN give 0.
#[inline(always)]
fn unsigned_code_up(x: f32) -> u32 {
    // Normal: rebias the exponent from 127 to 7 and round the 19 low mantissa bits up (the carry
    // may move into the exponent, which is the next code).
    let normal = (x
        .to_bits()
        .wrapping_sub(120 << 23)
        .wrapping_add((1 << 19) - 1)
        >> 19)
        .min(0xFF);
    // Below 2^-6: multiples of 2^-10, rounded up.
    let small = x < pow2(-6);
    let scaled = if small && x > 0.0 { x * 1024.0 } else { 0.0 };
    let floor = floor_small(scaled);
    let subnormal = floor + u32::from((floor as i32 as f32) < scaled);
    let code = if small { subnormal } else { normal };
    // `x > 0` is false for NaN too.
    if x > 0.0 {
        code.max(1)
    } else {
        0
    }
}

/// The `exp_avg` code of the largest magnitude not above `|x|` (`x` already divided by the
/// scale, `|x| <= 480`), with `x`'s sign; NaN gives 0 (the scale carries the NaN).
#[inline(always)]
pub fn encode_signed_toward_zero(x: f32) -> u8 {
    let code = magnitude_toward_zero(x.abs());
    let sign = if x.is_sign_negative() && code != 0 {
        0x80
    } else {
        0
    };
    (code | sign) as u8
}

/// The `exp_inf` code of the smallest value not below `x` (`0 <= x <= 496`, already divided by
/// the scale); only `x == 0` gives code 0. NaN gives 0 (the scale carries the NaN).
#[inline(always)]
pub fn encode_unsigned_up(x: f32) -> u8 {
    unsigned_code_up(x) as u8
}

/// The smallest f32 above a finite, non-negative `x`.
#[inline(always)]
fn next_up(x: f32) -> f32 {
    f32::from_bits(x.to_bits() + 1)
}

/// The scale of a block whose largest magnitude is `largest`, for a code whose largest value is
/// `top`: about `largest / top`, as an f32 (scales are stored as float32), rounded up until
/// `top * scale`, computed exactly as decoding computes it (in `C`), reaches `largest`. Zero for
/// an all-zero block; NaN and infinity pass through.
#[inline(always)]
pub fn block_scale<C: Float>(largest: C, top: f32) -> f32 {
    let mut scale = to_f32(largest) / top;
    // The division and the narrowing each round: at most a few steps up.
    while scale.is_finite() && scaled(top, C::from_f64(f64::from(scale))) < largest {
        scale = next_up(scale);
    }
    scale
}

/// The scale of a block whose largest magnitude is `largest`, for a code whose largest value is
/// `top`: the smallest power of two `scale` (an f32, subnormal ones included) with
/// `top * scale >= largest`, computed exactly as decoding computes it (in `C`). Zero for an
/// all-zero block; NaN and infinity pass through. Near float32's largest values, where
/// `top * scale` would overflow `C` (the top codes would decode to infinity), the tightest
/// scale instead ([`block_scale`]), which is not a power of two (such a block is encoded on
/// the two-sided path, see [`one_sided_checks_suffice`]).
///
/// A power of two costs no precision: the codes are floating-point, so their relative spacing
/// is the same on any scale, and the block's largest code lands between `top / 2` and `top`
/// instead of on `top` (one binade of the range, at the bottom, is given up). In exchange,
/// dividing by the scale is exact in f32, so a code read from the quotient's bits is the
/// tightest with no check after it, and the rounding between two codes can be read off the
/// bits too ([`encode_exp_avg_block`], [`encode_exp_inf_block`]).
#[inline(always)]
pub fn power_of_two_scale<C: Float>(largest: C, top: f32) -> f32 {
    // In f64, so that an f64 value beyond float32's range still gets a finite scale when one
    // fits it.
    let estimate = (largest.to_f64() / f64::from(top)) as f32;
    if !estimate.is_finite() || largest == C::from_f64(0.0) {
        // NaN, infinity, or an all-zero block.
        return estimate;
    }
    // The power of two at or below the estimate (the smallest f32 if the quotient underflowed):
    // the estimate is at most an ulp off, so at most a doubling or two is left.
    let bits = estimate.to_bits();
    let mut scale = match bits {
        0 => f32::from_bits(1),
        1..0x0080_0000 => f32::from_bits(1 << (31 - bits.leading_zeros())),
        _ => f32::from_bits(bits & 0xFF80_0000),
    };
    while scale.is_finite() && scaled(top, C::from_f64(f64::from(scale))) < largest {
        scale *= 2.0;
    }
    let top_value = scaled(top, C::from_f64(f64::from(scale)));
    if scale.is_finite() && !top_value.to_f64().is_finite() {
        return block_scale(largest, top);
    }
    scale
}

/// The arrays of one tensor (or a block-aligned piece of it) with 8-bit state: the parameter and
/// gradient stored as `P`, the codes and scales of both moments, and an optional float32 master
/// copy of the parameter.
#[derive(Debug)]
pub struct QuantizedSlices<'a, P> {
    pub(crate) param: &'a mut [P],
    pub(crate) grad: &'a [P],
    pub(crate) exp_avg: &'a mut [u8],
    pub(crate) exp_inf: &'a mut [u8],
    pub(crate) exp_avg_scale: &'a mut [f32],
    pub(crate) exp_inf_scale: &'a mut [f32],
    pub(crate) master: Option<&'a mut [f32]>,
}

/// The slices given to [`QuantizedSlices::new`] do not fit together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizedMismatch;

impl<'a, P> QuantizedSlices<'a, P> {
    /// Groups the slices of one tensor: codes as long as the parameter, one scale per
    /// [`BLOCK`] (the last block may be partial).
    pub fn new(
        param: &'a mut [P],
        grad: &'a [P],
        exp_avg: &'a mut [u8],
        exp_inf: &'a mut [u8],
        exp_avg_scale: &'a mut [f32],
        exp_inf_scale: &'a mut [f32],
        master: Option<&'a mut [f32]>,
    ) -> Result<Self, QuantizedMismatch> {
        let n = param.len();
        let blocks = n.div_ceil(BLOCK);
        let fits = grad.len() == n
            && exp_avg.len() == n
            && exp_inf.len() == n
            && exp_avg_scale.len() == blocks
            && exp_inf_scale.len() == blocks
            && master.as_ref().is_none_or(|m| m.len() == n);
        if !fits {
            return Err(QuantizedMismatch);
        }
        Ok(QuantizedSlices {
            param,
            grad,
            exp_avg,
            exp_inf,
            exp_avg_scale,
            exp_inf_scale,
            master,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.param.len()
    }

    /// `true` when there is nothing to update.
    pub fn is_empty(&self) -> bool {
        self.param.is_empty()
    }

    /// `true` when a master copy is updated too.
    pub fn has_master(&self) -> bool {
        self.master.is_some()
    }

    /// The same slices, borrowed for a shorter time.
    pub fn reborrow(&mut self) -> QuantizedSlices<'_, P> {
        QuantizedSlices {
            param: self.param,
            grad: self.grad,
            exp_avg: self.exp_avg,
            exp_inf: self.exp_inf,
            exp_avg_scale: self.exp_avg_scale,
            exp_inf_scale: self.exp_inf_scale,
            master: self.master.as_deref_mut(),
        }
    }

    /// Splits into the first `blocks` blocks and the rest.
    pub fn split_at_block(self, blocks: usize) -> (Self, Self) {
        let blocks = blocks.min(self.exp_avg_scale.len());
        let mid = (blocks * BLOCK).min(self.len());
        let (p0, p1) = self.param.split_at_mut(mid);
        let (g0, g1) = self.grad.split_at(mid);
        let (m0, m1) = self.exp_avg.split_at_mut(mid);
        let (u0, u1) = self.exp_inf.split_at_mut(mid);
        let (ms0, ms1) = self.exp_avg_scale.split_at_mut(blocks);
        let (us0, us1) = self.exp_inf_scale.split_at_mut(blocks);
        let (w0, w1) = match self.master {
            Some(w) => {
                let (a, b) = w.split_at_mut(mid);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        (
            QuantizedSlices {
                param: p0,
                grad: g0,
                exp_avg: m0,
                exp_inf: u0,
                exp_avg_scale: ms0,
                exp_inf_scale: us0,
                master: w0,
            },
            QuantizedSlices {
                param: p1,
                grad: g1,
                exp_avg: m1,
                exp_inf: u1,
                exp_avg_scale: ms1,
                exp_inf_scale: us1,
                master: w1,
            },
        )
    }
}

/// The stored value of code `code` with scale `scale`, in the compute type: exactly what the
/// next step will read back.
#[inline(always)]
fn scaled<C: Float>(code_value: f32, scale: C) -> C {
    C::from_f64(f64::from(code_value)) * scale
}

/// The largest `|x|` over `xs` (zero when empty), NaN if any is NaN.
///
/// An integer maximum over the magnitudes' bits (see [`Float::magnitude_bits`]): integer
/// maxima may be taken in any order, so LLVM keeps one per vector lane and combines them at the
/// end. A float maximum that propagates NaN is not associative for it, and the side-by-side
/// float maxima written out by hand came out as scalar inserts: a fifth of an 8-bit step.
#[inline(always)]
fn largest_magnitude<C: Float>(xs: &[C]) -> C {
    C::from_bits(
        xs.iter()
            .map(|x| x.magnitude_bits())
            .max()
            .unwrap_or_default(),
    )
}

/// Encodes one block's `exp_avg` values `m` into `codes`, truncating toward zero; returns the
/// scale.
#[inline(always)]
pub fn encode_exp_avg<C: Float>(m: &[C], codes: &mut [u8]) -> f32 {
    // `m` stands in for `exp_inf` and the noise is zeros: neither is read without rounding
    // stochastically.
    encode_exp_avg_rounding::<C, false>(m, m, &NO_NOISE, C::from_f64(0.0), codes)
}

/// Encodes one block's `exp_avg` values `m` into `codes`, rounding each value stochastically
/// with the random bits `noise` (one word per value, its top 16 bits used); returns the scale.
/// `u` are the block's new `exp_inf` values and `bound` is [`exp_avg_bound`]: no value is
/// rounded up to a code above `bound * u`.
///
/// Rounding up with probability equal to the distance above the code below, in units of the
/// spacing, makes the stored value right on average: truncation shrinks `|exp_avg|` by half a
/// code (3%) each step on average, which its moving average compounds. Adamax's step is bounded
/// because `|m| <= bound * u` holds step after step; a code above that could let the excess
/// compound, so such a value is truncated instead, and the stored values keep the float32 bound
/// (to the rounding of `bound * u`). Below the normal range too (codes under 2^-6 of the scale,
/// multiples of 2^-9): truncating them there, as this did first, shrank small moments most
/// since power-of-two scales put the range's bottom up to twice as high, and the spirals demo's
/// final loss spread from float32 state's more (up to +8% over 11 seeds, from +3.4% rounded).
#[inline(always)]
pub fn encode_exp_avg_stochastic<C: Float>(
    m: &[C],
    u: &[C],
    noise: &[u32],
    bound: C,
    codes: &mut [u8],
) -> f32 {
    encode_exp_avg_rounding::<C, true>(m, u, noise, bound, codes)
}

/// Adamax's bound on `|exp_avg| / exp_inf`, `(1 - beta1) / (1 - beta1 / beta2)` (computed in
/// f64 from the compute type's betas, then rounded to it); infinite when `beta1 >= beta2`,
/// where there is none.
#[inline(always)]
pub fn exp_avg_bound<C: Float>(c: &Coefficients<C>) -> C {
    let (beta1, beta2) = (c.beta1.to_f64(), c.beta2.to_f64());
    C::from_f64(if beta1 < beta2 {
        (1.0 - beta1) / (1.0 - beta1 / beta2)
    } else {
        f64::INFINITY
    })
}

/// The noise of a block that is not rounded stochastically (never read).
static NO_NOISE: [u32; BLOCK] = [0; BLOCK];

/// The smallest `exp_avg` magnitude code of the normal range (exponent 1).
const FIRST_NORMAL_SIGNED: u32 = 8;

/// The smallest `exp_inf` code of the normal range (exponent 1).
const FIRST_NORMAL_UNSIGNED: u32 = 16;

/// `2^-16`: a 16-bit integer times this is a fraction in `[0, 1)`, exactly.
const NOISE_UNIT: f32 = 1.0 / 65_536.0;

/// A 16-bit integer as a fraction in `[0, 1)`, in the compute type. Exact in f32, so it is
/// computed there, from an i32: x86 before AVX-512 has no vector conversion from u32, and an
/// f64 product made the AVX2 loops scalar.
#[inline(always)]
fn noise_fraction<C: Float>(bits16: u32) -> C {
    C::from_f64(f64::from(bits16 as i32 as f32 * NOISE_UNIT))
}

/// The fraction that rounds an element's `exp_avg` stochastically: the high 16 bits of its
/// random word, as bfloat16 state's `exp_avg` takes them.
#[inline(always)]
fn exp_avg_fraction<C: Float>(bits: u32) -> C {
    noise_fraction(bits >> 16)
}

/// The fraction that rounds an element's `exp_inf` stochastically: the low 16 bits of its
/// random word, apart from `exp_avg`'s, as bfloat16 state's `exp_inf` takes them.
#[inline(always)]
fn exp_inf_fraction<C: Float>(bits: u32) -> C {
    noise_fraction(bits & 0xFFFF)
}

#[inline(always)]
fn encode_exp_avg_rounding<C: Float, const STOCHASTIC: bool>(
    m: &[C],
    u: &[C],
    noise: &[u32],
    bound: C,
    codes: &mut [u8],
) -> f32 {
    debug_assert!(codes.len() == m.len() && u.len() >= m.len() && noise.len() >= m.len());
    let zero = C::from_f64(0.0);
    let largest = largest_magnitude(m);
    let scale32 = power_of_two_scale(largest, MAX_SIGNED);
    // With an all-zero block every code is 0 (its quotients are 0); 127 stops the search
    // upward.
    let top = if largest > zero { 0x7F } else { 0 };
    if one_sided_checks_suffice(scale32) {
        // In f32 the quotients are exact (`1 / scale` is a power of two); in f64 they are
        // narrowed to f32, and the estimate is pushed to one side (see `ESTIMATE_MARGIN`) and
        // checked once.
        let margin = if C::IS_F32 { 0.0 } else { ESTIMATE_MARGIN };
        let inverse =
            C::from_f64(1.0) / C::from_f64(f64::from(scale32)) * C::from_f64(1.0 + margin);
        encode_exp_avg_block::<C, STOCHASTIC, false>(
            m, u, noise, bound, codes, scale32, inverse, top,
        );
    } else {
        encode_exp_avg_block::<C, STOCHASTIC, true>(m, u, noise, bound, codes, scale32, zero, top);
    }
    scale32
}

/// The relative margin by which a code's estimate is pushed to one side of the exact quotient,
/// where that is not exact (f64 values narrowed to f32, or a scale that is not a power of two):
/// several times the few roundings between them (the reciprocal, the margin's product, the
/// value's product, the narrowing to f32: each under 2^-24, about 2^-22 together), far less
/// than the spacing of codes (1/31 at least), so the estimate is the tightest code or the one
/// next to it on the known side, and one comparison of decoded values settles which.
const ESTIMATE_MARGIN: f64 = 1.0 / 1_048_576.0;

/// Whether a block with this scale is encoded from `magnitude * (1 / scale)`: its scale is
/// at least 2^-100, so `1 / scale` is a normal f32 (exact, for a power of two), and every
/// product of a normal code, a noise fraction and the scale is a normal f32 too, so that the
/// decoded values the roundings compare are exact; and at most 2^100, which leaves out the
/// scales near float32's largest that are not powers of two where powers of two are the rule
/// ([`power_of_two_scale`]). Other blocks (scales below 2^-100, subnormal ones among them,
/// above 2^100, and zero, infinite or NaN scales) are rare, and check both neighbours of an
/// estimate computed by division ([`exact_quotient`]).
#[inline(always)]
fn one_sided_checks_suffice(scale: f32) -> bool {
    (pow2(-100)..=pow2(100)).contains(&scale)
}

/// `magnitude / scale` in f64, then to f32; `magnitude * 0` when the scale is 0 or NaN, as a
/// zero reciprocal gives (an all-zero block's codes are 0; a block a NaN spoiled decodes to NaN
/// whatever its codes). Used for the blocks [`one_sided_checks_suffice`] leaves out, where
/// `1 / scale` could overflow float32 (a subnormal scale): the quotient is still within a
/// rounding of the exact one, so the stored values keep their side of the computed ones
/// (rounding is monotonic) after the checks.
#[inline(always)]
fn exact_quotient<C: Float>(magnitude: C, scale: f32) -> f32 {
    let magnitude = magnitude.to_f64();
    if scale > 0.0 {
        (magnitude / f64::from(scale)) as f32
    } else {
        (magnitude * 0.0) as f32
    }
}

/// The quotient a code is estimated from: [`exact_quotient`] on the two-sided path, or
/// `magnitude * inverse` (the reciprocal, margined in f64) on the one-sided one. Both encoders
/// use it.
#[inline(always)]
fn code_quotient<C: Float, const TWO_SIDED: bool>(magnitude: C, inverse: C, scale: f32) -> f32 {
    if TWO_SIDED {
        exact_quotient(magnitude, scale)
    } else {
        to_f32(magnitude * inverse)
    }
}

/// The mantissa bits of an f32 below the top `MANTISSA` ones: where a normal quotient sits
/// between the code its top bits give and the next, in units of `2^-(23 - MANTISSA)` spacings.
#[inline(always)]
fn bits_below_code<const MANTISSA: u32>(quotient: f32) -> u32 {
    quotient.to_bits() & ((1 << (23 - MANTISSA)) - 1)
}

/// The `exp_avg` loop of [`encode_exp_avg_rounding`] over one block, estimating each code from
/// [`code_quotient`]. `TWO_SIDED`: the estimate may be one code off either way (`inverse` is
/// not used). Otherwise, in f32, `inverse` is the exact reciprocal of the power-of-two scale:
/// the quotient is exact and its code the tightest. In f64, `inverse` is pushed up by
/// [`ESTIMATE_MARGIN`], and the estimate can only be one too far from zero.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn encode_exp_avg_block<C: Float, const STOCHASTIC: bool, const TWO_SIDED: bool>(
    m: &[C],
    u: &[C],
    noise: &[u32],
    bound: C,
    codes: &mut [u8],
    scale32: f32,
    inverse: C,
    top: u32,
) {
    let exact = C::IS_F32 && !TWO_SIDED;
    let zero = C::from_f64(0.0);
    let scale = C::from_f64(f64::from(scale32));
    for (((code, &x), &bits), &limit) in codes.iter_mut().zip(m).zip(noise).zip(u) {
        let magnitude = x.abs();
        let quotient = code_quotient::<C, TWO_SIDED>(magnitude, inverse, scale32);
        let c = magnitude_toward_zero(quotient);
        // Codes are monotonic: one toward zero if the stored magnitude came out larger than the
        // computed one; with two sides, one away from zero if that one still is not larger.
        // Without the second a value exactly on a code (a block's largest, with the tightest
        // scales there were before power-of-two ones) often lost a whole code (7%); the margin
        // of the one-sided estimate keeps it.
        let c = if exact {
            c
        } else if scaled(signed_magnitude(c), scale) > magnitude {
            c.saturating_sub(1)
        } else if TWO_SIDED && scaled(signed_magnitude((c + 1).min(top)), scale) <= magnitude {
            (c + 1).min(top)
        } else {
            c
        };
        // Up one code with probability (|m| - below) / (above - below), unless the code above
        // is beyond the bound.
        let c = if STOCHASTIC && c < top {
            let above = scaled(signed_magnitude(c + 1), scale);
            let drawn = if exact && c >= FIRST_NORMAL_SIGNED {
                // The exact quotient's bits below its code are that fraction, in 20 bits; the
                // noise's 16 bits, shifted to match, are the fraction below which it goes up.
                // (The same comparison as below, made exactly.)
                ((bits >> 16) << 4) < bits_below_code::<3>(quotient)
            } else {
                // Both differences are exact (`below <= |m| < above <= 2 below`, or `below`
                // is 0: Sterbenz), so only the products round (and with an exact quotient
                // they do not: a scale of 2^-100 or more keeps them normal). Subnormal codes
                // take this form even then: their quotient may have underflowed, `|m|` not.
                let below = scaled(signed_magnitude(c), scale);
                exp_avg_fraction::<C>(bits) * (above - below) < magnitude - below
            };
            c + u32::from(drawn & (above <= bound * limit))
        } else {
            c
        };
        let sign = if x < zero && c != 0 { 0x80 } else { 0 };
        *code = (c | sign) as u8;
    }
}

/// Ulps added to a decayed `exp_inf` scale: more than the decoding and the decay round off
/// (a few ulps), so that an element whose new value is its old one decayed keeps its code.
const DECAY_SLACK_ULPS: u32 = 8;

/// The scale of a block of new `exp_inf` values whose largest is `largest`, when the block's
/// previous scale was `previous` and the moments decay by `beta2`.
///
/// `exp_inf` is rounded up, so an element that only decays (`u = beta2 * u`, about 0.1% less)
/// would round back up to its old code on a scale that did not move, and never decay: the
/// block's scale moves only with its largest element, which new gradients keep refreshing.
/// Instead the scale decays too: the previous scale times `beta2`, plus [`DECAY_SLACK_ULPS`],
/// which keeps every code that only decayed exactly where it was. It is used while it fits
/// the block (`top * scale >= largest`) and is less than twice the tightest scale
/// ([`block_scale`]); otherwise the tightest is. Either way each code is then rounded up, so the
/// guarantee is the same: no stored `exp_inf` is below the computed one (unless it is then
/// rounded stochastically, [`encode_exp_inf_stochastic`], which needs no decaying scale).
#[inline(always)]
pub fn exp_inf_scale<C: Float>(largest: C, previous: f32, beta2: C) -> f32 {
    let tight = block_scale(largest, MAX_UNSIGNED);
    if !(previous > 0.0 && previous.is_finite()) {
        return tight;
    }
    let decayed = (f64::from(previous) * beta2.to_f64()) as f32;
    let decayed = f32::from_bits(decayed.to_bits() + DECAY_SLACK_ULPS);
    // `tight <= decayed` is false for a NaN `tight` (and an all-zero block has `tight == 0`).
    if decayed.is_finite() && tight <= decayed && decayed < 2.0 * tight {
        decayed
    } else {
        tight
    }
}

/// Encodes one block's `exp_inf` values `u` (at most [`BLOCK`]) into `codes`, rounding up, with
/// the tightest scale; returns the scale.
#[inline(always)]
pub fn encode_exp_inf<C: Float>(u: &[C], codes: &mut [u8]) -> f32 {
    // `u` is not negative: its magnitude is itself (a NaN's sign aside).
    let scale = block_scale(largest_magnitude(u), MAX_UNSIGNED);
    encode_exp_inf_with_scale::<C, false>(u, codes, scale, ExpInfRounding::up())
}

/// Encodes one block's `exp_inf` values `u` (at most [`BLOCK`]) into `codes` on a new scale that
/// follows the previous one as it decays ([`exp_inf_scale`]), rounding up; returns the scale.
#[inline(always)]
pub fn encode_decaying_exp_inf<C: Float>(
    u: &[C],
    codes: &mut [u8],
    previous: f32,
    beta2: C,
) -> f32 {
    let scale = exp_inf_scale(largest_magnitude(u), previous, beta2);
    encode_exp_inf_with_scale::<C, false>(u, codes, scale, ExpInfRounding::up())
}

/// What rounding `exp_inf` stochastically reads besides the values: each value's random word
/// (`noise`, its low 16 bits used), and the block's `exp_avg`, already encoded (its codes and
/// scale), with Adamax's `bound` on `|exp_avg| / exp_inf` ([`exp_avg_bound`]).
#[derive(Clone, Copy, Debug)]
pub struct ExpInfRounding<'a, C> {
    pub noise: &'a [u32],
    pub exp_avg_codes: &'a [u8],
    pub exp_avg_scale: f32,
    pub bound: C,
}

/// The `exp_avg` codes of a block that is not rounded stochastically (never read).
static NO_CODES: [u8; BLOCK] = [0; BLOCK];

impl<C: Float> ExpInfRounding<'static, C> {
    /// For rounding up only: nothing in it is read.
    fn up() -> Self {
        ExpInfRounding {
            noise: &NO_NOISE,
            exp_avg_codes: &NO_CODES,
            exp_avg_scale: 0.0,
            bound: C::from_f64(0.0),
        }
    }
}

/// Encodes one block's `exp_inf` values `u` into `codes` on the smallest power-of-two scale
/// that fits them ([`power_of_two_scale`]), rounding each value up and then, in the same loop,
/// stochastically: it moves down one code with probability equal to the value's distance below
/// its code, in units of the spacing. The stored value is then right on average, so an element
/// that decays by 0.1% a step decays, even in a block whose largest value new gradients keep
/// refreshing (rounding up would put it back on its old code every step). So the scale need
/// not follow the decay ([`exp_inf_scale`]), and can be a power of two. Returns the scale.
///
/// Adamax's step is bounded because `|m| <= bound * u` holds step after step (see the module's
/// documentation). Rounding `u` down could break that, and the steps could then grow past the
/// float32 bound. So a code moves down only when the stored `exp_avg` (`rounding`'s codes on
/// its scale, already encoded: never above `bound` times the new `u`) stays within `bound`
/// times the code below. Only codes whose code below is in the normal range (2^-6 times the
/// scale or more) move, and never to 0: a positive `u` stays positive.
#[inline(always)]
pub fn encode_exp_inf_stochastic<C: Float>(
    u: &[C],
    codes: &mut [u8],
    rounding: ExpInfRounding<'_, C>,
) -> f32 {
    let scale = power_of_two_scale(largest_magnitude(u), MAX_UNSIGNED);
    encode_exp_inf_with_scale::<C, true>(u, codes, scale, rounding)
}

/// Encodes `u` into `codes` on `scale`, which fits every value (`top * scale >= max(u)`),
/// rounding up, then (with `STOCHASTIC`, whose scale is a power of two) stochastically with
/// `rounding`.
#[inline(always)]
fn encode_exp_inf_with_scale<C: Float, const STOCHASTIC: bool>(
    u: &[C],
    codes: &mut [u8],
    scale32: f32,
    rounding: ExpInfRounding<'_, C>,
) -> f32 {
    // One block at most: the loop zips the values with `rounding`'s slices (`BLOCK` long when
    // not rounding stochastically).
    debug_assert!(
        codes.len() == u.len()
            && rounding.noise.len() >= u.len()
            && rounding.exp_avg_codes.len() >= u.len()
    );
    // Rounding stochastically, the one-sided path reads codes off exact quotients: it needs a
    // power of two (the scales that are not, near float32's largest, are above its range).
    debug_assert!(
        !STOCHASTIC || !one_sided_checks_suffice(scale32) || scale32.to_bits() & 0x007F_FFFF == 0
    );
    if one_sided_checks_suffice(scale32) {
        // With a power-of-two scale in f32 the quotients are exact. Otherwise the estimate is
        // pushed down (see `ESTIMATE_MARGIN`), never above the tightest code: one check.
        let exact = STOCHASTIC && C::IS_F32;
        let margin = if exact { 0.0 } else { ESTIMATE_MARGIN };
        let scale = C::from_f64(f64::from(scale32));
        let inverse = C::from_f64(1.0) / scale * C::from_f64(1.0 - margin);
        encode_exp_inf_block::<C, false, STOCHASTIC>(u, codes, scale32, inverse, rounding);
    } else {
        // An all-zero block (scale 0) gets codes 0; a NaN one decodes to NaN whatever its codes
        // (the scale carries the NaN).
        let zero = C::from_f64(0.0);
        encode_exp_inf_block::<C, true, STOCHASTIC>(u, codes, scale32, zero, rounding);
    }
    scale32
}

/// The `exp_inf` loop of [`encode_exp_inf_with_scale`] over one block, estimating each code from
/// [`code_quotient`]. `TWO_SIDED`: the estimate may be one code off either way (`inverse` is
/// not used). Otherwise, rounding stochastically in f32, `inverse` is the exact reciprocal of
/// the power-of-two scale: the quotient is exact and its code the tightest. Otherwise still,
/// `inverse` is pushed down by [`ESTIMATE_MARGIN`], and the estimate can only be one too low.
/// `STOCHASTIC`: the code rounded up may then move down one
/// ([`encode_exp_inf_stochastic`]); one loop, so the codes are not read back and decoded again
/// in a second pass.
#[inline(always)]
fn encode_exp_inf_block<C: Float, const TWO_SIDED: bool, const STOCHASTIC: bool>(
    u: &[C],
    codes: &mut [u8],
    scale32: f32,
    inverse: C,
    rounding: ExpInfRounding<'_, C>,
) {
    let exact = STOCHASTIC && C::IS_F32 && !TWO_SIDED;
    let zero = C::from_f64(0.0);
    let scale = C::from_f64(f64::from(scale32));
    let m_scale = C::from_f64(f64::from(rounding.exp_avg_scale));
    let bound = rounding.bound;
    let others = rounding.noise.iter().zip(rounding.exp_avg_codes);
    for ((code, &x), (&bits, &m_code)) in codes.iter_mut().zip(u).zip(others) {
        let quotient = code_quotient::<C, TWO_SIDED>(x, inverse, scale32);
        let c = unsigned_code_up(quotient.min(MAX_UNSIGNED));
        // One code up if the stored value came out below the computed one; with two sides, one
        // down if the code below is still not below it (never down to 0 for a positive `x`).
        // An exact quotient needs neither, but may have underflowed to 0 for a positive `x`
        // far below the block's largest: its code is 1 then.
        let down = if c > 1 { c - 1 } else { c };
        let c = if exact {
            c.max(u32::from(x > zero))
        } else if scaled(unsigned_value(c), scale) < x {
            (c + 1).min(0xFF)
        } else if TWO_SIDED && scaled(unsigned_value(down), scale) >= x {
            down
        } else {
            c
        };
        let c = if STOCHASTIC {
            // Only codes above the first normal one move, so both codes are normal where it
            // matters (elsewhere the values are not used).
            let below = scaled(normal_small_float_value::<4>(c.saturating_sub(1)), scale);
            // Down with probability (above - x) / (above - below).
            let drawn = if exact {
                // The exact quotient's bits below its code, `r` (in 19 bits), put it
                // `1 - r / 2^19` spacings below the code it rounded up to (none when `r` is 0:
                // it is on that code); the noise's 16 bits, shifted to match, must fall below
                // that. (The same comparison as below, made exactly.)
                let r = bits_below_code::<4>(quotient);
                (r != 0) & (((bits & 0xFFFF) << 3) + r < 1 << 19)
            } else {
                // Both differences are exact (`below < x <= above`, within a factor of two:
                // Sterbenz), so only the product rounds; a value on its code (`x == above`)
                // never moves, and NaN never does.
                let above = scaled(normal_small_float_value::<4>(c), scale);
                exp_inf_fraction::<C>(bits) * (above - below) < above - x
            };
            let stored_m = scaled(signed_magnitude(u32::from(m_code) & 0x7F), m_scale);
            // `&`, not `&&`: no branches, so the loop vectorises.
            let moves = (c > FIRST_NORMAL_UNSIGNED) & drawn & (stored_m <= bound * below);
            c - u32::from(moves)
        } else {
            c
        };
        *code = c as u8;
    }
}

/// `x` as an f32 (exact for f32; rounded for f64, which the verification after encoding absorbs).
#[inline(always)]
fn to_f32<C: Float>(x: C) -> f32 {
    x.to_f64() as f32
}

/// One element's update with 8-bit state: its moments decoded from `codes` on the block's old
/// `scales`, the new parameter stored (read from and written through the master copy when there
/// is one, as the float state's update does), and its new moments returned, with its random bits
/// for stochastic rounding (0 without `STOCHASTIC`).
#[inline(always)]
fn quantized_element<
    P,
    C,
    const STOCHASTIC: bool,
    const MAXIMIZE: bool,
    const COUPLED: bool,
    const TORCH: bool,
>(
    param: &mut P,
    master: Option<&mut f32>,
    grad: P,
    codes: (u8, u8),
    scales: (C, C),
    c: &Coefficients<C>,
) -> (C, C, u32)
where
    C: Float,
    P: Storage<C>,
    f32: Storage<C>,
{
    let m = scaled(decode_signed(codes.0), scales.0);
    let u = scaled(decode_unsigned(codes.1), scales.1);
    let current = match &master {
        Some(w) => w.load(),
        None => param.load(),
    };
    let grad = grad.load();
    let (p, m, u) = adamax_math::<C, MAXIMIZE, COUPLED, TORCH>(current, grad, m, u, c);
    match master {
        Some(w) => {
            let stored = f32::store(p);
            *w = stored;
            *param = P::store(stored.load());
        }
        None => *param = P::store(p),
    }
    let random = if STOCHASTIC {
        state_noise(m, u, grad, c.rounding_salt).0
    } else {
        0
    };
    (m, u, random)
}

/// The Adamax update of one tensor with 8-bit state, block by block.
#[inline(always)]
pub(crate) fn quantized_run<
    P,
    C,
    const STOCHASTIC: bool,
    const MAXIMIZE: bool,
    const COUPLED: bool,
    const TORCH: bool,
>(
    s: QuantizedSlices<'_, P>,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    f32: Storage<C>,
{
    let QuantizedSlices {
        param,
        grad,
        exp_avg,
        exp_inf,
        exp_avg_scale,
        exp_inf_scale,
        mut master,
    } = s;
    let zero = C::from_f64(0.0);
    let mut new_m = [zero; BLOCK];
    let mut new_u = [zero; BLOCK];
    // Each element's random bits for stochastic rounding, drawn (as for bfloat16 state) from its
    // new moments, its gradient and the step (zeros without it, never read).
    let mut noise = [0u32; BLOCK];
    let bound = exp_avg_bound(c);
    for (block, (m_scale, u_scale)) in exp_avg_scale
        .iter_mut()
        .zip(exp_inf_scale.iter_mut())
        .enumerate()
    {
        let start = block * BLOCK;
        let end = (start + BLOCK).min(param.len());
        let n = end - start;
        let (old_m_scale, old_u_scale) = (
            C::from_f64(f64::from(*m_scale)),
            C::from_f64(f64::from(*u_scale)),
        );
        let params = &mut param[start..end];
        let grads = &grad[start..end];
        let m_codes = &mut exp_avg[start..end];
        let u_codes = &mut exp_inf[start..end];
        let (m_out, u_out, bits) = (&mut new_m[..n], &mut new_u[..n], &mut noise[..n]);
        let scales = (old_m_scale, old_u_scale);
        // Two loops, so that the one without a master copy tests for none: one loop testing per
        // element, and a closure called from both, each made the 8-bit kernel bench 2-7x slower.
        match master.as_deref_mut().map(|w| &mut w[start..end]) {
            None => {
                for i in 0..n {
                    let codes = (m_codes[i], u_codes[i]);
                    let (m, u, random) =
                        quantized_element::<P, C, STOCHASTIC, MAXIMIZE, COUPLED, TORCH>(
                            &mut params[i],
                            None,
                            grads[i],
                            codes,
                            scales,
                            c,
                        );
                    (m_out[i], u_out[i], bits[i]) = (m, u, random);
                }
            }
            Some(weights) => {
                for i in 0..n {
                    let codes = (m_codes[i], u_codes[i]);
                    let (m, u, random) =
                        quantized_element::<P, C, STOCHASTIC, MAXIMIZE, COUPLED, TORCH>(
                            &mut params[i],
                            Some(&mut weights[i]),
                            grads[i],
                            codes,
                            scales,
                            c,
                        );
                    (m_out[i], u_out[i], bits[i]) = (m, u, random);
                }
            }
        }
        *m_scale = if STOCHASTIC {
            encode_exp_avg_stochastic(m_out, u_out, bits, bound, m_codes)
        } else {
            encode_exp_avg(m_out, m_codes)
        };
        *u_scale = if STOCHASTIC {
            let rounding = ExpInfRounding {
                noise: bits,
                exp_avg_codes: m_codes,
                exp_avg_scale: *m_scale,
                bound,
            };
            encode_exp_inf_stochastic(u_out, u_codes, rounding)
        } else {
            encode_decaying_exp_inf(u_out, u_codes, *u_scale, c.beta2)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_decodes_to_a_finite_value_and_codes_are_ordered() {
        let mut previous = -1.0f32;
        for code in 0..=255u8 {
            let v = decode_unsigned(code);
            assert!(
                v.is_finite() && v > previous,
                "unsigned {code}: {v} after {previous}"
            );
            previous = v;
        }
        assert_eq!(decode_unsigned(255), MAX_UNSIGNED);
        assert_eq!(decode_unsigned(1), 2f32.powi(-10));
        let mut previous = -1.0f32;
        for code in 0..=127u8 {
            let v = decode_signed(code);
            assert!(v.is_finite() && v > previous, "signed {code}: {v}");
            assert_eq!(decode_signed(code | 0x80), -v);
            previous = v;
        }
        assert_eq!(decode_signed(127), MAX_SIGNED);
        assert_eq!(decode_signed(1), 2f32.powi(-9));
    }

    #[test]
    fn floor_small_is_floor() {
        // Every quarter up to 64, where the encoders use it, and the edges of its range.
        let mut xs: Vec<f32> = (0..=256).map(|k| k as f32 / 4.0).collect();
        for x in [
            0.5,
            1.5,
            2.5,
            7.999_999,
            15.999_999,
            4_194_303.5,
            4_194_304.0,
        ] {
            xs.extend([x, next_up(x)]);
        }
        for x in xs {
            assert_eq!(floor_small(x), x.floor() as u32, "{x}");
        }
    }

    #[test]
    fn every_code_value_encodes_to_itself() {
        for code in 0..=255u8 {
            assert_eq!(encode_unsigned_up(decode_unsigned(code)), code);
        }
        for code in 0..=127u8 {
            assert_eq!(encode_signed_toward_zero(decode_signed(code)), code);
            if code != 0 {
                assert_eq!(
                    encode_signed_toward_zero(decode_signed(code | 0x80)),
                    code | 0x80
                );
            }
        }
    }

    /// Between every two neighbouring code values, and on either side of each: rounding up never
    /// gives less, truncating never gives more, and each picks the nearest code in its direction.
    #[test]
    fn directed_rounding_between_neighbouring_codes() {
        for code in 0..255u8 {
            let (low, high) = (decode_unsigned(code), decode_unsigned(code + 1));
            for t in [0.0f32, 1e-6, 0.25, 0.5, 0.75, 0.999_999] {
                let x = low + (high - low) * t;
                let c = encode_unsigned_up(x);
                assert!(decode_unsigned(c) >= x, "{x} -> {c}");
                if x > low {
                    assert_eq!(c, code + 1, "{x} between codes {code} and {}", code + 1);
                }
            }
        }
        for code in 0..127u8 {
            let (low, high) = (decode_signed(code), decode_signed(code + 1));
            for t in [0.0f32, 1e-6, 0.25, 0.5, 0.999_999] {
                let x = low + (high - low) * t;
                let c = encode_signed_toward_zero(x);
                assert!(decode_signed(c) <= x);
                assert_eq!(c, if x < high { code } else { code + 1 }, "{x}");
                assert_eq!(
                    decode_signed(encode_signed_toward_zero(-x)),
                    -decode_signed(c)
                );
            }
        }
        // Positive but tiny: never zero.
        assert_eq!(encode_unsigned_up(1e-30), 1);
        assert_eq!(encode_unsigned_up(0.0), 0);
        assert_eq!(encode_signed_toward_zero(1e-30), 0);
    }

    #[test]
    fn blocks_keep_their_guarantees_with_any_scale() {
        // Values over 12 orders of magnitude in one block, in float32 and float64.
        let values: Vec<f64> = (0..BLOCK)
            .map(|i| {
                10f64.powf(-12.0 + 12.0 * (i as f64 / 255.0)) * if i % 3 == 0 { -1.0 } else { 1.0 }
            })
            .collect();
        let m32: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let u32v: Vec<f32> = values.iter().map(|&v| v.abs() as f32).collect();
        let mut codes = vec![0u8; BLOCK];
        let scale = encode_exp_avg(&m32, &mut codes);
        assert!(scale > 0.0);
        for (x, &c) in m32.iter().zip(&codes) {
            let stored = decode_signed(c) * scale;
            assert!(
                stored.abs() <= x.abs() && stored * x >= 0.0,
                "{x} stored as {stored}"
            );
        }
        let scale = encode_exp_inf(&u32v, &mut codes);
        for (x, &c) in u32v.iter().zip(&codes) {
            let stored = decode_unsigned(c) * scale;
            assert!(stored >= *x && stored > 0.0, "{x} stored as {stored}");
        }
        // The largest is kept exactly (it sets the scale), so decay is not lost.
        let largest = u32v.iter().cloned().fold(0.0, f32::max);
        assert_eq!(
            u32v.iter()
                .zip(&codes)
                .find(|(x, _)| **x == largest)
                .map(|(_, &c)| decode_unsigned(c) * scale),
            Some(largest)
        );
        let u64v: Vec<f64> = values.iter().map(|v| v.abs()).collect();
        let scale = f64::from(encode_exp_inf(&u64v, &mut codes));
        for (x, &c) in u64v.iter().zip(&codes) {
            assert!(f64::from(decode_unsigned(c)) * scale >= *x);
        }
    }

    /// Uniform numbers in [0, 1) from a xorshift generator started at `seed` (not zero): the
    /// same draws on every run and platform.
    fn uniform(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Each code is the tightest in its direction: the largest stored `|m|` not above `|x|`,
    /// the smallest stored `u` not below `u`, with stored values computed as a step decodes
    /// them (in f32). Random blocks over 12 orders of magnitude, by brute force over all codes.
    #[test]
    fn codes_are_the_tightest_in_their_direction() {
        let mut next = uniform(0x2545_F491_4F6C_DD1D);
        for _ in 0..200 {
            let values: Vec<f32> = (0..BLOCK)
                .map(|_| {
                    let sign = if next() < 0.5 { -1.0 } else { 1.0 };
                    (sign * next() * 10f64.powf(-12.0 * next()) * 10f64.powf(6.0 * next() - 3.0))
                        as f32
                })
                .collect();
            let mut codes = vec![0u8; BLOCK];
            let scale = encode_exp_avg(&values, &mut codes);
            for (&x, &c) in values.iter().zip(&codes) {
                let best = (0..=127u8)
                    .filter(|&k| decode_signed(k) * scale <= x.abs())
                    .max()
                    .unwrap();
                assert_eq!(c & 0x7F, best, "exp_avg {x} with scale {scale}");
            }
            let u: Vec<f32> = values.iter().map(|x| x.abs()).collect();
            let scale = encode_exp_inf(&u, &mut codes);
            for (&x, &c) in u.iter().zip(&codes) {
                let best = (0..=255u8)
                    .find(|&k| decode_unsigned(k) * scale >= x)
                    .unwrap();
                assert_eq!(
                    c,
                    best.max(u8::from(x > 0.0)),
                    "exp_inf {x} with scale {scale}"
                );
            }
        }
    }

    /// The tightest code in each direction, by brute force over all codes, with stored values
    /// computed as a step decodes them (in `C`).
    fn tightest_codes<C: Float>(x: C, scale: f32) -> (u8, u8) {
        let stored = |value: f32| scaled(value, C::from_f64(f64::from(scale)));
        let magnitude = x.abs();
        let signed = (0..=127u8)
            .filter(|&k| stored(decode_signed(k)) <= magnitude)
            .max()
            .unwrap_or(0);
        let unsigned = (0..=255u8)
            .find(|&k| stored(decode_unsigned(k)) >= magnitude)
            .unwrap_or(255)
            .max(u8::from(magnitude > C::from_f64(0.0)));
        (signed, unsigned)
    }

    /// Blocks whose values sit on the stored values of codes, and one or two ulps to either
    /// side: where an estimate of the code from a rounded quotient is most often one off, so
    /// the single check after it (the two checks of tiny scales) must land on the tightest code.
    /// In f32 and f64, with a block's largest value setting the scale or a decayed `exp_inf`
    /// scale, with ordinary and tiny scales (the two-sided path).
    ///
    /// Where the stored values themselves are subnormal (`subnormal(scale)`: f32 with a tiny
    /// scale), several codes can store the same value and "tightest" loses its meaning; there
    /// the guarantees are checked: no stored `|m|` above the computed one, no stored `u` below.
    fn codes_on_code_boundaries_are_the_tightest<C: Float>(
        step_ulps: impl Fn(C, i64) -> C,
        subnormal: impl Fn(f32) -> bool,
    ) {
        let mut next = uniform(0x9E37_79B9_7F4A_7C15);
        let beta2 = C::from_f64(0.999);
        for block in 0..400 {
            // Most blocks are ordinary; the others have scales at the edges: subnormal, or with
            // subnormal products for the smallest codes (two-sided), just below and above the
            // one-sided path's 2^-100, and near the largest float32.
            let magnitude = match block % 10 {
                0 => 1e-40,
                1 => 480.0 * 2f64.powi(-110),
                2 => 480.0 * 2f64.powf(-100.5),
                3 => 480.0 * 2f64.powf(-99.5),
                4 => 1e38,
                5 => 1e-33,
                // Powers of two would make the top codes infinite: the tightest scale, in f32.
                6 => 3.3e38,
                _ => 10f64.powf(12.0 * next() - 6.0),
            };
            let largest = C::from_f64(magnitude);
            let below = |x: C| if x < largest { x } else { largest };
            let check_rounded_up = |u: &[C], codes: &[u8], scale: f32| {
                for (&x, &c) in u.iter().zip(codes) {
                    let what = format!("exp_inf {} / {scale}", x.to_f64());
                    if subnormal(scale) {
                        let stored = scaled(decode_unsigned(c), C::from_f64(f64::from(scale)));
                        assert!(stored >= x && (c > 0) == (x.to_f64() > 0.0), "{what}");
                    } else {
                        assert_eq!(c, tightest_codes(x, scale).1, "{what}");
                    }
                }
            };
            // A value on the stored value of a random code of `decode` with `scale`, moved by
            // -2..=2 ulps, and no larger than the block's largest.
            let mut on_a_code = |i: usize, decode: fn(u8) -> f32, codes: f64, scale: f32| {
                let value = scaled(
                    decode((next() * codes) as u8),
                    C::from_f64(f64::from(scale)),
                );
                below(step_ulps(value, (i % 5) as i64 - 2).abs())
            };
            let signed_scale = power_of_two_scale(largest, MAX_SIGNED);
            let mut m = vec![largest; BLOCK];
            for (i, x) in m.iter_mut().enumerate().skip(1) {
                *x = on_a_code(i, decode_signed, 128.0, signed_scale);
                if i % 2 == 0 {
                    *x = -*x;
                }
            }
            let mut codes = vec![0u8; BLOCK];
            let scale = encode_exp_avg(&m, &mut codes);
            assert_eq!(scale, signed_scale);
            for (&x, &c) in m.iter().zip(&codes) {
                let what = format!("exp_avg {} / {scale}", x.to_f64());
                if subnormal(scale) {
                    let stored = scaled(decode_signed(c), C::from_f64(f64::from(scale)));
                    assert!(
                        stored.abs() <= x.abs() && (stored * x).to_f64() >= 0.0,
                        "{what}"
                    );
                } else {
                    assert_eq!(c & 0x7F, tightest_codes(x, scale).0, "{what}");
                }
            }
            // `exp_inf` on the tightest scale (no previous one), then on a decayed one (the
            // previous scale 1.5 times the tightest, times beta2, fits and is under twice it),
            // with the values on the codes of the scale that will be used.
            let tight = block_scale(largest, MAX_UNSIGNED);
            for previous in [0.0, tight * 1.5] {
                let expected = exp_inf_scale(largest, previous, beta2);
                assert!(previous == 0.0 || !tight.is_normal() || expected > tight * 1.4);
                let mut u = vec![largest; BLOCK];
                for (i, x) in u.iter_mut().enumerate().skip(1) {
                    *x = on_a_code(i, decode_unsigned, 256.0, expected);
                }
                let scale = encode_decaying_exp_inf(&u, &mut codes, previous, beta2);
                assert_eq!(scale, expected);
                check_rounded_up(&u, &codes, scale);
            }
            // `exp_inf` rounded stochastically, on its power-of-two scale, where no code may
            // move down (each stored `exp_avg` is infinite): the codes rounded up.
            let pow2 = power_of_two_scale(largest, MAX_UNSIGNED);
            let mut u = vec![largest; BLOCK];
            for (i, x) in u.iter_mut().enumerate().skip(1) {
                *x = on_a_code(i, decode_unsigned, 256.0, pow2);
            }
            let rounding = ExpInfRounding {
                noise: &NO_NOISE,
                exp_avg_codes: &[0x7F; BLOCK],
                exp_avg_scale: f32::INFINITY,
                bound: C::from_f64(1.0),
            };
            let scale = encode_exp_inf_stochastic(&u, &mut codes, rounding);
            assert_eq!(scale, pow2);
            check_rounded_up(&u, &codes, scale);
        }
    }

    #[test]
    fn codes_on_code_boundaries_are_the_tightest_in_f32_and_f64() {
        codes_on_code_boundaries_are_the_tightest::<f32>(
            |x, ulps| f32::from_bits((i64::from(x.to_bits()) + ulps).max(0) as u32),
            |scale| decode_unsigned(1) * scale < f32::MIN_POSITIVE,
        );
        codes_on_code_boundaries_are_the_tightest::<f64>(
            |x, ulps| f64::from_bits((x.to_bits() as i64 + ulps).max(0) as u64),
            |_| false,
        );
    }

    #[test]
    fn exp_inf_scale_follows_the_decay_while_it_fits() {
        let beta2 = 0.999f32;
        let tight = block_scale(1.0f32, MAX_UNSIGNED);
        // The previous scale decayed, 8 ulps up, when that fits the block and is not loose.
        let previous = tight * 1.0015;
        let decayed =
            f32::from_bits(((f64::from(previous) * 0.999f32 as f64) as f32).to_bits() + 8);
        assert_eq!(exp_inf_scale(1.0f32, previous, beta2), decayed);
        assert!(decayed >= tight && decayed < 2.0 * tight);
        // Too small for the block's largest: the tightest scale.
        assert_eq!(exp_inf_scale(1.0f32, tight, beta2), tight);
        // Twice the tightest or more: the tightest again.
        assert_eq!(exp_inf_scale(1.0f32, 2.5 * tight, beta2), tight);
        // No usable previous scale (none yet, NaN, infinite), or a block of zeros or NaN.
        for previous in [0.0, f32::NAN, f32::INFINITY] {
            assert_eq!(exp_inf_scale(1.0f32, previous, beta2), tight);
        }
        assert_eq!(exp_inf_scale(0.0f32, previous, beta2), 0.0);
        assert!(exp_inf_scale(f32::NAN, previous, beta2).is_nan());
        // An element that only decayed keeps its code on the decayed scale, in float32 and in
        // float64 arithmetic.
        for code in 1..=255u8 {
            let old = decode_unsigned(code) * previous;
            let mut codes = [0u8; 2];
            let scale = encode_decaying_exp_inf(&[1.0, old * beta2], &mut codes, previous, beta2);
            assert_eq!(scale, decayed);
            assert_eq!(codes[1], code, "code {code}");
            let old = f64::from(decode_unsigned(code)) * f64::from(previous);
            let scale = encode_decaying_exp_inf(&[1.0, old * 0.999], &mut codes, previous, 0.999);
            assert!(scale >= tight);
            assert_eq!(codes[1], code, "float64, code {code}");
        }
    }

    /// Stochastic rounding of `exp_avg` picks the truncated code or the one above (with the
    /// value's sign), subnormal codes too, and goes up as often as the value's distance above
    /// the truncated code, in units of the spacing (over evenly spread noise): right on average.
    /// It never goes up past `bound` times `u` (here 1.2 times `|m|`), which keeps the smallest
    /// codes, where one code is many times the value, truncated.
    #[test]
    fn stochastic_exp_avg_is_one_of_two_codes_and_unbiased() {
        let values: Vec<f32> = (0..BLOCK)
            .map(|i| {
                let v = 10f32.powf(-7.0 + 7.0 * (i as f32 / 255.0)) * 1.37;
                if i % 2 == 0 {
                    -v
                } else {
                    v
                }
            })
            .collect();
        let mut truncated = vec![0u8; BLOCK];
        let scale = encode_exp_avg(&values, &mut truncated);
        let u: Vec<f32> = values.iter().map(|x| x.abs()).collect();
        let draws = 4096u32;
        let mut ups = vec![0u32; BLOCK];
        let mut codes = vec![0u8; BLOCK];
        for k in 0..draws {
            // Evenly spread 16-bit fractions in the high half, the same for every element.
            let noise = vec![(k * ((1 << 16) / draws)) << 16; BLOCK];
            let got = encode_exp_avg_stochastic(&values, &u, &noise, 1.2, &mut codes);
            assert_eq!(got, scale);
            for (((&c, &t), up), &x) in codes
                .iter()
                .zip(&truncated)
                .zip(ups.iter_mut())
                .zip(&values)
            {
                let (c_mag, t_mag) = (c & 0x7F, t & 0x7F);
                assert!(c_mag == t_mag || c_mag == t_mag + 1, "{c} from {t}");
                assert!(c_mag == 0 || (c & 0x80 != 0) == (x < 0.0), "{x}: {c}");
                *up += u32::from(c_mag != t_mag);
            }
        }
        let mut moved = [0; 2];
        for ((&x, &t), &up) in values.iter().zip(&truncated).zip(&ups) {
            let magnitude = t & 0x7F;
            let below = decode_signed(magnitude) * scale;
            let above = decode_signed(magnitude + 1) * scale;
            if magnitude == 0x7F || above > 1.2 * x.abs() {
                assert_eq!(up, 0, "{x} (code {t}) must stay truncated");
                continue;
            }
            let expected = (x.abs() - below) / (above - below) * draws as f32;
            assert!(
                (up as f32 - expected).abs() <= 1.0,
                "{x}: up {up} times, expected {expected}"
            );
            let normal = u32::from(magnitude) >= FIRST_NORMAL_SIGNED;
            moved[usize::from(normal)] += u32::from(up > 0);
            if normal {
                assert!(above <= below * 1.125 && above <= x.abs() * 1.125);
            }
        }
        // Both ranges were exercised.
        assert!(moved[0] > 5 && moved[1] > 100, "{moved:?}");
        // A code above `bound * u` is never taken: with the bound at 1 and `u = |m|`, every
        // value stays truncated.
        let noise = vec![0u32; BLOCK];
        encode_exp_avg_stochastic(&values, &u, &noise, 1.0, &mut codes);
        assert_eq!(codes, truncated);
    }

    /// `values` encoded into `codes` with stochastic rounding (from `codes` rounded up, on the
    /// power-of-two scale `scale`, as [`rounded_up_on_a_power_of_two`] gives them), with the
    /// stored `exp_avg` of `exp_avg_codes` on `exp_avg_scale`.
    fn round_exp_inf_stochastically(
        values: &[f32],
        codes: &mut [u8],
        scale: f32,
        noise: &[u32],
        exp_avg_codes: &[u8],
        exp_avg_scale: f32,
        bound: f32,
    ) {
        let rounding = ExpInfRounding {
            noise,
            exp_avg_codes,
            exp_avg_scale,
            bound,
        };
        let got = encode_exp_inf_stochastic(values, codes, rounding);
        assert_eq!(got, scale);
    }

    /// `exp_inf` values rounded up on the scale stochastic rounding uses (the smallest power of
    /// two that fits them), by brute force over all codes; and that scale.
    fn rounded_up_on_a_power_of_two(values: &[f32]) -> (Vec<u8>, f32) {
        let largest = values.iter().cloned().fold(0.0, f32::max);
        let scale = power_of_two_scale(largest, MAX_UNSIGNED);
        let codes = values.iter().map(|&x| tightest_codes(x, scale).1).collect();
        (codes, scale)
    }

    /// Stochastic rounding of `exp_inf` picks the code rounded up or the one below, only where
    /// the one below is in the normal range, and goes down as often as the value's distance
    /// below its code, in units of the spacing (over evenly spread noise): right on average. It
    /// never goes below `bound` times the stored `exp_avg`.
    #[test]
    fn stochastic_exp_inf_is_one_of_two_codes_and_unbiased() {
        let values: Vec<f32> = (0..BLOCK)
            .map(|i| 10f32.powf(-7.0 + 7.0 * (i as f32 / 255.0)) * 1.37)
            .collect();
        let (up, scale) = rounded_up_on_a_power_of_two(&values);
        let no_exp_avg = vec![0u8; BLOCK];
        let draws = 4096u32;
        let mut downs = vec![0u32; BLOCK];
        for k in 0..draws {
            // Evenly spread 16-bit fractions in the low half, the same for every element.
            let noise = vec![k * ((1 << 16) / draws); BLOCK];
            let mut codes = up.clone();
            round_exp_inf_stochastically(&values, &mut codes, scale, &noise, &no_exp_avg, 1.0, 1.0);
            for ((&c, &u), down) in codes.iter().zip(&up).zip(downs.iter_mut()) {
                assert!(c == u || c + 1 == u, "{c} from {u}");
                *down += u32::from(c != u);
            }
        }
        for ((&x, &u), &down) in values.iter().zip(&up).zip(&downs) {
            if u32::from(u) <= FIRST_NORMAL_UNSIGNED {
                assert_eq!(down, 0, "{x} (code {u}) must stay rounded up");
                continue;
            }
            let above = decode_unsigned(u) * scale;
            let below = decode_unsigned(u - 1) * scale;
            let expected = (above - x) / (above - below) * draws as f32;
            assert!(
                (down as f32 - expected).abs() <= 1.0,
                "{x}: down {down} times, expected {expected}"
            );
        }
        // A stored exp_avg above `bound` times the code below keeps every code up: here each
        // exp_avg is the top code on a scale as large as the block's largest exp_inf.
        let top_exp_avg = vec![0x7Fu8; BLOCK];
        let mut codes = up.clone();
        let noise = vec![0u32; BLOCK];
        let largest = values[BLOCK - 1] / MAX_SIGNED;
        round_exp_inf_stochastically(
            &values,
            &mut codes,
            scale,
            &noise,
            &top_exp_avg,
            largest,
            1.0,
        );
        assert_eq!(codes, up);
        // The check is against the code below, not the one above: a block of one value between
        // two codes (and its largest, on the top code), with a stored exp_avg between the two
        // codes' values, stays up.
        let mut x = [1.37f32; BLOCK];
        x[0] = 4.0;
        let (one_code, scale) = rounded_up_on_a_power_of_two(&x);
        let c = one_code[1];
        let below = decode_unsigned(c - 1) * scale;
        let above = decode_unsigned(c) * scale;
        let m_scale = (below + above) / 2.0 / MAX_SIGNED;
        let stored_m = decode_signed(0x7F) * m_scale;
        assert!(below < stored_m && stored_m < above && below < x[1] && x[1] < above);
        let mut codes = one_code.clone();
        round_exp_inf_stochastically(&x, &mut codes, scale, &noise, &top_exp_avg, m_scale, 1.0);
        assert_eq!(codes, one_code);
        // With a bound that allows it, every one goes down (the noise is 0).
        round_exp_inf_stochastically(&x, &mut codes, scale, &noise, &top_exp_avg, m_scale, 2.0);
        assert!(codes[1..].iter().all(|&k| k == c - 1) && codes[0] == one_code[0]);
    }

    /// Where the noise's fraction equals the value's distance past its code, in spacings, the
    /// value does not move (the comparison is strict, `f * spacing < distance`), and one step of
    /// noise lower it does: halfway between two codes, with noise 1/2 and just under 1/2, for
    /// `exp_avg` (up from its truncated code, normal and subnormal) and `exp_inf` (down from its
    /// code rounded up).
    #[test]
    fn stochastic_rounding_moves_only_below_the_distance() {
        // A block whose largest is the top code's value: scale 1.
        let mut m = [1.0625f32; BLOCK]; // 1 + 1/16: halfway between 1 and 1 + 1/8
        m[0] = MAX_SIGNED;
        m[2] = -2.5 / 512.0; // halfway between the subnormal codes 2 and 3 (2^-9 apart)
        let mut u = [1.031_25f32; BLOCK]; // 1 + 1/32: halfway between 1 and 1 + 1/16
        u[0] = MAX_UNSIGNED;
        let mut codes = [0u8; BLOCK];
        for (noise, moves) in [(0x8000u32, false), (0x7FFF, true)] {
            let limit = [MAX_UNSIGNED; BLOCK];
            let scale =
                encode_exp_avg_stochastic(&m, &limit, &[noise << 16; BLOCK], 1.0, &mut codes);
            assert_eq!(scale, 1.0);
            let expected = if moves { 1.125 } else { 1.0 };
            assert_eq!(
                decode_signed(codes[1]),
                expected,
                "exp_avg, noise {noise:#x}"
            );
            let expected = if moves { -3.0 / 512.0 } else { -2.0 / 512.0 };
            assert_eq!(
                decode_signed(codes[2]),
                expected,
                "subnormal, noise {noise:#x}"
            );
            let rounding = ExpInfRounding {
                noise: &[noise; BLOCK],
                exp_avg_codes: &NO_CODES,
                exp_avg_scale: 0.0,
                bound: 1.0,
            };
            let scale = encode_exp_inf_stochastic(&u, &mut codes, rounding);
            assert_eq!(scale, 1.0);
            let expected = if moves { 1.0 } else { 1.0625 };
            assert_eq!(
                decode_unsigned(codes[1]),
                expected,
                "exp_inf, noise {noise:#x}"
            );
        }
    }

    /// A value whose quotient by the scale underflows to 0 (scale 2, value 2^-149) is still
    /// rounded by its own distance from code 0, as the reference's comparison in scaled values
    /// says: with noise 0 it goes up to code 1 (with its sign), with any other noise it stays.
    #[test]
    fn a_quotient_that_underflows_still_rounds_by_its_value() {
        let tiny = -f32::from_bits(1);
        let mut codes = [0u8; 2];
        for (noise, expected) in [(0u32, 0x81u8), (1 << 16, 0)] {
            let scale =
                encode_exp_avg_stochastic(&[960.0, tiny], &[1e30; 2], &[noise; 2], 1.0, &mut codes);
            assert_eq!(scale, 2.0);
            assert_eq!(codes[1], expected, "noise {noise:#x}");
        }
    }

    /// The scale is the smallest power of two whose product with the top code reaches the
    /// largest value, as decoding computes that product: over all of float32 scales' range in
    /// f64, and in f32 from the subnormals (scales too) to its largest value, where the
    /// tightest scale takes over if the top code would decode to infinity.
    #[test]
    fn power_of_two_scales_are_the_smallest_that_fit() {
        fn check<C: Float>(largest: C, top: f32) {
            let scale = power_of_two_scale(largest, top);
            let fits = |s: f32| scaled(top, C::from_f64(f64::from(s))) >= largest;
            let what = format!("{} / {top}: {scale}", largest.to_f64());
            assert!(scale > 0.0 && scale.is_finite(), "{what}");
            let power_of_two = if scale.is_normal() {
                scale.to_bits() & 0x007F_FFFF == 0
            } else {
                scale.to_bits().count_ones() == 1
            };
            let top_value = |s: f32| scaled(top, C::from_f64(f64::from(s))).to_f64();
            if !power_of_two {
                // Only where the power of two above would make the top code infinite.
                assert_eq!(scale, block_scale(largest, top), "{what}");
                let above = f32::from_bits((scale.to_bits() & 0xFF80_0000) + 0x0080_0000);
                assert!(!top_value(above).is_finite(), "{what}: not a power of two");
                return;
            }
            assert!(
                top_value(scale).is_finite(),
                "{what}: the top code is infinite"
            );
            assert!(fits(scale), "{what}: too small");
            assert!(
                scale == f32::from_bits(1) || !fits(scale / 2.0),
                "{what}: not the smallest"
            );
        }
        let mut next = uniform(0x0123_4567_89AB_CDEF);
        for _ in 0..20_000 {
            for top in [MAX_SIGNED, MAX_UNSIGNED] {
                check(10f64.powf(88.0 * next() - 48.0), top);
                check(10f64.powf(75.0 * next() - 38.0) as f32, top);
                check(f32::from_bits((next() * 1e6) as u32 + 1), top);
            }
        }
        // Up to float32's largest value, where the top code times the power of two above a
        // block's largest overflows in f32 (above 480 * 2^119), not in f64.
        for x in [1e38, 3.19e38, 3.2e38, 3.3e38, f32::MAX] {
            for top in [MAX_SIGNED, MAX_UNSIGNED] {
                check(x, top);
                check(f64::from(x), top);
            }
        }
        assert!(power_of_two_scale(f32::MAX, MAX_SIGNED).to_bits() & 0x007F_FFFF != 0);
        assert_eq!(
            power_of_two_scale(f64::from(f32::MAX), MAX_SIGNED),
            2f32.powi(120)
        );
        // Exactly on a power of two times the top, and an ulp to either side.
        for k in -140..=100 {
            let on = (f64::from(MAX_SIGNED) * 2f64.powi(k)) as f32;
            for x in [
                on,
                f32::from_bits(on.to_bits() - 1),
                f32::from_bits(on.to_bits() + 1),
            ] {
                check(x, MAX_SIGNED);
                check(f64::from(x), MAX_SIGNED);
            }
        }
        assert_eq!(power_of_two_scale(0.0f32, MAX_SIGNED), 0.0);
        assert!(power_of_two_scale(f32::NAN, MAX_SIGNED).is_nan());
        assert_eq!(power_of_two_scale(f32::INFINITY, MAX_SIGNED), f32::INFINITY);
        assert_eq!(power_of_two_scale(1e300f64, MAX_SIGNED), f32::INFINITY);
    }

    #[test]
    fn an_all_zero_block_has_zero_scale_and_codes() {
        let mut codes = vec![9u8; 7];
        assert_eq!(encode_exp_inf(&[0.0f32; 7], &mut codes), 0.0);
        assert!(codes.iter().all(|&c| c == 0));
        assert_eq!(encode_exp_avg(&[0.0f32; 7], &mut codes), 0.0);
        assert!(codes.iter().all(|&c| c == 0));
    }
}
