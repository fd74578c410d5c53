//! Which state an optimizer keeps: shared by the numpy and torch front ends.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::engine::memory::Element;

use super::arrays::StateRule;

/// Which state an optimizer keeps for a parameter: its element type and whether a master copy.
#[derive(Clone, Copy, Debug)]
pub struct StatePolicy {
    /// `None`: float32 for 16-bit parameters, the parameter's own precision otherwise.
    pub dtype: Option<Element>,
    /// Keep a master copy of 16-bit parameters in the state dtype.
    pub master_weights: bool,
}

impl StateRule for StatePolicy {
    fn state_element(&self, param: Element) -> Element {
        let complex = param.real_part().is_some();
        let real = match (self.dtype, param) {
            (Some(d), _) => d,
            (None, Element::Float16 | Element::BFloat16) => Element::Float32,
            (None, p) => p.real_part().unwrap_or(p),
        };
        match (complex, real) {
            (true, Element::Float64) => Element::Complex128,
            (true, _) => Element::Complex64,
            (false, r) => r,
        }
    }
}

impl StatePolicy {
    /// Whether a parameter stored as `param` has a master copy.
    pub fn wants_master(&self, param: Element) -> bool {
        self.master_weights && matches!(param, Element::Float16 | Element::BFloat16)
    }
}

/// The state dtype an optimizer was asked for: `None`, "float32" or "float64".
pub fn state_dtype(value: Option<&str>) -> PyResult<Option<Element>> {
    match value {
        None => Ok(None),
        Some("float32") => Ok(Some(Element::Float32)),
        Some("float64") => Ok(Some(Element::Float64)),
        Some(other) => Err(PyValueError::new_err(format!(
            "state_dtype must be None, 'float32' or 'float64', got {other:?}"
        ))),
    }
}
