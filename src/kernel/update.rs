//! The Adamax update of one element, and the loops that apply it over a tensor's arrays.
//!
//! One call updates one run of elements in a single pass over memory, reading `param`, `grad`,
//! `exp_avg`, `exp_inf` and writing `param`, `exp_avg`, `exp_inf` back (with master weights, the
//! master copy is read and written and the parameter only written). The loop body is branch-free
//! and written over zipped slices so that LLVM vectorises it; the option flags are compile-time
//! parameters so that each combination gets its own tight loop.
//!
//! Parameters are stored as `P`, state as `S`, and the arithmetic runs in `C` (see
//! [`super::precision`]). Every scalar coefficient is computed once per tensor in `f64` and
//! rounded to `C`, exactly as numpy rounds a Python float used with a float32 array. The element
//! operations then happen in the order of the formula in docs/update_rule.md, so a plain numpy
//! implementation of it gives the same bits. With `eps_inside_max` the order and the fused
//! multiply-adds are those of `torch.optim.Adamax`'s CPU kernels instead.

use std::fmt;

use super::blockwise::{quantized_run, QuantizedSlices};
use super::float::{max_propagate_nan, Float};
use super::hyperparameters::Coefficients;
use super::precision::Storage;
use super::stochastic;
use super::strided::StridedTensor;

/// An element-wise rule run over one tensor's arrays: the Adamax update, or (for benchmarks) a
/// rule with the same memory traffic.
///
/// Implementations must be `#[inline(always)]`: the instruction-set builds in `crate::simd`
/// compile the loop inside functions with their own target features, and a loop that is not
/// inlined there would not use them.
pub trait Update: Copy + Send + Sync + 'static {
    /// Updates one run of elements that all arrays store in the same order.
    fn flat<P, S, M, C>(self, slices: TensorSlices<'_, P, S, M>, c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
        M: Storage<C>;

    /// Updates one tensor whose arrays do not share one memory order.
    fn strided<P, S, M, C>(self, tensor: &mut StridedTensor<'_, P, S, M>, c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
        M: Storage<C>;

    /// Updates one run of whole blocks of a tensor with 8-bit state.
    fn quantized<P, C>(self, slices: QuantizedSlices<'_, P>, c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        f32: Storage<C>;
}

/// The arrays of one tensor (or a piece of it), checked to have one length: the parameter and
/// its gradient stored as `P`, the state as `S`, the optional master copy as `M` (the state's
/// type, or float32 when the state is narrower).
#[derive(Debug)]
pub struct TensorSlices<'a, P, S, M = S> {
    pub(crate) param: &'a mut [P],
    pub(crate) grad: &'a [P],
    pub(crate) exp_avg: &'a mut [S],
    pub(crate) exp_inf: &'a mut [S],
    pub(crate) master: Option<&'a mut [M]>,
}

/// The slices given to [`TensorSlices::new`] differ in length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LengthMismatch {
    pub param: usize,
    pub other: usize,
}

impl fmt::Display for LengthMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slices differ in length: param {}, another {}",
            self.param, self.other
        )
    }
}

impl std::error::Error for LengthMismatch {}

impl<'a, P, S> TensorSlices<'a, P, S, S> {
    /// Groups the slices of one tensor; they must have the same length.
    pub fn new(
        param: &'a mut [P],
        grad: &'a [P],
        exp_avg: &'a mut [S],
        exp_inf: &'a mut [S],
    ) -> Result<Self, LengthMismatch> {
        Self::with_master(param, grad, exp_avg, exp_inf, None)
    }
}

