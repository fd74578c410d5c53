//! The links behind `adamax_rs.FlatParameter`: which views of its buffers each member holds.
//!
//! A `FlatParameter` steps one buffer in place of many parameters, which is only the same update
//! while every member still reads and writes its part of that buffer through the views it was
//! given. A member whose `data` or `grad` was rebound to another array would silently stop
//! training, and a view changed in place (its shape, strides, dtype or writeability) would no
//! longer describe its part. So every step compares each member's two slots with its views by
//! identity, and each view's header with the one read when it was made: a few loads per member.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::engine::memory::RawArray;

use super::ndarray::{header_matches, read_array, type_name};
use super::parameter::{exact_parameter, replace_slots, slot_addresses, Parameter};

/// One member: the parameter, its two views, and their headers as made.
struct Member {
    param: Py<Parameter>,
    data: Py<PyAny>,
    grad: Py<PyAny>,
    data_header: RawArray,
    grad_header: RawArray,
}

/// The members of a ``FlatParameter`` (exact ``adamax_rs.Parameter`` objects) and the views of
/// its buffers each is to hold: ``bind()`` gives them their views, ``check()`` verifies that
/// they still hold them, unchanged.
#[pyclass(module = "adamax_rs._core", name = "FlatMembers", frozen)]
pub struct FlatMembers {
    members: Vec<Member>,
}

fn read_view(view: &Bound<'_, PyAny>, index: usize, what: &str) -> PyResult<RawArray> {
    read_array(view).map_err(|_| {
        PyTypeError::new_err(format!(
            "FlatParameter member {index}: its {what} view must be a numpy.ndarray of a \
             supported dtype, got {}",
            type_name(view)
        ))
    })
}

#[pymethods]
impl FlatMembers {
    #[new]
    fn new(
        members: Vec<Bound<'_, PyAny>>,
        data_views: Vec<Bound<'_, PyAny>>,
        grad_views: Vec<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        super::errors::guarded(|| {
            let n = members.len();
            if data_views.len() != n || grad_views.len() != n {
                return Err(PyValueError::new_err(format!(
                    "{n} members but {} data views and {} gradient views",
                    data_views.len(),
                    grad_views.len()
                )));
            }
            let mut out = Vec::with_capacity(n);
            for (index, ((member, data), grad)) in
                members.iter().zip(&data_views).zip(&grad_views).enumerate()
            {
                let Some(param) = exact_parameter(member) else {
                    return Err(PyTypeError::new_err(format!(
                        "FlatParameter member {index} must be an adamax_rs.Parameter, got {}",
                        type_name(member)
                    )));
                };
                let data_header = read_view(data, index, "data")?;
                let grad_header = read_view(grad, index, "grad")?;
                if !data_header.writeable {
                    return Err(PyValueError::new_err(format!(
                        "FlatParameter member {index}: its data view is read-only"
                    )));
                }
                out.push(Member {
                    param: param.clone().unbind(),
                    data: data.clone().unbind(),
                    grad: grad.clone().unbind(),
                    data_header,
                    grad_header,
                });
            }
            Ok(FlatMembers { members: out })
        })
    }

    /// Sets every member's ``data`` and ``grad`` to its views, with no Python code in between
    /// (an interrupt lands before all of them or after).
    fn bind(&self, py: Python<'_>) -> PyResult<()> {
        super::errors::guarded(|| {
            // What the members held is dropped only at the end: dropping the last reference to
            // an object may run Python code (a finalizer).
            let mut replaced = Vec::with_capacity(2 * self.members.len());
            for m in &self.members {
                let (data, grad) = replace_slots(
                    m.param.bind(py),
                    m.data.clone_ref(py),
                    Some(m.grad.clone_ref(py)),
                );
                replaced.push(Some(data));
                replaced.push(grad);
            }
            drop(replaced);
            Ok(())
        })
    }

    /// Raises ``ValueError`` naming the first member whose ``data`` or ``grad`` is no longer
    /// its view, or whose view was changed in place.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        super::errors::guarded(|| {
            for (index, m) in self.members.iter().enumerate() {
                let Some((data_now, grad_now)) = slot_addresses(m.param.bind(py).as_any()) else {
                    return Err(PyTypeError::new_err(format!(
                        "FlatParameter member {index} is no longer an adamax_rs.Parameter"
                    )));
                };
                for (what, now, view, header) in [
                    ("data", data_now, &m.data, &m.data_header),
                    ("grad", grad_now, &m.grad, &m.grad_header),
                ] {
                    if now != view.as_ptr() as usize {
                        return Err(PyValueError::new_err(format!(
                            "FlatParameter member {index}: its {what} was rebound to another \
                             array, so the flat buffer no longer holds it; write into it in \
                             place instead (for example p.{what}[...] = values), or build a new \
                             FlatParameter"
                        )));
                    }
                    if !header_matches(view.bind(py), header) {
                        return Err(PyValueError::new_err(format!(
                            "FlatParameter member {index}: its {what} view was changed in place \
                             (its shape, strides, dtype or writeability), so it no longer \
                             describes its part of the flat buffer; build a new FlatParameter"
                        )));
                    }
                }
            }
            Ok(())
        })
    }

    /// The members, in buffer order.
    #[getter]
    fn members<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.members.iter().map(|m| m.param.clone_ref(py)))
    }

    fn __len__(&self) -> usize {
        self.members.len()
    }
}
