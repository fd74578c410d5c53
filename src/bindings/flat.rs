//! The check behind `adamax_rs.FlatParameter`: are its members' `data` and `grad` still the views
//! of its buffers that it gave them?
//!
//! A `FlatParameter` steps one buffer in place of many parameters, which is only the same update
//! while every member still reads and writes that buffer. A member whose `data` or `grad` was
//! rebound to another array would silently stop training, so every step compares each member's
//! two slots with the views it was given, by identity: two loads and two compares per member.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::parameter::slot_addresses;

/// check_flat_members(members, data_views, grad_views, /)
/// --
///
/// Raises ``ValueError`` naming the first member (an ``adamax_rs.Parameter``) whose ``data`` is
/// not ``data_views[i]`` or whose ``grad`` is not ``grad_views[i]`` (three tuples of one length).
#[pyfunction]
pub fn check_flat_members(
    members: &Bound<'_, PyTuple>,
    data_views: &Bound<'_, PyTuple>,
    grad_views: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    super::errors::guarded(|| {
        let n = members.len();
        if data_views.len() != n || grad_views.len() != n {
            return Err(PyValueError::new_err(format!(
                "{n} members but {} data views and {} gradient views",
                data_views.len(),
                grad_views.len()
            )));
        }
        for (index, ((member, data), grad)) in members
            .iter_borrowed()
            .zip(data_views.iter_borrowed())
            .zip(grad_views.iter_borrowed())
            .enumerate()
        {
            let Some((data_now, grad_now)) = slot_addresses(&member) else {
                return Err(PyTypeError::new_err(format!(
                    "FlatParameter member {index} is not an adamax_rs.Parameter"
                )));
            };
            let what = if data_now != data.as_ptr() as usize {
                "data"
            } else if grad_now != grad.as_ptr() as usize {
                "grad"
            } else {
                continue;
            };
            return Err(PyValueError::new_err(format!(
                "FlatParameter member {index}: its {what} was rebound to another array, so the \
                 flat buffer no longer holds it; write into it in place instead (for example \
                 p.{what}[...] = values), or build a new FlatParameter"
            )));
        }
        Ok(())
    })
}
