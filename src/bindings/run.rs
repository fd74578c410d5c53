//! Running a checked step: registering its memory, releasing the GIL when the work is large, and
//! keeping panics out of Python. Every front end ends here.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use pyo3::prelude::*;

use crate::engine::buffers::StepBuffers;
use crate::engine::claims::Registration;
use crate::engine::step::{JobsRefused, StepMemory};
use crate::kernel::Update;

use super::errors::internal;

/// Below this many bytes moved, the step keeps the GIL: releasing and taking it back can cost more
/// than the work (and, with other Python threads busy, up to a switch interval).
pub const KEEP_GIL_BELOW_BYTES: usize = 64 * 1024;

/// Why a checked step did not run; nothing was written.
pub enum RunError {
    /// The count of the tensor at this index of the step, read once its memory was claimed, is
    /// not a count (only counted steps have one: the torch front end's).
    NotACount {
        index: usize,
    },
    Python(PyErr),
}

impl From<PyErr> for RunError {
    fn from(error: PyErr) -> Self {
        RunError::Python(error)
    }
}

/// For the front ends whose steps count nothing in memory, where `NotACount` cannot happen.
impl From<RunError> for PyErr {
    fn from(error: RunError) -> Self {
        match error {
            RunError::Python(error) => error,
            RunError::NotACount { index } => internal(format_args!(
                "tensor {index} of a step has a count that is not one"
            )),
        }
    }
}

/// Registers `step`'s memory (waiting, with the GIL released, for steps on other threads that use
/// the same memory), runs `rule` over it, and releases the memory. Nothing of `step` is read from
/// Python again: everything used comes from its snapshots, and the counts it keeps in memory are
/// read once its memory is claimed.
pub fn run_step<U: Update>(
    py: Python<'_>,
    step: &mut StepMemory<'_>,
    rule: U,
    buffers: &mut StepBuffers,
) -> Result<(), RunError> {
    if step.is_empty() {
        return Ok(());
    }
    let cost = step.cost();
    let claims = Arc::clone(step.claims());
    let outcome = match Registration::try_new(&claims) {
        Ok(registration) => {
            drop(claims);
            match step.jobs(registration, buffers) {
                Ok(registered) => {
                    let run =
                        move || catch_unwind(AssertUnwindSafe(move || Ok(registered.run(rule))));
                    // The registration is released inside `run`, before the GIL is taken back: a
                    // `fork()` waiting (with the GIL) for running steps to finish must not wait for
                    // this thread to get the GIL.
                    if cost < KEEP_GIL_BELOW_BYTES {
                        run()
                    } else {
                        py.detach(run)
                    }
                }
                Err(refused) => Ok(Err(refused)),
            }
        }
        // Another thread's step uses this memory: wait for it, run and release, all without the
        // GIL. A registration must never wait for the GIL: `fork()` holds the GIL while it waits
        // for the running steps to finish, and would wait its full timeout for this one.
        Err(_) => py.detach(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let registration = Registration::waiting(&claims);
                step.jobs(registration, buffers)
                    .map(|registered| registered.run(rule))
            }))
        }),
    };
    match outcome.map_err(|_| internal("a Rust panic during the update"))? {
        Ok(spent) => {
            spent.keep(buffers);
            Ok(())
        }
        Err(JobsRefused::NotACount { index }) => Err(RunError::NotACount { index }),
        Err(JobsRefused::OtherClaims) => Err(internal("a registration for other claims").into()),
    }
}
