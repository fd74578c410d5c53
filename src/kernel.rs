//! The Adamax update over flat slices: no Python, no threads, no allocation.
//!
//! One call updates one contiguous run of elements in a single pass over memory, reading
//! `param`, `grad`, `exp_avg`, `exp_inf` and writing `param`, `exp_avg`, `exp_inf` back (with
//! master weights, the float32 master copy is read and written and the parameter only
//! written). The loop body is branch-free and written over zipped slices so that LLVM
//! vectorises it; the option flags are compile-time parameters so that each combination gets
//! its own tight loop.
//!
//! Parameters are stored as `P`, state as `S`, and the arithmetic runs in `C` (see
//! [`crate::precision`]). Every scalar coefficient is computed once per tensor in `f64` and
//! rounded to `C`, exactly as numpy rounds a Python float used with a float32 array. The
//! element operations then happen in the order of the formula in the README, so a plain
//! numpy implementation of it gives the same bits. With `eps_inside_max` the order and the
//! fused multiply-adds are those of `torch.optim.Adamax`'s CPU kernels instead.

use std::fmt;
use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::dispatch;
use crate::precision::Storage;

/// The element types the kernel works in.
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
    /// The absolute value (clears the sign bit; NaN stays NaN).
    fn abs(self) -> Self;
    /// `true` for NaN.
    fn is_nan(self) -> bool;
    /// `self * a + b` with one rounding (as ATen's `fmadd`).
    fn mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            #[inline(always)]
            fn from_f64(value: f64) -> Self {
                value as $t
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
        }
    };
}

impl_float!(f32);
impl_float!(f64);

/// `max(a, b)` that returns NaN when either operand is NaN, like `numpy.maximum`.
///
/// `f32::max` implements IEEE maxNum and would silently drop a NaN gradient; a diverging run
/// must show up as NaN in the parameter instead.
#[inline(always)]
pub fn max_propagate_nan<T: Float>(a: T, b: T) -> T {
    if b.is_nan() || b > a {
        b
    } else {
        a
    }
}

/// The hyperparameters of one Adamax step, as the user gives them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyperparameters {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment, in `[0, 1)`.
    pub beta1: f64,
    /// Decay of the infinity norm, in `[0, 1)`.
    pub beta2: f64,
    /// Added to the denominator (or inside the max, with `eps_inside_max`).
    pub eps: f64,
    /// Weight decay: L2 added to the gradient, or AdamW-style with `decoupled_weight_decay`.
    pub weight_decay: f64,
    /// Ascend the objective instead of descending it.
    pub maximize: bool,
    /// `u = max(beta2 * u, |g| + eps)` and `param -= s * m / u`, as torch and optax do,
    /// computed in the order of torch's CPU kernels (lerp and weight decay fused).
    pub eps_inside_max: bool,
    /// `param *= 1 - lr * weight_decay` instead of adding `weight_decay * param` to the gradient.
    pub decoupled_weight_decay: bool,
}

/// Why a set of hyperparameters was refused.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HyperparameterError {
    /// The learning rate is negative or not finite.
    LearningRate(f64),
    /// A beta is outside `[0, 1)` or NaN; `index` is 0 for beta1 and 1 for beta2.
    Beta { index: usize, value: f64 },
    /// eps is negative or not finite.
    Epsilon(f64),
    /// The weight decay is negative or not finite.
    WeightDecay(f64),
}

impl fmt::Display for HyperparameterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LearningRate(v) => write!(f, "Invalid learning rate (lr): {v}"),
            Self::Beta { index, value } => {
                write!(f, "Invalid beta parameter at index {index}: {value}")
            }
            Self::Epsilon(v) => write!(f, "Invalid epsilon value (eps): {v}"),
            Self::WeightDecay(v) => write!(f, "Invalid weight_decay value: {v}"),
        }
    }
}

impl std::error::Error for HyperparameterError {}

