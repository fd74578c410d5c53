//! Element storage types and their conversions to the type the arithmetic runs in.
//!
//! Parameters may be stored as float16, bfloat16, float32 or float64, and optimizer state as
//! float32 or float64. Every element is loaded into the compute type (float32, or float64
//! when either side is float64), updated there, and stored back with round-to-nearest-even,
//! the rounding numpy's `astype` uses; bfloat16 state may instead be rounded stochastically,
//! with random bits from [`super::stochastic`].
//!
//! The 16-bit conversions are written with integer operations and selects rather than
//! branches or calls, so that the loop around them still vectorises. Each is exact (widening)
//! or correctly rounded (narrowing); NaN stays NaN (narrowing quiets it).

use half::{bf16, f16};

/// A type an array element is stored in, convertible to and from the compute type `C`.
pub trait Storage<C>: Copy + Send + Sync + 'static {
    /// The element in the compute type (exact).
    fn load(self) -> C;
    /// The compute value rounded to this type (round to nearest, ties to even).
    fn store(value: C) -> Self;

    /// Whether [`Storage::store_stochastic`] differs from [`Storage::store`] (only for
    /// bfloat16): the loops that hash for it are compiled only where it does.
    const ROUNDS_STOCHASTICALLY: bool = false;

    /// The compute value rounded stochastically, with `noise` as the random bits (drawn by
    /// [`super::stochastic::state_noise`]); a type that does not round stochastically rounds
    /// to nearest.
    #[inline(always)]
    fn store_stochastic(value: C, noise: u32) -> Self {
        let _ = noise;
        Self::store(value)
    }
}

impl Storage<f32> for f32 {
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(value: f32) -> Self {
        value
    }
}

impl Storage<f64> for f64 {
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn store(value: f64) -> Self {
        value
    }
}

impl Storage<f64> for f32 {
    #[inline(always)]
    fn load(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn store(value: f64) -> Self {
        value as f32
    }
}

impl Storage<f32> for f16 {
    #[inline(always)]
    fn load(self) -> f32 {
        f16_bits_to_f32(self.to_bits())
    }
    #[inline(always)]
    fn store(value: f32) -> Self {
        f16::from_bits(f32_to_f16_bits(value))
    }
}

impl Storage<f32> for bf16 {
    #[inline(always)]
    fn load(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    #[inline(always)]
    fn store(value: f32) -> Self {
        bf16::from_bits(f32_to_bf16_bits(value))
    }
    const ROUNDS_STOCHASTICALLY: bool = true;
    #[inline(always)]
    fn store_stochastic(value: f32, noise: u32) -> Self {
        bf16::from_bits(f32_to_bf16_bits_stochastic(value, noise))
    }
}

// With float64 state the compute type is float64. Widening goes through float32 (exact);
// narrowing must round once, from the float64 value (going through float32 would round
// twice and differ from numpy near ties).
impl Storage<f64> for f16 {
    #[inline(always)]
    fn load(self) -> f64 {
        f64::from(f16_bits_to_f32(self.to_bits()))
    }
    #[inline(always)]
    fn store(value: f64) -> Self {
        f16::from_bits(f64_to_f16_bits(value))
    }
}

impl Storage<f64> for bf16 {
    #[inline(always)]
    fn load(self) -> f64 {
        f64::from(f32::from_bits(u32::from(self.to_bits()) << 16))
    }
    #[inline(always)]
    fn store(value: f64) -> Self {
        bf16::from_bits(f64_to_bf16_bits(value))
    }
    // Rounded to float32 (to nearest) first: that rounding moves the value by at most half a
    // float32 ulp, 2^-17 of a bfloat16 ulp, below the resolution of the 16 random bits.
    const ROUNDS_STOCHASTICALLY: bool = true;
    #[inline(always)]
    fn store_stochastic(value: f64, noise: u32) -> Self {
        bf16::from_bits(f32_to_bf16_bits_stochastic(value as f32, noise))
    }
}

/// IEEE binary16 bits to float32 (exact).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7FFF;
    let exponent = h & 0x7C00;
    // Normal numbers: the exponent bias goes from 15 to 127.
    let normal = (magnitude << 13) + ((127 - 15) << 23);
    // Infinity and NaN: all exponent bits set, the payload kept.
    let special = (magnitude << 13) | 0x7F80_0000;
    // Zero and subnormals: mantissa x 2^-24, exact in float32.
    let small = ((h & 0x03FF) as f32 * (1.0 / 16_777_216.0)).to_bits();
    let bits = if exponent == 0x7C00 {
        special
    } else if exponent == 0 {
        small
    } else {
        normal
    };
    f32::from_bits(bits | sign)
}

/// float32 to IEEE binary16 bits, rounding to nearest even.
#[inline(always)]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let magnitude = bits & 0x7FFF_FFFF;
    // NaN: quiet, with the top of the payload.
    let nan = 0x7E00 | ((magnitude >> 13) & 0x03FF);
    // 65520 is halfway between the largest half (65504) and 2^16; ties go to the even
    // neighbour, 2^16, which is infinity in binary16.
    const OVERFLOW: u32 = 0x477F_F000;
    // At or above 2^-14 the result is normal: rebias the exponent and round the 13 bits that
    // are dropped (add just under half, plus one more if the kept part is odd).
    const NORMAL: u32 = 0x3880_0000;
    let kept_lsb = (magnitude >> 13) & 1;
    let normal = magnitude
        .wrapping_sub((127 - 15) << 23)
        .wrapping_add(0x0FFF + kept_lsb)
        >> 13;
    // Below 2^-14 the result is a multiple of 2^-24. Adding 0.5 (whose ulp is 2^-24) makes
    // the FPU round to that grid; the low bits are then the count of 2^-24 steps (1024 means
    // the smallest normal, whose bits are exactly 0x0400).
    let subnormal = (f32::from_bits(magnitude) + 0.5)
        .to_bits()
        .wrapping_sub(0x3F00_0000);
    let result = if magnitude > 0x7F80_0000 {
        nan
    } else if magnitude >= OVERFLOW {
        0x7C00
    } else if magnitude >= NORMAL {
        normal
    } else {
        subnormal
    };
    (result | sign) as u16
}

