//! How the bindings report problems: Python exceptions that name the group, the parameter and
//! the array, and a guard that keeps a Rust panic from ever reaching Python.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::engine::claims::Conflict;
use crate::engine::step::{Role, TensorError};

/// Where a tensor sits in a step, for messages: `group 1, parameter 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    pub group: usize,
    pub index: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}, parameter {}", self.group, self.index)
    }
}

impl Place {
    /// A `ValueError` about this tensor.
    pub fn value_error(self, what: impl fmt::Display) -> PyErr {
        PyValueError::new_err(format!("{self}: {what}"))
    }

    /// A `TypeError` about this tensor.
    pub fn type_error(self, what: impl fmt::Display) -> PyErr {
        PyTypeError::new_err(format!("{self}: {what}"))
    }

    /// The exception for an engine check that failed on this tensor.
    pub fn tensor_error(self, error: TensorError) -> PyErr {
        if error.is_type_error() {
            self.type_error(error)
        } else {
            self.value_error(error)
        }
    }
}

/// The `ValueError` for two arrays that overlap, in this step (`places[i]` is the place of the
/// step's tensor `i`) or with a step on another thread.
pub fn conflict_error(places: &[Place], conflict: Conflict) -> PyErr {
    let describe = |tag: usize| {
        let (tensor, role) = Role::of_tag(tag);
        (places[tensor], role)
    };
    match conflict {
        Conflict::WithinStep { first, second } => {
            let (mut a, mut b) = (describe(first), describe(second));
            if (b.0, b.1 as usize) < (a.0, a.1 as usize) {
                std::mem::swap(&mut a, &mut b);
            }
            let other = if a.0 == b.0 {
                b.1.describe().to_string()
            } else {
                format!("{} of {}", b.1.describe(), b.0)
            };
            let remedy = if a.1 == Role::Step || b.1 == Role::Step {
                " (give it one: state['step'] = state['step'].clone())"
            } else {
                ""
            };
            a.0.value_error(format_args!(
                "{} shares memory with {other}; each parameter, gradient and state array written \
                 in a step needs memory of its own{remedy}",
                a.1.describe()
            ))
        }
        Conflict::OtherStep { tag } => {
            let (place, role) = describe(tag);
            place.value_error(format_args!(
                "{} is in use by a step on another thread",
                role.describe()
            ))
        }
    }
}

/// An inconsistency inside adamax_rs (never expected): a Python error, not a panic.
pub fn internal(what: impl fmt::Display) -> PyErr {
    PyRuntimeError::new_err(format!("adamax_rs internal error: {what}"))
}

/// Runs `f`, turning a panic into a `RuntimeError`: no panic may reach Python as pyo3's
/// `PanicException` (a `BaseException` that `except Exception` does not catch).
pub fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(internal(format_args!("a Rust panic: {detail}")))
    })
}
