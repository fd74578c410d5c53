//! adamax_rs: the Adamax optimizer step in Rust.
//!
//! The crate is split by what each part knows about:
//! - [`kernel`]: the update over flat slices, pure arithmetic;
//! - [`dispatch`]: the same loop built for several vector instruction sets, chosen at run time;
//! - [`strided`]: the same update for arrays whose layouts differ;
//! - [`schedule`]: how one step's tensors are split between threads;
//! - [`pool`]: the thread pool (size, fork safety);
//! - `bindings` (feature `python`): the PyO3 module `adamax_rs._core`, which only converts,
//!   validates, borrows and releases the GIL.

pub mod claims;
pub mod dispatch;
pub mod kernel;
pub mod pool;
pub mod precision;
pub mod schedule;
pub mod strided;

#[cfg(feature = "python")]
mod bindings;

pub use dispatch::Op;
pub use kernel::{adamax_update, Coefficients, Float, Hyperparameters, TensorSlices};
pub use precision::Storage;
pub use schedule::{run_jobs, run_jobs_with, Job, Precision, StridedJob};
pub use strided::{adamax_update_strided, TensorViews};
