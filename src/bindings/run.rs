//! Running a checked step: registering its memory, releasing the GIL when the work is large, and
//! keeping panics out of Python. Every front end ends here.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use pyo3::prelude::*;

use crate::engine::buffers::StepBuffers;
use crate::engine::claims::Registration;
use crate::engine::step::StepMemory;
use crate::kernel::Update;

use super::errors::internal;

/// Below this many bytes moved, the step keeps the GIL: releasing and taking it back can cost more
/// than the work (and, with other Python threads busy, up to a switch interval).
pub const KEEP_GIL_BELOW_BYTES: usize = 64 * 1024;

/// Registers `step`'s memory (waiting, with the GIL released, for steps on other threads that use
/// the same memory), runs `rule` over it, and releases the memory. Nothing of `step` is read from
/// Python again: everything used comes from its snapshots.
pub fn run_step<U: Update>(
    py: Python<'_>,
    step: &StepMemory<'_>,
    rule: U,
    buffers: &mut StepBuffers,
) -> PyResult<()> {
    if step.is_empty() {
        return Ok(());
    }
    let claims = Arc::clone(step.claims());
    let outcome = match Registration::try_new(&claims) {
        Ok(registration) => {
            drop(claims);
            let registered = step
                .jobs(registration, buffers)
                .map_err(|_| internal("a registration for other claims"))?;
            let run = move || catch_unwind(AssertUnwindSafe(move || Some(registered.run(rule))));
            // The registration is released inside `run`, before the GIL is taken back: a `fork()`
            // waiting (with the GIL) for running steps to finish must not wait for this thread to
            // get the GIL.
            if step.cost() < KEEP_GIL_BELOW_BYTES {
                run()
            } else {
                py.detach(run)
            }
        }
        // Another thread's step uses this memory: wait for it, run and release, all without the
        // GIL. A registration must never wait for the GIL: `fork()` holds the GIL while it waits
        // for the running steps to finish, and would wait its full timeout for this one.
        Err(_) => py.detach(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let registration = Registration::waiting(&claims);
                // `None` (never expected): the registration is for other claims; it is released.
                step.jobs(registration, buffers)
                    .ok()
                    .map(|registered| registered.run(rule))
            }))
        }),
    };
    let spent = outcome
        .map_err(|_| internal("a Rust panic during the update"))?
        .ok_or_else(|| internal("a registration for other claims"))?;
    spent.keep(buffers);
    Ok(())
}
