//! The Python module `adamax_rs._core`.
//!
//! Front ends only convert: the numpy one reads ndarray headers ([`ndarray`]) and parameters
//! ([`parameter`]) into the engine's array descriptions; everything is checked, claimed and run
//! by the engine ([`run`]). No panic reaches Python ([`errors::guarded`]).

mod arrays;
mod dlpack;
mod errors;
mod flat;
mod functional;
mod gil_cell;
mod hyperparameters;
mod lazy_bits;
mod ndarray;
mod numpy_plan;
mod parameter;
mod policy;
mod quantize;
mod reentry;
mod run;
mod state;
mod state_cursor;
mod torch_function;
mod torch_plan;
mod torch_state_entry;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::engine::{fork, pool};
use crate::simd;

/// Set the number of threads a step may use, for every optimizer of the process.
///
/// Parameters
/// ----------
/// n : int
///     The thread count, at most 1024; ``0`` restores the default (``RAYON_NUM_THREADS`` if
///     set, else every core available to the process). Steps that start afterwards use it.
///
/// Raises
/// ------
/// TypeError
///     If ``n`` is not an int (a bool is refused).
/// ValueError
///     If ``n`` is negative or above 1024.
#[pyfunction]
fn set_num_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    let limit = pool::MAX_THREADS;
    let message = || {
        format!(
            "the number of threads must be an int between 0 and {limit}, got {}",
            n.repr().map(|r| r.to_string()).unwrap_or_default()
        )
    };
    if n.is_instance_of::<pyo3::types::PyBool>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(message()));
    }
    // An int too large for the conversion (10**400) is a wrong value, not a wrong type.
    let count: i128 = n.extract().map_err(|error: PyErr| {
        if error.is_instance_of::<pyo3::exceptions::PyOverflowError>(n.py()) {
            PyValueError::new_err(message())
        } else {
            pyo3::exceptions::PyTypeError::new_err(message())
        }
    })?;
    let count = usize::try_from(count).map_err(|_| PyValueError::new_err(message()))?;
    pool::set_num_threads(count).map_err(|_| PyValueError::new_err(message()))
}

/// The number of threads a step may use.
///
/// Returns
/// -------
/// int
///     The count set by :func:`set_num_threads`, or the default: ``RAYON_NUM_THREADS`` if
///     set, else every core available to the process.
#[pyfunction]
fn get_num_threads() -> usize {
    pool::num_threads()
}

/// The vector instruction set the kernel uses on this CPU.
///
/// Returns
/// -------
/// str
///     ``"avx512"``, ``"avx2"`` or ``"baseline"`` (portable code, which the compiler may
///     still vectorize). Results are the same bits whichever is used.
#[pyfunction]
fn simd_level() -> &'static str {
    simd::detected().name()
}

// `gil_used = true`: the fields of `Parameter` and of the optimizer state are guarded by the GIL
// (see `gil_cell`), so a free-threaded interpreter must keep the GIL on while this is loaded.
#[pymodule(gil_used = true)]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    fork::install_fork_handlers();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<parameter::Parameter>()?;
    m.add_class::<flat::FlatMembers>()?;
    m.add_class::<state::ParameterState>()?;
    m.add_class::<state::StateEntry>()?;
    m.add_class::<hyperparameters::PyHyperparameters>()?;
    m.add_class::<numpy_plan::StepPlan>()?;
    m.add_class::<torch_plan::TorchStepPlan>()?;
    m.add_function(wrap_pyfunction!(functional::adamax_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(functional::bandwidth_probe, m)?)?;
    m.add_function(wrap_pyfunction!(quantize::quantize_moments, m)?)?;
    m.add_function(wrap_pyfunction!(quantize::dequantize_moments, m)?)?;
    m.add_function(wrap_pyfunction!(quantize::blockwise_fits, m)?)?;
    m.add("BLOCK", crate::kernel::blockwise::BLOCK)?;
    m.add("BLOCKWISE_MIN_ELEMENTS", policy::BLOCKWISE_MIN_ELEMENTS)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    Ok(())
}