/// float64 to IEEE binary16 bits, rounding to nearest even (once).
#[inline(always)]
pub fn f64_to_f16_bits(x: f64) -> u16 {
    f64_to_narrow_bits::<5, 10>(x)
}

/// float64 to bfloat16 bits, rounding to nearest even (once).
#[inline(always)]
pub fn f64_to_bf16_bits(x: f64) -> u16 {
    f64_to_narrow_bits::<8, 7>(x)
}

/// float64 to a 16-bit binary format with `E` exponent and `M` mantissa bits, rounding to
/// nearest even once. The same steps as [`f32_to_f16_bits`], with the constants derived
/// from the format.
#[inline(always)]
fn f64_to_narrow_bits<const E: u32, const M: u32>(x: f64) -> u16 {
    let bias: u64 = (1 << (E - 1)) - 1;
    let dropped = 52 - M;
    let infinity = (((1u32 << E) - 1) << M) as u16;
    let quiet = 1u16 << (M - 1);
    // Halfway between the largest finite value, (2 - 2^-M) 2^bias, and 2^(bias + 1).
    let overflow = ((1023 + bias) << 52) | ((1 << 52) - (1 << (51 - M)));
    // The smallest normal value, 2^(1 - bias).
    let normal_from = (1024 - bias) << 52;
    // A power of two whose ulp is the subnormal spacing 2^(1 - bias - M).
    let magic = f64::from_bits((1023 + 53 - bias - u64::from(M)) << 52);

    let bits = x.to_bits();
    let sign = ((bits >> 48) & 0x8000) as u16;
    let magnitude = bits & 0x7FFF_FFFF_FFFF_FFFF;
    let nan = infinity | quiet | ((magnitude >> dropped) as u16 & (quiet - 1));
    let kept_lsb = (magnitude >> dropped) & 1;
    let normal = (magnitude
        .wrapping_sub((1023 - bias) << 52)
        .wrapping_add((1 << (dropped - 1)) - 1 + kept_lsb)
        >> dropped) as u16;
    let subnormal = (f64::from_bits(magnitude) + magic)
        .to_bits()
        .wrapping_sub(magic.to_bits()) as u16;
    let result = if magnitude > 0x7FF0_0000_0000_0000 {
        nan
    } else if magnitude >= overflow {
        infinity
    } else if magnitude >= normal_from {
        normal
    } else {
        subnormal
    };
    result | sign
}

/// float32 to bfloat16 bits, rounding to nearest even.
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let kept_lsb = (bits >> 16) & 1;
    bf16_bits_unless_nan(x, bits.wrapping_add(0x7FFF + kept_lsb) >> 16)
}

/// float32 to bfloat16 bits, rounding stochastically: away from zero with probability equal to
/// the fraction of a bfloat16 ulp that is dropped (to a resolution of 2^-16 ulp), toward zero
/// otherwise. Values bfloat16 holds are kept; NaN stays NaN (quieted, as to nearest).
///
/// The top 16 bits of `noise` are added to the 16 bits that are dropped, then the sum is
/// truncated: a carry into the kept bits happens exactly when noise + fraction >= 2^16. bfloat16
/// is float32 with a shorter mantissa, so this holds for subnormals and across binades; a value
/// above the largest bfloat16 may round up to infinity (as it may to nearest).
#[inline(always)]
pub fn f32_to_bf16_bits_stochastic(x: f32, noise: u32) -> u16 {
    bf16_bits_unless_nan(x, x.to_bits().wrapping_add(noise >> 16) >> 16)
}

