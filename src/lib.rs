//! adamax_rs: the Adamax optimizer step in Rust.
//!
//! Three layers, each using only the ones above it:
//! - [`kernel`]: the update itself over memory already known to be safe (no Python, no threads);
//!   [`simd`] builds its loops for several instruction sets and picks one at run time;
//! - [`engine`]: typed step plans: checking a step's arrays, claiming their memory, splitting the
//!   work over the thread pool;
//! - `bindings` (feature `python`): the PyO3 module `adamax_rs._core`, whose front ends (numpy
//!   arrays, torch tensors) only convert objects into the engine's array descriptions.
//!
//! [`probe`] is a benchmark tool: an update rule with Adamax's memory traffic and no arithmetic.

pub mod engine;
pub mod kernel;
pub mod probe;
pub mod simd;

#[cfg(feature = "python")]
mod bindings;