impl Default for Hyperparameters {
    /// The defaults of `adamax_rs.Adamax` (and of torch and lucid): lr 0.002, betas
    /// (0.9, 0.999), eps 1e-8, no weight decay, no options.
    fn default() -> Self {
        Hyperparameters {
            lr: 0.002,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
            eps_inside_max: false,
            decoupled_weight_decay: false,
        }
    }
}

impl Hyperparameters {
    /// Checks the ranges: `lr, eps, weight_decay` finite and `>= 0`, betas in `[0, 1)`.
    pub fn validate(&self) -> Result<(), HyperparameterError> {
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !non_negative(self.lr) {
            return Err(HyperparameterError::LearningRate(self.lr));
        }
        for (index, value) in [self.beta1, self.beta2].into_iter().enumerate() {
            if !(0.0..1.0).contains(&value) {
                return Err(HyperparameterError::Beta { index, value });
            }
        }
        if !non_negative(self.eps) {
            return Err(HyperparameterError::Epsilon(self.eps));
        }
        if !non_negative(self.weight_decay) {
            return Err(HyperparameterError::WeightDecay(self.weight_decay));
        }
        Ok(())
    }

    /// The per-tensor coefficients for step number `step` (the first step is 1).
    ///
    /// The bias correction `1 - beta1^t` uses `powf`, i.e. the C library's `pow`, which is
    /// what Python's `beta1 ** t` calls; `powi` would differ in the last bit for some `t`.
    pub fn coefficients<T: Float>(&self, step: u64) -> Coefficients<T> {
        let bias_correction = 1.0 - self.beta1.powf(step as f64);
        let coupled = self.weight_decay != 0.0 && !self.decoupled_weight_decay;
        let decoupled = self.weight_decay != 0.0 && self.decoupled_weight_decay;
        // torch's `exp_avg.lerp_(grad, 1 - beta1)`: the weight is rounded to the tensor's
        // type, and ATen picks its formula by comparing that weight with 0.5.
        let lerp_weight = T::from_f64(1.0 - self.beta1);
        let one = T::from_f64(1.0);
        Coefficients {
            lerp_weight,
            lerp_weight_complement: one - lerp_weight,
            lerp_from_start: lerp_weight.abs() < T::from_f64(0.5),
            beta1: T::from_f64(self.beta1),
            one_minus_beta1: T::from_f64(1.0 - self.beta1),
            beta2: T::from_f64(self.beta2),
            eps: T::from_f64(self.eps),
            weight_decay: T::from_f64(self.weight_decay),
            decay_factor: T::from_f64(if decoupled {
                1.0 - self.lr * self.weight_decay
            } else {
                1.0
            }),
            step_size: T::from_f64(self.lr / bias_correction),
            flags: Flags {
                maximize: self.maximize,
                coupled_weight_decay: coupled,
                eps_inside_max: self.eps_inside_max,
            },
        }
    }
}

/// The options that change the shape of the loop; each combination is its own loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    /// Negate the gradient.
    pub maximize: bool,
    /// Add `weight_decay * param` to the gradient.
    pub coupled_weight_decay: bool,
    /// eps inside the max, with torch's order of operations.
    pub eps_inside_max: bool,
}

/// Everything one tensor's update needs, rounded to the element type once per step.
#[derive(Clone, Copy, Debug)]
pub struct Coefficients<T> {
    pub beta1: T,
    pub one_minus_beta1: T,
    pub beta2: T,
    pub eps: T,
    pub weight_decay: T,
    /// `1 - lr * weight_decay` with decoupled weight decay, exactly 1 otherwise (`p * 1 == p`).
    pub decay_factor: T,
    /// `lr / (1 - beta1^t)`.
    pub step_size: T,
    /// torch order only: the lerp weight `1 - beta1`, its complement `1 - w` (computed in
    /// `T`), and whether ATen's lerp uses its `start + w * (end - start)` form.
    pub lerp_weight: T,
    pub lerp_weight_complement: T,
    pub lerp_from_start: bool,
    pub flags: Flags,
}