/// `rounded` (the top 16 bits of a float32 after rounding), or for a NaN `x` its sign and the
/// top of its payload, made quiet: how every float32-to-bfloat16 rounding ends.
#[inline(always)]
fn bf16_bits_unless_nan(x: f32, rounded: u32) -> u16 {
    let nan = (x.to_bits() >> 16) | 0x0040;
    (if x.is_nan() { nan } else { rounded }) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_f16_round_trips_through_f32_exactly() {
        for h in 0..=u16::MAX {
            let x = f16_bits_to_f32(h);
            if x.is_nan() {
                // The payload is kept, as numpy keeps it (half quiets signalling NaNs).
                assert!(f16::from_bits(h).is_nan(), "{h:#06x}");
                assert!(f16::from_bits(f32_to_f16_bits(x)).is_nan());
            } else {
                let expected = f16::from_bits(h).to_f32().to_bits();
                assert_eq!(x.to_bits(), expected, "{h:#06x}");
                assert_eq!(f32_to_f16_bits(x), h, "{h:#06x}");
            }
        }
    }

    /// Every float32 whose bits are a multiple of `stride`, plus the neighbours of each
    /// binary16 rounding boundary, against `half`'s conversion.
    #[test]
    fn f32_to_f16_rounds_like_half() {
        let mut checked = 0u64;
        let mut check = |bits: u32| {
            let x = f32::from_bits(bits);
            let ours = f32_to_f16_bits(x);
            let theirs = f16::from_f32(x);
            if x.is_nan() {
                assert!(f16::from_bits(ours).is_nan(), "{bits:#010x}");
            } else {
                assert_eq!(ours, theirs.to_bits(), "{bits:#010x} = {x:e}");
            }
            checked += 1;
        };
        for bits in (0..=u32::MAX).step_by(4093) {
            check(bits);
        }
        for h in 0..0x7C00u32 {
            // The midpoint between binary16 `h` and `h + 1`, and its float32 neighbours.
            let low = f64::from(f16_bits_to_f32(h as u16));
            let high = f64::from(f16_bits_to_f32(h as u16 + 1));
            let middle = ((low + high) / 2.0) as f32;
            for delta in [-1i32, 0, 1] {
                let bits = middle.to_bits().wrapping_add_signed(delta);
                check(bits);
                check(bits | 0x8000_0000);
            }
        }
        assert!(checked > 1_000_000);
    }

    /// The nearest of the 16-bit values `candidates` to `x`, ties to the even bit pattern.
    fn nearest(x: f64, candidates: &[u16], widen: fn(u16) -> f64) -> u16 {
        let mut best = candidates[0];
        for &c in candidates {
            let (d, e) = ((widen(c) - x).abs(), (widen(best) - x).abs());
            if d < e || (d == e && c % 2 == 0) {
                best = c;
            }
        }
        best
    }

    fn check_f64_narrowing(to_bits: fn(f64) -> u16, widen: fn(u16) -> f64, max_finite: u16) {
        // Around every finite 16-bit value: the value, the midpoints to its neighbours, and
        // float64 numbers a hair on either side of each midpoint.
        for h in 0..max_finite {
            let (a, b) = (widen(h), widen(h + 1));
            let middle = (a + b) / 2.0;
            for x in [
                a,
                middle,
                f64::from_bits(middle.to_bits() - 1),
                f64::from_bits(middle.to_bits() + 1),
                a + (b - a) * 0.3,
            ] {
                let want = nearest(x, &[h, h + 1], widen);
                assert_eq!(to_bits(x), want, "{x:e} ({:#018x})", x.to_bits());
                assert_eq!(to_bits(-x), want | 0x8000, "{:e}", -x);
            }
        }
        assert!(widen(to_bits(f64::NAN)).is_nan());
        assert!(widen(to_bits(1e300)).is_infinite());
    }

    #[test]
    fn f64_to_f16_rounds_once() {
        check_f64_narrowing(f64_to_f16_bits, |h| f64::from(f16_bits_to_f32(h)), 0x7BFF);
    }

    #[test]
    fn f64_to_bf16_rounds_once() {
        check_f64_narrowing(
            f64_to_bf16_bits,
            |h| f64::from(f32::from_bits(u32::from(h) << 16)),
            0x7F7F,
        );
    }

    #[test]
    fn f32_to_bf16_rounds_like_half() {
        for bits in (0..=u32::MAX)
            .step_by(1021)
            .chain([0x3F80_8000, 0x3F81_8000, 0x7F7F_FFFF])
        {
            let x = f32::from_bits(bits);
            let ours = f32_to_bf16_bits(x);
            if x.is_nan() {
                assert!(bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, bf16::from_f32(x).to_bits(), "{bits:#010x}");
            }
        }
    }
}
