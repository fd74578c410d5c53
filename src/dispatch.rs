//! Runtime choice of the vector instruction set.
//!
//! A wheel is built for the baseline target (SSE2 on x86-64), yet the machines it runs on
//! mostly have AVX2 or AVX-512. The same generic loop from [`crate::kernel`] is compiled
//! once per instruction set with `#[target_feature]`, and the best one the CPU supports is
//! picked at run time. None of these builds lets LLVM fuse a multiply and an add (Rust never
//! contracts floating-point expressions), so every level gives bit-identical results.

use crate::kernel::{probe_run, update_run, Coefficients, Float, TensorSlices};
use crate::precision::Storage;

/// What a run computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The Adamax update.
    Adamax,
    /// The bandwidth probe: Adamax's memory traffic with trivial arithmetic.
    BandwidthProbe,
}

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

/// The best level this CPU supports (the detection is cached by std after the first call).
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Every level this CPU can run, lowest first (the tests compare them).
pub fn available() -> Vec<Isa> {
    let mut levels = vec![Isa::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            levels.push(Isa::Avx2);
        }
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
            levels.push(Isa::Avx512);
        }
    }
    levels
}

/// Calls `$run::<P, S, C, MAXIMIZE, COUPLED, EPS_IN>` with the flags as compile-time constants.
macro_rules! with_flags {
    ($run:ident, $slices:expr, $c:expr) => {{
        let (s, c) = ($slices, $c);
        match (
            c.flags.maximize,
            c.flags.coupled_weight_decay,
            c.flags.eps_inside_max,
        ) {
            (false, false, false) => $run::<P, S, C, false, false, false>(s, c),
            (false, false, true) => $run::<P, S, C, false, false, true>(s, c),
            (false, true, false) => $run::<P, S, C, false, true, false>(s, c),
            (false, true, true) => $run::<P, S, C, false, true, true>(s, c),
            (true, false, false) => $run::<P, S, C, true, false, false>(s, c),
            (true, false, true) => $run::<P, S, C, true, false, true>(s, c),
            (true, true, false) => $run::<P, S, C, true, true, false>(s, c),
            (true, true, true) => $run::<P, S, C, true, true, true>(s, c),
        }
    }};
}
pub(crate) use with_flags;

#[inline(always)]
fn run_op<P, S, C>(op: Op, s: TensorSlices<'_, P, S>, c: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    match op {
        Op::Adamax => with_flags!(update_run, s, c),
        Op::BandwidthProbe => probe_run::<P, S, C>(s),
    }
}

fn run_baseline<P, S, C>(op: Op, s: TensorSlices<'_, P, S>, c: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    run_op(op, s, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<P, S, C>(op: Op, s: TensorSlices<'_, P, S>, c: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    run_op(op, s, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
fn run_avx512<P, S, C>(op: Op, s: TensorSlices<'_, P, S>, c: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    run_op(op, s, c)
}

/// Runs the update with the given level. A level the CPU lacks falls back to the baseline.
pub fn run<P, S, C>(isa: Isa, s: TensorSlices<'_, P, S>, c: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    run_with(isa, Op::Adamax, s, c)
}

/// Runs `op` with the given level. A level the CPU lacks falls back to the baseline.
pub fn run_with<P, S, C>(isa: Isa, op: Op, s: TensorSlices<'_, P, S>, c: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    match isa {
        Isa::Baseline => run_baseline(op, s, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: `run_avx2` only requires the avx2 and fma target features, and the
                // line above just checked that this CPU has both.
                unsafe { run_avx2(op, s, c) }
            } else {
                run_baseline(op, s, c)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            if avx512_usable() {
                // SAFETY: `run_avx512` requires avx512f, avx512vl, avx512bw, avx2 and fma,
                // all of which `avx512_usable` just detected on this CPU.
                unsafe { run_avx512(op, s, c) }
            } else {
                run_baseline(op, s, c)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_usable() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
}
