//! torch's `__torch_function__` turned off while the torch step reads its tensors' memory.
//!
//! Every torch method honours `__torch_function__` overrides and torch function modes, which run
//! Python code. The step reads each tensor's address, then asks it for its lazy bits
//! (`TensorBase.is_neg`), and Python code run by that question could free or move the memory of a
//! tensor already read (`t.set_()`, `t.resize_()`), which the kernel would then write. With torch
//! function off (`torch._C.DisableTorchFunction`, a C context manager), the question runs torch's
//! C function only, and it is answered by the tensor itself, not by Python code on its behalf.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// While alive, torch function is off on this thread; dropping it restores what was before.
pub struct TorchFunctionOff<'py> {
    context: Bound<'py, PyAny>,
}

impl<'py> TorchFunctionOff<'py> {
    /// Turns torch function off on this thread.
    pub fn enter(py: Python<'py>) -> PyResult<Self> {
        static DISABLE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        let disable = DISABLE.get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("torch._C")?
                    .getattr("DisableTorchFunction")?
                    .cast_into::<PyType>()?
                    .unbind(),
            )
        })?;
        let context = disable.bind(py).call0()?;
        context.call_method0(pyo3::intern!(py, "__enter__"))?;
        Ok(TorchFunctionOff { context })
    }
}

impl Drop for TorchFunctionOff<'_> {
    fn drop(&mut self) {
        let py = self.context.py();
        let none = py.None();
        // torch's `__exit__` only restores a thread-local flag; should it ever fail, the error is
        // reported as unraisable rather than lost or mistaken for the step's own.
        if let Err(error) = self
            .context
            .call_method1(pyo3::intern!(py, "__exit__"), (&none, &none, &none))
        {
            error.write_unraisable(py, Some(&self.context));
        }
    }
}