/// The arrays of one tensor (or a piece of it), checked to have one length: the parameter
/// and its gradient stored as `P`, the state (and the optional master copy) as `S`.
#[derive(Debug)]
pub struct TensorSlices<'a, P, S> {
    pub(crate) param: &'a mut [P],
    pub(crate) grad: &'a [P],
    pub(crate) exp_avg: &'a mut [S],
    pub(crate) exp_inf: &'a mut [S],
    pub(crate) master: Option<&'a mut [S]>,
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

impl<'a, P, S> TensorSlices<'a, P, S> {
    /// Groups the slices of one tensor; they must have the same length.
    pub fn new(
        param: &'a mut [P],
        grad: &'a [P],
        exp_avg: &'a mut [S],
        exp_inf: &'a mut [S],
    ) -> Result<Self, LengthMismatch> {
        Self::with_master(param, grad, exp_avg, exp_inf, None)
    }

    /// As [`TensorSlices::new`], with an optional master copy of the parameter (which is
    /// then read instead of `param`; `param` receives the rounded result).
    pub fn with_master(
        param: &'a mut [P],
        grad: &'a [P],
        exp_avg: &'a mut [S],
        exp_inf: &'a mut [S],
        master: Option<&'a mut [S]>,
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
        (
            Self {
                param: p0,
                grad: g0,
                exp_avg: m0,
                exp_inf: u0,
                master: w0,
            },
            Self {
                param: p1,
                grad: g1,
                exp_avg: m1,
                exp_inf: u1,
                master: w1,
            },
        )
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
        // `end - (end - start) * (1 - w)`, each one fused multiply-add.
        let delta = g - exp_avg;
        if c.lerp_from_start {
            c.lerp_weight.mul_add(delta, exp_avg)
        } else {
            (-c.lerp_weight_complement).mul_add(delta, g)
        }
    } else {
        c.beta1 * exp_avg + c.one_minus_beta1 * g
    };
    let abs_g = if TORCH { g.abs() + c.eps } else { g.abs() };
    let u = max_propagate_nan(c.beta2 * exp_inf, abs_g);
    let denominator = if TORCH { u } else { u + c.eps };
    (p - c.step_size * m / denominator, m, u)
}

/// The update of one stored element: load into `C`, compute, store back rounded.
#[inline(always)]
pub fn update_element<P, S, C, const MAXIMIZE: bool, const COUPLED: bool, const TORCH: bool>(
    param: &mut P,
    grad: P,
    exp_avg: &mut S,
    exp_inf: &mut S,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    let (p, m, u) = adamax_math::<C, MAXIMIZE, COUPLED, TORCH>(
        param.load(),
        grad.load(),
        exp_avg.load(),
        exp_inf.load(),
        c,
    );
    *param = P::store(p);
    *exp_avg = S::store(m);
    *exp_inf = S::store(u);
}

/// As [`update_element`], reading the parameter from its master copy and writing both.
#[inline(always)]
pub fn update_element_master<
    P,
    S,
    C,
    const MAXIMIZE: bool,
    const COUPLED: bool,
    const TORCH: bool,
>(
    param: &mut P,
    master: &mut S,
    grad: P,
    exp_avg: &mut S,
    exp_inf: &mut S,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    let (p, m, u) = adamax_math::<C, MAXIMIZE, COUPLED, TORCH>(
        master.load(),
        grad.load(),
        exp_avg.load(),
        exp_inf.load(),
        c,
    );
    let stored = S::store(p);
    *master = stored;
    *param = P::store(stored.load());
    *exp_avg = S::store(m);
    *exp_inf = S::store(u);
}

