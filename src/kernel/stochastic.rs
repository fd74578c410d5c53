//! Stochastic rounding of bfloat16 state (and of 8-bit state, in `blockwise`): the random
//! bits come from a hash, not a generator.
//!
//! Rounded to nearest, a bfloat16 `exp_inf` stops decaying: `beta2 * u` with `beta2 = 0.999`
//! differs from `u` by less than half a bfloat16 ulp (2^-9 relative), so it rounds back to `u`
//! at every step. Rounding up with probability equal to the dropped fraction (and down
//! otherwise) makes every stored value right on average, and the decay happens.
//!
//! Which way an element rounds is drawn from a hash of the new value, the element's gradient and
//! the step number. Nothing else enters it: not the element's index, the thread, or a
//! generator's position. So a step gives the same bits however it is split across threads,
//! whatever the memory layout, and after a checkpoint is resumed (the step count is saved), with
//! no random state to keep. The rounding that uses the bits is
//! [`super::precision::f32_to_bf16_bits_stochastic`]. Reference: docs/compressed_state.md, and
//! `tests/reference.py`, which reimplements both in numpy.

use super::float::Float;

/// MurmurHash3's 32-bit finaliser: every input bit flips each output bit with probability
/// about one half. Two multiplies and three shifts, which vectorise.
#[inline(always)]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 13;
    x = x.wrapping_mul(0xC2B2_AE35);
    x ^= x >> 16;
    x
}

/// Mixed into the high half of the step number, so that its two halves do not cancel.
const STEP_KEY: u32 = 0x9E37_79B9;

/// The per-step salt, computed once per tensor (its coefficients): a hash of the step number.
pub fn step_salt(step: u64) -> u32 {
    mix32((step as u32) ^ mix32(((step >> 32) as u32) ^ STEP_KEY))
}

/// The random bits for storing one element's new moments, `(exp_avg's, exp_inf's)`, for
/// [`super::precision::f32_to_bf16_bits_stochastic`] (which reads the top 16 bits of each).
///
/// One hash per element, of both new values, the gradient and the salt: its high half draws
/// `exp_avg`'s rounding and its low half `exp_inf`'s (the finaliser mixes every input bit into
/// both halves). `exp_inf`'s and the gradient's bits are rotated (by 16 and 8) so that equal bit
/// patterns do not cancel. One finaliser (two multiplies) per element keeps the hash at a few
/// per cent of a memory-bound step.
#[inline(always)]
pub fn state_noise<C: Float>(exp_avg: C, exp_inf: C, grad: C, salt: u32) -> (u32, u32) {
    let mixed = exp_avg.hash_bits()
        ^ exp_inf.hash_bits().rotate_left(16)
        ^ grad.hash_bits().rotate_left(8)
        ^ salt;
    let h = mix32(mixed);
    (h, h << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::precision::{f32_to_bf16_bits, f32_to_bf16_bits_stochastic};

    fn widen(h: u16) -> f64 {
        f64::from(f32::from_bits(u32::from(h) << 16))
    }

    #[test]
    fn picks_one_of_the_two_neighbours_and_keeps_representable_values() {
        for bits in (0..0x7F80_0000u32).step_by(7919) {
            for sign in [0, 0x8000_0000] {
                let x = f32::from_bits(bits | sign);
                let down = (bits >> 16) as u16 | (sign >> 16) as u16;
                for noise in [0, 1 << 16, 0x8000_0000, u32::MAX] {
                    let h = f32_to_bf16_bits_stochastic(x, noise);
                    assert!(h == down || h == down + 1, "{x:e} {noise:#x} -> {h:#06x}");
                    if bits & 0xFFFF == 0 {
                        assert_eq!(h, down, "{x:e} is a bfloat16 and must stay");
                    }
                }
            }
        }
        assert!(
            f32::from_bits(u32::from(f32_to_bf16_bits_stochastic(f32::NAN, !0)) << 16).is_nan()
        );
        assert_eq!(f32_to_bf16_bits_stochastic(f32::INFINITY, !0), 0x7F80);
        assert_eq!(f32_to_bf16_bits_stochastic(-0.0, !0), 0x8000);
    }

    /// Over every 16-bit noise value, a value rounds up exactly `fraction` times in 65536: the
    /// rounding is unbiased to the resolution of the noise.
    #[test]
    fn rounds_up_exactly_in_proportion_to_the_dropped_fraction() {
        for bits in [
            0x3F80_0001u32,
            0x3F80_8000,
            0x3F80_FFFF,
            0x0000_1234,
            0xC2F7_7777,
        ] {
            let x = f32::from_bits(bits);
            let up = (0..=u16::MAX)
                .filter(|&n| {
                    f32_to_bf16_bits_stochastic(x, u32::from(n) << 16) != (bits >> 16) as u16
                })
                .count();
            assert_eq!(up, (bits & 0xFFFF) as usize, "{x:e}");
            let mean: f64 = (0..=u16::MAX)
                .map(|n| widen(f32_to_bf16_bits_stochastic(x, u32::from(n) << 16)))
                .sum::<f64>()
                / 65536.0;
            assert!(
                ((mean - f64::from(x)) / f64::from(x)).abs() < 1e-9,
                "{x:e}: {mean:e}"
            );
        }
    }

    /// The hash's noise is spread evenly: the rounding of one value over many steps and gradients
    /// is unbiased, which is what stochastic rounding needs of it.
    #[test]
    fn hashed_noise_rounds_without_bias() {
        let x = f32::from_bits(0x3F80_4CCD); // 0.3 of the way from one bfloat16 to the next
        let (low, high) = (widen(0x3F80), widen(0x3F81));
        let trials = 200_000u64;
        let mut ups = 0u64;
        for step in 1..=trials {
            let grad = (step % 7) as f32 * 0.25 - 0.75;
            let (avg, inf) = state_noise(x, x, grad, step_salt(step));
            for noise in [avg, inf] {
                ups += u64::from(f32_to_bf16_bits_stochastic(x, noise) == 0x3F81);
            }
        }
        let share = ups as f64 / (2 * trials) as f64;
        let want = (f64::from(x) - low) / (high - low);
        // Binomial standard deviation at 400,000 draws is under 0.001; allow five.
        assert!((share - want).abs() < 0.005, "{share} vs {want}");
    }

    #[test]
    fn nearest_and_stochastic_agree_where_there_is_nothing_to_round() {
        for h in (0..0x7F80u16).step_by(3) {
            let x = f32::from_bits(u32::from(h) << 16);
            assert_eq!(
                f32_to_bf16_bits_stochastic(x, mix32(u32::from(h))),
                f32_to_bf16_bits(x)
            );
        }
    }
}
