//! The Adamax update itself: arithmetic over memory that is already known to be safe to use.
//!
//! This is the leaf of the crate: it knows nothing of Python, threads, instruction sets or how a
//! step is planned. It gives
//! - [`Float`], the compute types, and [`Storage`], how elements are stored and rounded;
//! - [`Hyperparameters`] and the per-tensor [`Coefficients`] derived from them;
//! - [`TensorSlices`] and [`StridedTensor`], one tensor's arrays (flat, or in any layout), and
//!   [`blockwise::QuantizedSlices`], with 8-bit state;
//! - [`Update`], an element-wise rule over those arrays, and [`Adamax`], the optimizer's rule.
//!
//! Every path (flat, strided, every instruction set) goes through the same per-element function,
//! [`adamax_math`], so they give the same bits.

pub mod blockwise;
mod float;
mod hyperparameters;
pub mod precision;
pub mod stochastic;
mod strided;
mod update;

pub use float::{max_propagate_nan, Float};
#[cfg(feature = "python")]
pub(crate) use hyperparameters::PyFloat;
pub use hyperparameters::{
    Coefficients, Flags, HyperparameterError, Hyperparameters, StepSizeType, MAX_STEP,
};
pub use precision::Storage;
pub use strided::{StridedArray, StridedTensor};
pub(crate) use update::for_each_element;
pub use update::{adamax_math, Adamax, LengthMismatch, TensorSlices, Update};
