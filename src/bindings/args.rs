//! What a step call receives from Python, and how its errors name things.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::kernel::Hyperparameters;

/// One parameter group as the Python layer sends it (a tuple).
#[derive(FromPyObject)]
pub(super) struct GroupArgs<'py>(
    pub Vec<Bound<'py, PyAny>>, // params: ndarrays
    pub Vec<Bound<'py, PyAny>>, // grads: ndarrays, or None to skip the parameter
    pub Vec<Bound<'py, PyAny>>, // exp_avgs: ndarrays (anything where the grad is None)
    pub Vec<Bound<'py, PyAny>>, // exp_infs
    pub Vec<Bound<'py, PyAny>>, // masters: float32/float64 copies of 16-bit params, or None
    pub Vec<i64>,               // steps: the t of this step, >= 1 where the grad is not None
    pub HyperArgs,
);

/// A group's hyperparameters, as a tuple in the order of [`Hyperparameters`]' fields.
#[derive(FromPyObject)]
pub(super) struct HyperArgs(f64, f64, f64, f64, f64, bool, bool, bool);

impl From<&HyperArgs> for Hyperparameters {
    fn from(h: &HyperArgs) -> Self {
        let HyperArgs(lr, beta1, beta2, eps, weight_decay, maximize, eps_inside_max, decoupled) =
            *h;
        Hyperparameters {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            maximize,
            eps_inside_max,
            decoupled_weight_decay: decoupled,
        }
    }
}

/// Checks a group's list lengths and hyperparameter ranges.
pub(super) fn check_group(group: usize, args: &GroupArgs<'_>) -> PyResult<Hyperparameters> {
    let GroupArgs(params, grads, exp_avgs, exp_infs, masters, steps, hyper) = args;
    let n = params.len();
    for (len, what) in [
        (grads.len(), "grads"),
        (exp_avgs.len(), "exp_avgs"),
        (exp_infs.len(), "exp_infs"),
        (masters.len(), "masters"),
        (steps.len(), "steps"),
    ] {
        if len != n {
            return Err(PyValueError::new_err(format!(
                "group {group}: {what} has {len} entries but there are {n} parameters"
            )));
        }
    }
    let hyperparameters = Hyperparameters::from(hyper);
    hyperparameters
        .validate()
        .map_err(|e| PyValueError::new_err(format!("group {group}: {e}")))?;
    Ok(hyperparameters)
}

/// Where an array sits in the step, for error messages.
#[derive(Clone, Copy)]
pub(super) struct Place {
    pub group: usize,
    pub index: usize,
}

impl Place {
    pub fn value_error(self, what: impl std::fmt::Display) -> PyErr {
        PyValueError::new_err(format!(
            "group {}, parameter {}: {what}",
            self.group, self.index
        ))
    }

    pub fn type_error(self, what: impl std::fmt::Display) -> PyErr {
        PyTypeError::new_err(format!(
            "group {}, parameter {}: {what}",
            self.group, self.index
        ))
    }
}

/// The arrays of a tensor, in claim-tag order (`tag = ROLES.len() * tensor + role`).
pub(super) const ROLES: [&str; 5] = [
    "the parameter",
    "the gradient",
    "exp_avg",
    "exp_inf",
    "the master copy",
];
