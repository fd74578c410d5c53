//! `adamax_rs.Parameter`: a trainable numpy array and its gradient, in Rust so that a step reads
//! `data` and `grad` of thousands of parameters without an attribute lookup each.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyTypeInfo;

use super::gil_cell::GilCell;
use super::ndarray::{numpy, type_name};

/// Returns `data` as a floating-point, bfloat16 or complex ndarray (an ndarray is kept as it is,
/// anything else goes through `numpy.asarray`); refuses other element kinds.
fn as_float_array<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let np = numpy(data.py())?;
    let array = if data.is_instance(&np.getattr("ndarray")?)? {
        data.clone()
    } else {
        np.call_method1("asarray", (data,))?
    };
    let dtype = array.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    let name: String = dtype.getattr("name")?.extract()?;
    if kind != "f" && kind != "c" && !(kind == "V" && name == "bfloat16") {
        return Err(PyTypeError::new_err(format!(
            "Parameter data must be a floating-point or complex array, got dtype {name}; convert \
             it explicitly (for example np.asarray(data, dtype=np.float32)) rather than have it \
             cast silently"
        )));
    }
    Ok(array)
}

/// A trainable array: the values in ``data`` and their gradient in ``grad``.
///
/// Parameters
/// ----------
/// data : array_like
///     The initial values. A floating-point ``numpy.ndarray`` is kept as it is, not copied, so
///     the optimizer updates the caller's array in place (float16, bfloat16, float32, float64,
///     complex64 and complex128 are optimised). Anything else is converted with
///     ``numpy.asarray``; integer, boolean and non-numeric data raise ``TypeError``.
/// name : str, optional
///     A label shown in ``repr`` and useful in logs.
///
/// Attributes
/// ----------
/// data : numpy.ndarray
///     The values, updated in place by ``Optimizer.step``. Assigning needs a floating-point or
///     complex ndarray.
/// grad : numpy.ndarray or None
///     The gradient of the loss with respect to ``data`` (same shape and dtype), or ``None`` when
///     this parameter has no gradient this step (the optimizer then skips it).
/// name : str or None
///     The label given at construction.
///
/// Notes
/// -----
/// Parameters compare and hash by identity, like ``torch.nn.Parameter``: the optimizer keys its
/// state by the parameter object.
///
/// Examples
/// --------
/// >>> import numpy as np
/// >>> w = Parameter(np.zeros((3, 2), dtype=np.float32), name="w")
/// >>> w.grad = np.ones_like(w.data)
#[pyclass(module = "adamax_rs", name = "Parameter", subclass, weakref, frozen)]
pub struct Parameter {
    slots: GilCell<Slots>,
}

struct Slots {
    data: Py<PyAny>,
    grad: Option<Py<PyAny>>,
    name: Option<Py<PyAny>>,
}

#[pymethods]
impl Parameter {
    #[new]
    #[pyo3(signature = (data, *, name = None))]
    fn new(data: &Bound<'_, PyAny>, name: Option<Bound<'_, PyAny>>) -> PyResult<Self> {
        super::errors::guarded(|| {
            Ok(Parameter {
                slots: GilCell::new(Slots {
                    data: as_float_array(data)?.unbind(),
                    grad: None,
                    name: name.map(Bound::unbind),
                }),
            })
        })
    }

    /// The values (a numpy.ndarray).
    #[getter]
    fn get_data(&self, py: Python<'_>) -> Py<PyAny> {
        self.slots.read(py, |s| s.data.clone_ref(py))
    }

    #[setter]
    fn set_data(&self, value: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(value) = value else {
            return Err(PyTypeError::new_err("a Parameter's data cannot be deleted"));
        };
        let np = numpy(value.py())?;
        if !value.is_instance(&np.getattr("ndarray")?)? {
            return Err(PyTypeError::new_err(format!(
                "Parameter.data must be a numpy.ndarray, got {}",
                type_name(value)
            )));
        }
        let new = as_float_array(value)?.unbind();
        let old = self
            .slots
            .update(value.py(), |s| std::mem::replace(&mut s.data, new));
        drop(old);
        Ok(())
    }

    /// The gradient (a numpy.ndarray, or None).
    #[getter]
    fn get_grad(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slots
            .read(py, |s| s.grad.as_ref().map(|g| g.clone_ref(py)))
    }

    #[setter]
    fn set_grad(&self, py: Python<'_>, value: Option<&Bound<'_, PyAny>>) {
        let new = value.filter(|v| !v.is_none()).map(|v| v.clone().unbind());
        let old = self
            .slots
            .update(py, |s| std::mem::replace(&mut s.grad, new));
        drop(old);
    }

    /// The label given at construction.
    #[getter]
    fn get_name(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slots
            .read(py, |s| s.name.as_ref().map(|n| n.clone_ref(py)))
    }

    #[setter]
    fn set_name(&self, py: Python<'_>, value: Option<Bound<'_, PyAny>>) {
        let new = value.filter(|v| !v.is_none()).map(Bound::unbind);
        let old = self
            .slots
            .update(py, |s| std::mem::replace(&mut s.name, new));
        drop(old);
    }

