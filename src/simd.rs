//! Runtime choice of the vector instruction set.
//!
//! A wheel is built for the baseline target (SSE2 on x86-64), yet the machines it runs on mostly
//! have AVX2 or AVX-512. The loops of an [`Update`] rule ([`Loop`]) are compiled once per instruction set
//! with `#[target_feature]`, and the best one the CPU supports is picked at run time. None of
//! these builds lets LLVM fuse a multiply and an add (Rust never contracts floating-point
//! expressions), so every level gives bit-identical results.
//!
//! One function, [`Isa::supported`], says what a level needs; detection and the check before a
//! call both use it, so they cannot disagree.

use crate::kernel::blockwise::QuantizedSlices;
use crate::kernel::{Coefficients, Float, Storage, TensorSlices, Update};

/// An instruction-set level the kernel has a build for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Whatever the compilation target guarantees (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// x86-64 with AVX2 and FMA (256-bit vectors).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 with AVX-512 F/VL/BW (512-bit vectors; BW for the 16-bit conversions).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: &'static [Isa] = &[
        Isa::Baseline,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512,
    ];

    /// Whether this CPU has every feature this level's build is compiled with (std caches the
    /// detection after the first call).
    pub fn supported(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512bw")
            }
        }
    }

    /// The name users see (`adamax_rs.simd_level()`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
        }
    }
}

/// The best level this CPU supports.
pub fn detected() -> Isa {
    available().last().copied().unwrap_or(Isa::Baseline)
}

/// Every level this CPU can run, lowest first (the tests compare them).
pub fn available() -> Vec<Isa> {
    Isa::ALL
        .iter()
        .copied()
        .filter(|isa| isa.supported())
        .collect()
}

/// A loop over one piece of work, run with an update rule: inlined into each instruction-set
/// build below, so that the build's target features apply to it.
pub trait Loop {
    /// Runs `rule` over the work.
    fn run<U: Update>(self, rule: U);
}

/// The flat loop over one run of elements.
pub struct Flat<'a, 'c, P, S, M, C>(pub TensorSlices<'a, P, S, M>, pub &'c Coefficients<C>);

impl<P, S, M, C> Loop for Flat<'_, '_, P, S, M, C>
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
    M: Storage<C>,
{
    #[inline(always)]
    fn run<U: Update>(self, rule: U) {
        rule.flat(self.0, self.1)
    }
}

/// The block loop over whole blocks of a tensor with 8-bit state.
pub struct Blocks<'a, 'c, P, C>(pub QuantizedSlices<'a, P>, pub &'c Coefficients<C>);

impl<P, C> Loop for Blocks<'_, '_, P, C>
where
    C: Float,
    P: Storage<C>,
    f32: Storage<C>,
{
    #[inline(always)]
    fn run<U: Update>(self, rule: U) {
        rule.quantized(self.0, self.1)
    }
}

fn baseline<U: Update, L: Loop>(rule: U, work: L) {
    work.run(rule)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2<U: Update, L: Loop>(rule: U, work: L) {
    work.run(rule)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
fn avx512<U: Update, L: Loop>(rule: U, work: L) {
    work.run(rule)
}

/// Runs `rule` over `work` with the build for `isa`; a level this CPU lacks runs the baseline.
pub fn run<U: Update, L: Loop>(isa: Isa, rule: U, work: L) {
    if !isa.supported() {
        return baseline(rule, work);
    }
    match isa {
        Isa::Baseline => baseline(rule, work),
        // SAFETY: `avx2` is compiled with avx2 and fma, which `Isa::Avx2.supported()` just
        // detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(rule, work) },
        // SAFETY: `avx512` is compiled with avx512f/vl/bw, avx2 and fma, all of which
        // `Isa::Avx512.supported()` just detected on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(rule, work) },
    }
}

/// Runs `rule` over the flat slices `s` with the build for `isa`.
pub fn run_flat<U: Update, P, S, M, C>(
    isa: Isa,
    rule: U,
    s: TensorSlices<'_, P, S, M>,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
    M: Storage<C>,
{
    run(isa, rule, Flat(s, c))
}