/// Runs `$plain` for every element of `$slices`, with `$p, $g, $m, $u` bound to the
/// parameter, the gradient's value, exp_avg and exp_inf; or, when the slices carry a master
/// copy, `$with_master` with `$w` bound to it too. A macro rather than a function taking
/// closures: LLVM did not inline the closures around the 16-bit conversions, which made the
/// float16 loop scalar (4x slower), and a loop body must be inlined to be vectorised.
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

/// The loop over one run of elements, for one combination of flags.
#[inline(always)]
pub(crate) fn update_run<P, S, C, const MAXIMIZE: bool, const COUPLED: bool, const TORCH: bool>(
    s: TensorSlices<'_, P, S>,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    for_each_element!(
        s,
        |p, g, m, u| { update_element::<P, S, C, MAXIMIZE, COUPLED, TORCH>(p, g, m, u, c) },
        |w| { update_element_master::<P, S, C, MAXIMIZE, COUPLED, TORCH>(p, w, g, m, u, c) }
    );
}

/// The bandwidth probe: the same reads and writes as [`update_run`], trivial arithmetic.
///
/// Its time over a large tensor is the practical floor for any one-pass optimizer on this
/// machine; the benchmarks report the Adamax kernel against it.
#[inline(always)]
pub(crate) fn probe_run<P, S, C>(s: TensorSlices<'_, P, S>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    for_each_element!(
        s,
        |p, g, m, u| {
            let g: C = g.load();
            *p = P::store(p.load() + g);
            *m = S::store(m.load() + g);
            *u = S::store(u.load() + g);
        },
        |w| {
            let g: C = g.load();
            let new: C = w.load() + g;
            *w = S::store(new);
            *p = P::store(new);
            *m = S::store(m.load() + g);
            *u = S::store(u.load() + g);
        }
    );
}

/// Updates one run of elements in place, with the widest vector unit this CPU has.
pub fn adamax_update<P, S, C>(slices: TensorSlices<'_, P, S>, coefficients: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    dispatch::run(dispatch::detected(), slices, coefficients);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper() -> Hyperparameters {
        Hyperparameters {
            lr: 0.01,
            ..Hyperparameters::default()
        }
    }

    #[test]
    fn nan_propagates_through_max_from_either_side() {
        assert!(max_propagate_nan(f32::NAN, 1.0).is_nan());
        assert!(max_propagate_nan(1.0, f32::NAN).is_nan());
        assert_eq!(max_propagate_nan(1.0f64, 2.0), 2.0);
        assert_eq!(max_propagate_nan(3.0f64, 2.0), 3.0);
    }

    #[test]
    fn first_step_moves_each_element_by_lr_times_sign_of_grad() {
        // With t = 1 and zero state: m = (1-b1) g, u = |g|, step = lr/(1-b1), so the
        // change is lr * g / (|g| + eps), i.e. lr * sign(g) up to eps.
        let h = hyper();
        let c = h.coefficients::<f64>(1);
        let mut p = vec![1.0, -2.0, 0.5];
        let g = vec![3.0, -0.25, 0.0];
        let mut m = vec![0.0; 3];
        let mut u = vec![0.0; 3];
        adamax_update(TensorSlices::new(&mut p, &g, &mut m, &mut u).unwrap(), &c);
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
    fn hyperparameter_ranges() {
        assert!(hyper().validate().is_ok());
        let bad_beta = Hyperparameters {
            beta2: 1.0,
            ..hyper()
        };
        assert_eq!(
            bad_beta.validate().unwrap_err().to_string(),
            "Invalid beta parameter at index 1: 1"
        );
        for h in [
            Hyperparameters {
                lr: -1.0,
                ..hyper()
            },
            Hyperparameters {
                lr: f64::NAN,
                ..hyper()
            },
            Hyperparameters {
                eps: f64::INFINITY,
                ..hyper()
            },
            Hyperparameters {
                weight_decay: -0.1,
                ..hyper()
            },
            Hyperparameters {
                beta1: f64::NAN,
                ..hyper()
            },
        ] {
            assert!(h.validate().is_err(), "{h:?}");
        }
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
