//! Which state an optimizer keeps for each parameter: shared by the numpy and torch front ends.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::engine::memory::{Element, RawArray};
use crate::kernel::Hyperparameters;

/// Parameters with fewer elements than this keep float32 state under `state_dtype="8bit"`: for
/// them the scales would be a large share of the state, and they are a small share of the
/// memory (bitsandbytes uses the same threshold).
pub const BLOCKWISE_MIN_ELEMENTS: usize = 4096;

/// The state dtype an optimizer was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// float32 for 16-bit parameters, the parameter's own precision otherwise.
    Default,
    Float32,
    Float64,
    /// bfloat16 moments, float32 arithmetic.
    BFloat16,
    /// 8-bit block state (uint8 codes and float32 block scales), float32 arithmetic.
    Blockwise8,
}

/// Which state an optimizer keeps for a parameter: its element type and whether a master copy.
#[derive(Clone, Copy, Debug)]
pub struct StatePolicy {
    pub kind: StateKind,
    /// Keep a float copy of 16-bit parameters, updated and rounded into them each step.
    pub master_weights: bool,
    /// Round bfloat16 or 8-bit state stochastically (only with
    /// [`StateKind::BFloat16`] or [`StateKind::Blockwise8`]).
    pub stochastic_rounding: bool,
}

impl StatePolicy {
    /// A policy for `kind`. `stochastic_rounding` is `None` by default, which rounds
    /// stochastically exactly where the state is compressed (bfloat16 or 8-bit): rounded to
    /// nearest, bfloat16 `exp_inf` cannot decay by `beta2 = 0.999`, and directed 8-bit codes
    /// shrink the steps; both then train far worse than float32 state. `Some(true)` is refused
    /// (`ValueError`) unless the state is bfloat16 or 8-bit, the only states it changes: an
    /// option that did nothing would hide a mistake.
    pub fn new(
        kind: StateKind,
        master_weights: bool,
        stochastic_rounding: Option<bool>,
    ) -> PyResult<Self> {
        let compressed = matches!(kind, StateKind::BFloat16 | StateKind::Blockwise8);
        if stochastic_rounding == Some(true) && !compressed {
            return Err(PyValueError::new_err(
                "stochastic_rounding=True needs state_dtype='bfloat16' or '8bit': it is how \
                 their moments are rounded (float32 and float64 state are stored as computed)",
            ));
        }
        Ok(StatePolicy {
            kind,
            master_weights,
            stochastic_rounding: stochastic_rounding.unwrap_or(compressed),
        })
    }

    /// `h` with this policy's rounding: each step plan applies it to every group.
    pub fn apply(&self, h: Hyperparameters) -> Hyperparameters {
        Hyperparameters {
            stochastic_rounding: self.stochastic_rounding,
            ..h
        }
    }

    /// The element type of the state of `param` (`UInt8` for 8-bit block state).
    pub fn state_element(&self, param: &RawArray) -> Element {
        let element = param.element;
        if let Some(part) = element.real_part() {
            // No complex type narrower than complex64: complex parameters keep complex64 state
            // unless float64 was asked for (or they are complex128 by default).
            let double = self.kind == StateKind::Float64
                || (self.kind == StateKind::Default && part == Element::Float64);
            return if double {
                Element::Complex128
            } else {
                Element::Complex64
            };
        }
        match self.kind {
            StateKind::Default => match element {
                Element::Float16 | Element::BFloat16 => Element::Float32,
                other => other,
            },
            StateKind::Float32 => Element::Float32,
            StateKind::Float64 => Element::Float64,
            StateKind::BFloat16 => Element::BFloat16,
            StateKind::Blockwise8 if blockwise_fits(param) => Element::UInt8,
            StateKind::Blockwise8 => Element::Float32,
        }
    }

    /// Whether `param` has a master copy.
    pub fn wants_master(&self, param: Element) -> bool {
        self.master_weights && matches!(param, Element::Float16 | Element::BFloat16)
    }

    /// The element type of `param`'s master copy: the state's, and at least float32.
    pub fn master_element(&self, param: &RawArray) -> Element {
        match self.state_element(param) {
            Element::Float64 => Element::Float64,
            _ => Element::Float32,
        }
    }

    /// A phrase for messages: what state this optimizer keeps for such a parameter.
    pub fn describe(&self, param: &RawArray) -> String {
        match self.state_element(param) {
            Element::UInt8 => format!("8-bit (uint8) state for {} parameters", param.element),
            state => format!("{state} state for {} parameters", param.element),
        }
    }
}

/// Whether 8-bit block state applies to `param`: real, dense (its elements fill its memory in
/// one order, which the codes then follow), with no negative stride (codes are made with
/// `zeros_like`, whose strides are positive, so a reversed parameter's codes would run the
/// other way and be refused at the first step), and not small.
pub fn blockwise_fits(param: &RawArray) -> bool {
    param.element.real_part().is_none()
        && param.len().is_some_and(|n| n >= BLOCKWISE_MIN_ELEMENTS)
        && param.is_dense()
        && param.strides.iter().all(|&stride| stride >= 0)
}

/// The state kind an optimizer was asked for: `None`, "float32", "float64", "bfloat16" or
/// "8bit".
pub fn state_kind(value: Option<&str>) -> PyResult<StateKind> {
    match value {
        None => Ok(StateKind::Default),
        Some("float32") => Ok(StateKind::Float32),
        Some("float64") => Ok(StateKind::Float64),
        Some("bfloat16") => Ok(StateKind::BFloat16),
        Some("8bit") => Ok(StateKind::Blockwise8),
        Some(other) => Err(PyValueError::new_err(format!(
            "state_dtype must be None, 'float32', 'float64', 'bfloat16' or '8bit', got {other:?}"
        ))),
    }
}
