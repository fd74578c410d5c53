//! The types the arithmetic runs in.

use std::ops::{Add, Div, Mul, Neg, Sub};

/// A compute type: `f32` or `f64`.
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    /// Rounds an `f64` to this type (round to nearest even).
    fn from_f64(value: f64) -> Self;
    /// The value as an `f64` (exact).
    fn to_f64(self) -> f64;
    /// The absolute value (clears the sign bit; NaN stays NaN).
    fn abs(self) -> Self;
    /// `true` for NaN.
    fn is_nan(self) -> bool;
    /// `self * a + b` with one rounding (as ATen's `fmadd`).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// The bits of the value folded into 32 (float64: the high half xor the low half): what
    /// stochastic rounding hashes.
    fn hash_bits(self) -> u32;
    /// `true` when every value of the type is an `f32` (narrowing to `f32` is exact): the 8-bit
    /// encoders then compute codes from quotients that are exact, with no check after.
    const IS_F32: bool;
    /// An unsigned integer as wide as the type.
    type Bits: Copy + Ord + Default;
    /// The bits of `|self|`. They order as the magnitudes do, with infinity above every finite
    /// value and NaN above infinity, so the largest magnitude is an integer maximum.
    fn magnitude_bits(self) -> Self::Bits;
    /// The value with these bits.
    fn from_bits(bits: Self::Bits) -> Self;
}

macro_rules! impl_float {
    ($t:ty, $bits:ty, $is_f32:expr) => {
        impl Float for $t {
            const IS_F32: bool = $is_f32;
            type Bits = $bits;
            #[inline(always)]
            fn magnitude_bits(self) -> $bits {
                <$t>::abs(self).to_bits()
            }
            #[inline(always)]
            fn from_bits(bits: $bits) -> Self {
                <$t>::from_bits(bits)
            }
            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                f64::from(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            #[inline(always)]
            fn hash_bits(self) -> u32 {
                let bits = u64::from(self.to_bits());
                (bits ^ (bits >> 32)) as u32
            }
        }
    };
}

impl_float!(f32, u32, true);
impl_float!(f64, u64, false);

/// `max(a, b)` that returns NaN when either operand is NaN, like `numpy.maximum`.
///
/// `f32::max` implements IEEE maxNum and would silently drop a NaN gradient; a diverging run
/// must show up as NaN in the parameter instead.
#[inline(always)]
pub fn max_propagate_nan<T: Float>(a: T, b: T) -> T {
    // `|`, not `||`: with a branch, LLVM computes `a` only where `b` is not NaN, and in the
    // 8-bit loop it then fetched the coefficients `a` is made of with a masked vector gather.
    if b.is_nan() | (b > a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_propagates_through_max_from_either_side() {
        assert!(max_propagate_nan(f32::NAN, 1.0).is_nan());
        assert!(max_propagate_nan(1.0, f32::NAN).is_nan());
        assert_eq!(max_propagate_nan(1.0f64, 2.0), 2.0);
        assert_eq!(max_propagate_nan(3.0f64, 2.0), 3.0);
    }

    #[test]
    fn magnitude_bits_order_as_magnitudes_with_nan_on_top() {
        let ordered = [
            0.0f32,
            1e-45,
            1e-38,
            0.5,
            1.0,
            3e38,
            f32::INFINITY,
            f32::NAN,
        ];
        for pair in ordered.windows(2) {
            assert!(
                pair[0].magnitude_bits() < pair[1].magnitude_bits(),
                "{pair:?}"
            );
            assert_eq!((-pair[1]).magnitude_bits(), pair[1].magnitude_bits());
        }
        assert_eq!((-0.0f64).magnitude_bits(), 0);
        assert!(f64::MAX.magnitude_bits() < f64::INFINITY.magnitude_bits());
        assert!(f64::INFINITY.magnitude_bits() < (-f64::NAN).magnitude_bits());
    }
}