    /// The shape of ``data``.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.get_data(py).into_bound(py).getattr("shape")
    }

    /// The dtype of ``data``.
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.get_data(py).into_bound(py).getattr("dtype")
    }

    /// The number of elements of ``data``.
    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<usize> {
        self.get_data(py).into_bound(py).getattr("size")?.extract()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let data = self.get_data(py).into_bound(py);
        let label = match self.get_name(py) {
            Some(n) => format!("name={}, ", n.bind(py).repr()?),
            None => String::new(),
        };
        let grad = if self.get_grad(py).is_some() {
            "set"
        } else {
            "None"
        };
        Ok(format!(
            "Parameter({label}shape={}, dtype={}, grad={grad})",
            data.getattr("shape")?.repr()?,
            data.getattr("dtype")?
        ))
    }

    /// Pickling and copying: the data, the gradient and the name.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this = slf.get();
        let args = PyTuple::new(py, [this.get_data(py)])?;
        let state = PyDict::new(py);
        state.set_item("grad", this.get_grad(py))?;
        state.set_item("name", this.get_name(py))?;
        if let Ok(extra) = slf.getattr("__dict__") {
            state.set_item("__dict__", extra)?;
        }
        PyTuple::new(
            py,
            [slf.get_type().into_any(), args.into_any(), state.into_any()],
        )
    }

    fn __setstate__(slf: &Bound<'_, Self>, state: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = slf.py();
        if let Some(grad) = state.get_item("grad")? {
            slf.get().set_grad(py, Some(&grad));
        }
        if let Some(name) = state.get_item("name")? {
            slf.get().set_name(py, Some(name));
        }
        if let Some(extra) = state.get_item("__dict__")? {
            if let Ok(own) = slf.getattr("__dict__") {
                own.call_method1("update", (extra,))?;
            }
        }
        Ok(())
    }
}

/// A parameter's current `data` and `grad`: straight from the fields for an exact
/// `adamax_rs.Parameter`, through attribute lookups for anything else (subclasses may override
/// them, and other libraries' parameters work too).
pub fn data_and_grad<'py>(
    param: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let py = param.py();
    if let Some(this) = exact(param) {
        return Ok(this.slots.read(py, |s| {
            (
                s.data.bind(py).clone(),
                s.grad.as_ref().map(|g| g.bind(py).clone()),
            )
        }));
    }
    let data = param.getattr(pyo3::intern!(py, "data"))?;
    let grad = param.getattr(pyo3::intern!(py, "grad"))?;
    Ok((data, (!grad.is_none()).then_some(grad)))
}

/// `param` as a `Parameter`, when it is an exact `adamax_rs.Parameter` (not a subclass, which may
/// override `data` or `grad`).
pub fn exact_parameter<'a, 'py>(param: &'a Bound<'py, PyAny>) -> Option<&'a Bound<'py, Parameter>> {
    if !param.get_type().is(Parameter::type_object(param.py())) {
        return None;
    }
    param.cast::<Parameter>().ok()
}

/// Replaces a parameter's `data` and `grad`, running no Python code, and returns what they held
/// (for the caller to drop when nothing else is half done).
pub fn replace_slots(
    param: &Bound<'_, Parameter>,
    data: Py<PyAny>,
    grad: Option<Py<PyAny>>,
) -> (Py<PyAny>, Option<Py<PyAny>>) {
    param.get().slots.update(param.py(), |s| {
        (
            std::mem::replace(&mut s.data, data),
            std::mem::replace(&mut s.grad, grad),
        )
    })
}

/// `param` as the Rust struct, when it is an exact `adamax_rs.Parameter` (not a subclass, which
/// may override `data` or `grad`).
fn exact<'a>(param: &'a Bound<'_, PyAny>) -> Option<&'a Parameter> {
    exact_parameter(param).map(Bound::get)
}

/// For an exact `adamax_rs.Parameter`: whether its `data` is the object at `data` (compared by
/// address, which is only meaningful while the caller holds that object), and its `grad`.
pub fn fast_fields<'py>(
    param: &Bound<'py, PyAny>,
    data: usize,
) -> Option<(bool, Option<Bound<'py, PyAny>>)> {
    let py = param.py();
    exact(param).map(|this| {
        this.slots.read(py, |s| {
            (
                s.data.as_ptr() as usize == data,
                s.grad.as_ref().map(|g| g.bind(py).clone()),
            )
        })
    })
}

/// For an exact `adamax_rs.Parameter`: the addresses of the objects in its `data` and `grad`
/// slots (0 for no gradient), to compare by identity with objects the caller holds.
pub fn slot_addresses(param: &Bound<'_, PyAny>) -> Option<(usize, usize)> {
    let py = param.py();
    Some(exact(param)?.slots.read(py, |s| {
        (
            s.data.as_ptr() as usize,
            s.grad.as_ref().map_or(0, |g| g.as_ptr() as usize),
        )
    }))
}
