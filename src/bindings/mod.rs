//! The Python module `adamax_rs._core`: conversion, validation, borrowing, GIL release.
//!
//! Nothing here decides what Adamax does; that is `kernel`. A step arrives as one call with
//! every parameter group of the optimizer. Every array of every group is checked first
//! (`tensors`: types, dtypes, shapes, flags, and with `claims`, that nothing written
//! overlaps anything else in the step or in a step running on another thread); only then is
//! any memory written, so an error always leaves every array untouched.

mod args;
mod tensors;

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::dispatch::{self, Isa, Op};
use crate::kernel::Hyperparameters;
use crate::pool;
use crate::schedule::{run_jobs_with, Job, StridedJob};
use args::GroupArgs;
use tensors::{check_step, conflict_error, to_runtime, CheckedStep};

/// Below this many bytes moved, the step keeps the GIL: releasing and taking it back can
/// cost more than the work (and, with other Python threads busy, up to a switch interval).
const KEEP_GIL_BELOW_BYTES: usize = 64 * 1024;

/// Checks, claims and runs one step of `op` over every group.
fn run_step(py: Python<'_>, groups: Vec<GroupArgs<'_>>, op: Op) -> PyResult<()> {
    let CheckedStep {
        tensors,
        places,
        claims,
    } = check_step(&groups)?;
    let checked = claims.check().map_err(|c| conflict_error(&places, c))?;
    // Steps sharing memory with this one (two optimizers over one parameter, on two
    // threads) run one after the other: wait for them with the GIL released.
    let registration = match checked.register() {
        Ok(registration) => registration,
        Err(_) => py.detach(|| checked.register_waiting()),
    };
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(tensors.len());
    let mut strided: Vec<StridedJob<'_>> = Vec::new();
    for tensor in &tensors {
        // SAFETY: `registration` lives until the end of this function, after every job
        // has run.
        unsafe { tensor.plan(&mut jobs, &mut strided)? };
    }
    if op == Op::BandwidthProbe && !strided.is_empty() {
        return Err(PyValueError::new_err(
            "the bandwidth probe needs arrays that share one contiguous layout",
        ));
    }
    let cost: usize = jobs.iter().map(Job::cost).sum::<usize>()
        + strided.iter().map(StridedJob::cost).sum::<usize>();
    let work = move || {
        // The kernel has no panicking paths; this is the last line of defence so that a
        // bug shows up as a RuntimeError and never as pyo3's PanicException.
        catch_unwind(AssertUnwindSafe(|| {
            strided.into_iter().for_each(StridedJob::run);
            run_jobs_with(jobs, op);
        }))
        .map_err(|_| "a Rust panic during the update")
    };
    let outcome = if cost < KEEP_GIL_BELOW_BYTES {
        work()
    } else {
        py.detach(work)
    };
    drop(registration);
    outcome.map_err(to_runtime)
}

/// adamax_step(groups, /)
/// --
///
/// One Adamax step over every parameter group of an optimizer, in place.
#[pyfunction]
fn adamax_step(py: Python<'_>, groups: Vec<GroupArgs<'_>>) -> PyResult<()> {
    run_step(py, groups, Op::Adamax)
}

/// bandwidth_probe(groups, /)
/// --
///
/// Moves exactly the memory an Adamax step moves, with trivial arithmetic (benchmarks only).
#[pyfunction]
fn bandwidth_probe(py: Python<'_>, groups: Vec<GroupArgs<'_>>) -> PyResult<()> {
    run_step(py, groups, Op::BandwidthProbe)
}

/// Checks hyperparameter ranges; raises ValueError naming the first bad one.
#[pyfunction]
#[pyo3(signature = (lr, beta1, beta2, eps, weight_decay))]
fn check_hyperparameters(
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
) -> PyResult<()> {
    Hyperparameters {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        ..Hyperparameters::default()
    }
    .validate()
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Sets the number of threads a step may use; 0 restores the default.
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    let n = usize::try_from(n)
        .map_err(|_| PyValueError::new_err(format!("number of threads must be >= 0, got {n}")))?;
    pool::set_num_threads(n);
    Ok(())
}

/// The number of threads a step may use.
#[pyfunction]
fn get_num_threads() -> usize {
    pool::num_threads()
}

/// The vector instruction set the kernel uses on this CPU.
#[pyfunction]
fn simd_level() -> &'static str {
    match dispatch::detected() {
        Isa::Baseline => "baseline",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
    }
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(adamax_step, m)?)?;
    m.add_function(wrap_pyfunction!(bandwidth_probe, m)?)?;
    m.add_function(wrap_pyfunction!(check_hyperparameters, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    Ok(())
}
