//! What the user sets (hyperparameters) and what one tensor's update needs (coefficients).

use std::fmt;

use super::float::Float;
use super::stochastic::step_salt;

/// The largest step count a parameter may have: `2**53`, the last integer a float64 holds
/// exactly, so that `beta1 ** t` is computed for exactly the `t` the state says.
pub const MAX_STEP: u64 = 1 << 53;

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
    /// Round bfloat16 state stochastically (see [`super::stochastic`]) instead of to nearest,
    /// and 8-bit `exp_avg` instead of truncating it; float32 and float64 state are unaffected.
    pub stochastic_rounding: bool,
    /// The type the step size `lr / (1 - beta1^t)` is computed in: that of a tensor `lr` in
    /// torch's for-loop Adamax; float64 otherwise.
    pub step_size_type: StepSizeType,
}

/// The floating type torch's for-loop Adamax computes the step size `lr / (1 - beta1^t)` in:
/// that of a tensor `lr` (`lr / bias_correction`, a tensor divided by a Python float).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepSizeType {
    /// Divided in float64: a Python float `lr`, a float64 tensor, or torch's foreach path.
    #[default]
    Float64,
    /// Both rounded to float32, then divided.
    Float32,
    /// As float32, then rounded to float16 (torch divides a half tensor by a scalar in float32).
    Float16,
    /// As float32, then rounded to bfloat16.
    BFloat16,
}

impl StepSizeType {
    /// Its name, as torch's dtype names it without the prefix ("float32").
    pub fn name(self) -> &'static str {
        match self {
            StepSizeType::Float64 => "float64",
            StepSizeType::Float32 => "float32",
            StepSizeType::Float16 => "float16",
            StepSizeType::BFloat16 => "bfloat16",
        }
    }

    /// The type of that name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            StepSizeType::Float64,
            StepSizeType::Float32,
            StepSizeType::Float16,
            StepSizeType::BFloat16,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }

    /// `lr / bias_correction` computed in this type.
    fn divide(self, lr: f64, bias_correction: f64) -> f64 {
        let in_float32 = || lr as f32 / bias_correction as f32;
        match self {
            StepSizeType::Float64 => lr / bias_correction,
            StepSizeType::Float32 => f64::from(in_float32()),
            StepSizeType::Float16 => half::f16::from_f32(in_float32()).to_f64(),
            StepSizeType::BFloat16 => half::bf16::from_f32(in_float32()).to_f64(),
        }
    }
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

/// Formats like Python's `repr` of a float (`1.0`, not Rust's `1`), so that messages read as
/// the Python values the user wrote.
pub(crate) struct PyFloat(pub f64);

impl fmt::Display for PyFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            write!(f, "nan")
        } else if v.is_infinite() {
            write!(f, "{}", if v > 0.0 { "inf" } else { "-inf" })
        } else if v == v.trunc() && v.abs() < 1e16 {
            write!(f, "{v:.1}")
        } else {
            // Python writes exponents with a sign and at least two digits: 1e-08, 1e+16.
            let text = format!("{v:?}");
            match text.split_once('e') {
                Some((mantissa, exponent)) => {
                    let (sign, digits) = match exponent.strip_prefix('-') {
                        Some(digits) => ('-', digits),
                        None => ('+', exponent),
                    };
                    write!(f, "{mantissa}e{sign}{digits:0>2}")
                }
                None => write!(f, "{text}"),
            }
        }
    }
}

impl fmt::Display for HyperparameterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LearningRate(v) => write!(f, "Invalid learning rate: {}", PyFloat(v)),
            Self::Beta { index, value } => {
                write!(
                    f,
                    "Invalid beta parameter at index {index}: {}",
                    PyFloat(value)
                )
            }
            Self::Epsilon(v) => write!(f, "Invalid epsilon value: {}", PyFloat(v)),
            Self::WeightDecay(v) => write!(f, "Invalid weight_decay value: {}", PyFloat(v)),
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
            stochastic_rounding: false,
            step_size_type: StepSizeType::Float64,
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
        // torch's `lr / bias_correction`: with `lr` a tensor, the Python float is rounded to
        // float32 and the division done there, then rounded to the tensor's type.
        let step_size = self.step_size_type.divide(self.lr, bias_correction);
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
            step_size: T::from_f64(step_size),
            rounding_salt: if self.stochastic_rounding {
                step_salt(step)
            } else {
                0
            },
            flags: Flags {
                maximize: self.maximize,
                coupled_weight_decay: coupled,
                eps_inside_max: self.eps_inside_max,
                stochastic_rounding: self.stochastic_rounding,
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
    /// Round bfloat16 and 8-bit state stochastically.
    pub stochastic_rounding: bool,
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
    /// Stochastic rounding only: this step's salt, [`step_salt`] of the step number.
    pub rounding_salt: u32,
    pub flags: Flags,
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
    fn hyperparameter_ranges() {
        assert!(hyper().validate().is_ok());
        let bad_beta = Hyperparameters {
            beta2: 1.0,
            ..hyper()
        };
        // The message is torch's, with the value as Python prints it.
        assert_eq!(
            bad_beta.validate().unwrap_err().to_string(),
            "Invalid beta parameter at index 1: 1.0"
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
    fn python_float_formatting() {
        assert_eq!(PyFloat(1.0).to_string(), "1.0");
        assert_eq!(PyFloat(-0.5).to_string(), "-0.5");
        assert_eq!(PyFloat(1e-8).to_string(), "1e-08");
        assert_eq!(PyFloat(1e16).to_string(), "1e+16");
        assert_eq!(PyFloat(0.001).to_string(), "0.001");
        assert_eq!(PyFloat(f64::NAN).to_string(), "nan");
        assert_eq!(PyFloat(f64::NEG_INFINITY).to_string(), "-inf");
    }
}
