//! Reads the tensors of one parameter's entry of a torch optimizer's `state` (a plain dict, not
//! the numpy optimizer's `state::StateEntry`): `{"step", "exp_avg", "exp_inf"}`, and for 8-bit
//! state `"exp_avg_scale"` and `"exp_inf_scale"`.
//!
//! Five lookups (three found, two not) cost about a twentieth of the torch step's bookkeeping for
//! small tensors. An entry made by the optimizer has exactly these keys, and its keys are the
//! interned names written in its source, so one walk over the entry (`PyDict_Next`, comparing
//! keys by address) finds them all. Any other entry (one with keys unpickled by `torch.load`, or
//! with keys of the user's own) is read by lookups, as before. Both read the dict's own contents,
//! never a subclass's `__getitem__`, and run no Python code.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

/// The tensors (or whatever objects the entry holds) under the state's keys.
pub struct TorchStateTensors<'py> {
    pub exp_avg: Option<Bound<'py, PyAny>>,
    pub exp_inf: Option<Bound<'py, PyAny>>,
    pub step: Option<Bound<'py, PyAny>>,
    pub exp_avg_scale: Option<Bound<'py, PyAny>>,
    pub exp_inf_scale: Option<Bound<'py, PyAny>>,
}

impl<'py> TorchStateTensors<'py> {
    /// Reads `entry`, a dict (or any mapping, read by `entry[key]`).
    pub fn read(entry: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = entry.py();
        let names = [
            pyo3::intern!(py, "exp_avg"),
            pyo3::intern!(py, "exp_inf"),
            pyo3::intern!(py, "step"),
            pyo3::intern!(py, "exp_avg_scale"),
            pyo3::intern!(py, "exp_inf_scale"),
        ];
        let values = match entry.cast::<PyDict>() {
            Ok(dict) => match walk(dict, &names) {
                Some(values) => values,
                None => {
                    let mut values: [Option<Bound<'py, PyAny>>; 5] = Default::default();
                    for (value, name) in values.iter_mut().zip(names) {
                        *value = dict.get_item(name)?;
                    }
                    values
                }
            },
            Err(_) => names.map(|name| entry.get_item(name).ok()),
        };
        let [exp_avg, exp_inf, step, exp_avg_scale, exp_inf_scale] = values;
        Ok(TorchStateTensors {
            exp_avg,
            exp_inf,
            step,
            exp_avg_scale,
            exp_inf_scale,
        })
    }
}

/// The values of `dict` under `names`, found in one walk when every key of `dict` is one of
/// `names` itself (the same object); `None` (read nothing) when some key is not.
///
/// The same answer as looking each name up: an interned name and a key that is the same object
/// are equal, and a dict holds a key at most once. When every key is one of the names, a name
/// not met in the walk is not in the dict.
fn walk<'py>(
    dict: &Bound<'py, PyDict>,
    names: &[&Bound<'py, PyString>; 5],
) -> Option<[Option<Bound<'py, PyAny>>; 5]> {
    let py = dict.py();
    let mut found: [*mut ffi::PyObject; 5] = [std::ptr::null_mut(); 5];
    let mut position: ffi::Py_ssize_t = 0;
    let mut key = std::ptr::null_mut();
    let mut value = std::ptr::null_mut();
    // SAFETY: the GIL is held (an abi3 build is never free-threaded) and `dict` is a live dict.
    // `PyDict_Next` runs no Python code and lends the entry's key and value; nothing runs between
    // the calls but address comparisons, so the dict cannot change during the walk, and every
    // lent value is still in the dict (and so alive) when it is taken as a new reference below,
    // still before any Python code can run.
    unsafe {
        while ffi::PyDict_Next(dict.as_ptr(), &mut position, &mut key, &mut value) != 0 {
            let slot = names.iter().position(|name| name.as_ptr() == key)?;
            found[slot] = value;
        }
        Some(found.map(|value| (!value.is_null()).then(|| Bound::from_borrowed_ptr(py, value))))
    }
}