impl<'a, P, S, M> TensorSlices<'a, P, S, M> {
    /// As [`TensorSlices::new`], with an optional master copy of the parameter (which is then
    /// read instead of `param`; `param` receives the rounded result).
    pub fn with_master(
        param: &'a mut [P],
        grad: &'a [P],
        exp_avg: &'a mut [S],
        exp_inf: &'a mut [S],
        master: Option<&'a mut [M]>,
    ) -> Result<Self, LengthMismatch> {
        let n = param.len();
        let lengths = [grad.len(), exp_avg.len(), exp_inf.len()];
        let other = lengths
            .into_iter()
            .chain(master.as_ref().map(|m| m.len()))
            .find(|&len| len != n);
        if let Some(other) = other {
            return Err(LengthMismatch { param: n, other });
        }
        Ok(Self {
            param,
            grad,
            exp_avg,
            exp_inf,
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
    pub fn reborrow(&mut self) -> TensorSlices<'_, P, S, M> {
        TensorSlices {
            param: self.param,
            grad: self.grad,
            exp_avg: self.exp_avg,
            exp_inf: self.exp_inf,
            master: self.master.as_deref_mut(),
        }
    }

    /// Splits into `[0, mid)` and `[mid, len)`; `mid` is clamped to the length.
    pub fn split_at(self, mid: usize) -> (Self, Self) {
        let mid = mid.min(self.len());
        let (p0, p1) = self.param.split_at_mut(mid);
        let (g0, g1) = self.grad.split_at(mid);
        let (m0, m1) = self.exp_avg.split_at_mut(mid);
        let (u0, u1) = self.exp_inf.split_at_mut(mid);
        let (w0, w1) = match self.master {
            Some(w) => {
                let (a, b) = w.split_at_mut(mid);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let head = Self {
            param: p0,
            grad: g0,
            exp_avg: m0,
            exp_inf: u0,
            master: w0,
        };
        let tail = Self {
            param: p1,
            grad: g1,
            exp_avg: m1,
            exp_inf: u1,
            master: w1,
        };
        (head, tail)
    }
}

/// The update of one element in the compute type: returns the new `(param, exp_avg,
/// exp_inf)`. Every path (vectorised, strided, tests) goes through it.
#[inline(always)]
pub fn adamax_math<C: Float, const MAXIMIZE: bool, const COUPLED: bool, const TORCH: bool>(
    param: C,
    grad: C,
    exp_avg: C,
    exp_inf: C,
    c: &Coefficients<C>,
) -> (C, C, C) {
    let mut g = if MAXIMIZE { -grad } else { grad };
    if COUPLED {
        g = if TORCH {
            // ATen's `grad.add(param, alpha=weight_decay)` is one fused multiply-add.
            c.weight_decay.mul_add(param, g)
        } else {
            g + c.weight_decay * param
        };
    }
    let p = param * c.decay_factor;
    let m = if TORCH {
        // ATen's lerp: `start + w * (end - start)` for |w| < 0.5, else
        // `end - (end - start) * (1 - w)`, each one fused multiply-add. Both weights are read
        // before the choice: read inside it, they are loads under a condition, which LLVM only
        // vectorises with masked loads, and without AVX-512 it left the whole loop scalar.
        let (weight, complement) = (c.lerp_weight, c.lerp_weight_complement);
        let delta = g - exp_avg;
        if c.lerp_from_start {
            weight.mul_add(delta, exp_avg)
        } else {
            (-complement).mul_add(delta, g)
        }
    } else {
        c.beta1 * exp_avg + c.one_minus_beta1 * g
    };
    let abs_g = if TORCH { g.abs() + c.eps } else { g.abs() };
    let u = max_propagate_nan(c.beta2 * exp_inf, abs_g);
    let denominator = if TORCH { u } else { u + c.eps };
    (p - c.step_size * m / denominator, m, u)
}

/// The update of one stored element: load into `C`, compute, store back rounded (to nearest, or
/// with `STOCHASTIC` the state stochastically, see [`super::stochastic`]). With a master copy, the
/// parameter's value is read from it, and both are written.
#[inline(always)]
fn update_element<
    P,
    S,
    M,
    C,
    const STOCHASTIC: bool,
    const MAXIMIZE: bool,
    const COUPLED: bool,
    const TORCH: bool,
>(
    param: &mut P,
    master: Option<&mut M>,
    grad: P,
    exp_avg: &mut S,
    exp_inf: &mut S,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
    M: Storage<C>,
{
    let current = match &master {
        Some(w) => w.load(),
        None => param.load(),
    };
    let grad = grad.load();
    let (p, m, u) = adamax_math::<C, MAXIMIZE, COUPLED, TORCH>(
        current,
        grad,
        exp_avg.load(),
        exp_inf.load(),
        c,
    );
    match master {
        Some(w) => {
            let stored = M::store(p);
            *w = stored;
            *param = P::store(stored.load());
        }
        None => *param = P::store(p),
    }
    if STOCHASTIC {
        let (avg_noise, inf_noise) = stochastic::state_noise(m, u, grad, c.rounding_salt);
        *exp_avg = S::store_stochastic(m, avg_noise);
        *exp_inf = S::store_stochastic(u, inf_noise);
    } else {
        *exp_avg = S::store(m);
        *exp_inf = S::store(u);
    }
}

/// Runs `$plain` for every element of `$slices`, with `$p, $g, $m, $u` bound to the parameter,
/// the gradient's value, exp_avg and exp_inf; or, when the slices carry a master copy,
/// `$with_master` with `$w` bound to it too. Two loops rather than one with an `Option` per
/// element, so that each is a plain zip LLVM vectorises; a macro rather than a function taking
/// closures, because LLVM did not inline closures around the 16-bit conversions, which made the
/// float16 loop scalar (4x slower).
macro_rules! for_each_element {
    ($slices:expr, |$p:ident, $g:ident, $m:ident, $u:ident| $plain:block,
     |$w:ident| $with_master:block) => {{
        let TensorSlices {
            param,
            grad,
            exp_avg,
            exp_inf,
            master,
        } = $slices;
        let elements = param
            .iter_mut()
            .zip(grad)
            .zip(exp_avg.iter_mut())
            .zip(exp_inf.iter_mut());
        match master {
            None => {
                for ((($p, &$g), $m), $u) in elements {
                    $plain
                }
            }
            Some(master) => {
                for (((($p, &$g), $m), $u), $w) in elements.zip(master.iter_mut()) {
                    $with_master
                }
            }
        }
    }};
}
pub(crate) use for_each_element;

/// Calls `$run::<$types..., MAXIMIZE, COUPLED, EPS_IN>($arg, $c)` with the flags of `$c` as
/// compile-time constants (`$types` may end with constants of the caller's).
macro_rules! with_flags {
    ($run:ident [$($t:tt),*], $arg:expr, $c:expr) => {{
        let (arg, c) = ($arg, $c);
        match (
            c.flags.maximize,
            c.flags.coupled_weight_decay,
            c.flags.eps_inside_max,
        ) {
            (false, false, false) => $run::<$($t,)* false, false, false>(arg, c),
            (false, false, true) => $run::<$($t,)* false, false, true>(arg, c),
            (false, true, false) => $run::<$($t,)* false, true, false>(arg, c),
            (false, true, true) => $run::<$($t,)* false, true, true>(arg, c),
            (true, false, false) => $run::<$($t,)* true, false, false>(arg, c),
            (true, false, true) => $run::<$($t,)* true, false, true>(arg, c),
            (true, true, false) => $run::<$($t,)* true, true, false>(arg, c),
            (true, true, true) => $run::<$($t,)* true, true, true>(arg, c),
        }
    }};
}

#[inline(always)]
fn flat_run<
    P,
    S,
    M,
    C,
    const STOCHASTIC: bool,
    const MAXIMIZE: bool,
    const COUPLED: bool,
    const TORCH: bool,
>(
    s: TensorSlices<'_, P, S, M>,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
    M: Storage<C>,
{
    for_each_element!(
        s,
        |p, g, m, u| {
            update_element::<P, S, M, C, STOCHASTIC, MAXIMIZE, COUPLED, TORCH>(p, None, g, m, u, c)
        },
        |w| {
            update_element::<P, S, M, C, STOCHASTIC, MAXIMIZE, COUPLED, TORCH>(
                p,
                Some(w),
                g,
                m,
                u,
                c,
            )
        }
    );
}

#[inline(always)]
fn strided_run<
    P,
    S,
    M,
    C,
    const STOCHASTIC: bool,
    const MAXIMIZE: bool,
    const COUPLED: bool,
    const TORCH: bool,
>(
    t: &mut StridedTensor<'_, P, S, M>,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
    M: Storage<C>,
{
    t.for_each(|p, w, g, m, u| {
        update_element::<P, S, M, C, STOCHASTIC, MAXIMIZE, COUPLED, TORCH>(p, w, g, m, u, c)
    });
}

/// Whether a step with coefficients `c` rounds state stored as `S` stochastically: only when asked
/// and when `S` rounds stochastically at all (a constant), so that other state types compile no
/// second set of loops.
#[inline(always)]
fn rounds_stochastically<S: Storage<C>, C>(c: &Coefficients<C>) -> bool {
    S::ROUNDS_STOCHASTICALLY && c.flags.stochastic_rounding
}

/// The Adamax update rule.
#[derive(Clone, Copy, Debug, Default)]
pub struct Adamax;

impl Update for Adamax {
    #[inline(always)]
    fn flat<P, S, M, C>(self, slices: TensorSlices<'_, P, S, M>, c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
        M: Storage<C>,
    {
        if rounds_stochastically::<S, C>(c) {
            with_flags!(flat_run[P, S, M, C, true], slices, c)
        } else {
            with_flags!(flat_run[P, S, M, C, false], slices, c)
        }
    }

    #[inline(always)]
    fn strided<P, S, M, C>(self, tensor: &mut StridedTensor<'_, P, S, M>, c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
        M: Storage<C>,
    {
        if rounds_stochastically::<S, C>(c) {
            with_flags!(strided_run[P, S, M, C, true], tensor, c)
        } else {
            with_flags!(strided_run[P, S, M, C, false], tensor, c)
        }
    }

    #[inline(always)]
    fn quantized<P, C>(self, slices: QuantizedSlices<'_, P>, c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        f32: Storage<C>,
    {
        if c.flags.stochastic_rounding {
            with_flags!(quantized_run[P, C, true], slices, c)
        } else {
            with_flags!(quantized_run[P, C, false], slices, c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Hyperparameters;

    #[test]
    fn first_step_moves_each_element_by_lr_times_sign_of_grad() {
        // With t = 1 and zero state: m = (1-b1) g, u = |g|, step = lr/(1-b1), so the change is
        // lr * g / (|g| + eps), i.e. lr * sign(g) up to eps.
        let h = Hyperparameters {
            lr: 0.01,
            ..Hyperparameters::default()
        };
        let c = h.coefficients::<f64>(1);
        let mut p = vec![1.0, -2.0, 0.5];
        let g = vec![3.0, -0.25, 0.0];
        let mut m = vec![0.0; 3];
        let mut u = vec![0.0; 3];
        Adamax.flat(TensorSlices::new(&mut p, &g, &mut m, &mut u).unwrap(), &c);
        assert!((p[0] - (1.0 - 0.01)).abs() < 1e-9);
        assert!((p[1] - (-2.0 + 0.01)).abs() < 1e-9);
        assert_eq!(p[2], 0.5);
        assert_eq!(u, vec![3.0, 0.25, 0.0]);
    }

    #[test]
    fn mismatched_lengths_are_an_error_not_a_panic() {
        let mut p = vec![0.0f32; 3];
        let g = vec![0.0f32; 2];
        let mut m = vec![0.0f32; 3];
        let mut u = vec![0.0f32; 3];
        let err = TensorSlices::new(&mut p, &g, &mut m, &mut u).unwrap_err();
        assert_eq!(err.other, 2);
    }

    #[test]
    fn split_at_clamps() {
        let mut p = vec![0.0f32; 5];
        let g = vec![0.0f32; 5];
        let mut m = vec![0.0f32; 5];
        let mut u = vec![0.0f32; 5];
        let s = TensorSlices::new(&mut p, &g, &mut m, &mut u).unwrap();
        let (a, b) = s.split_at(9);
        assert_eq!((a.len(), b.len()), (5, 0));
    }
}
