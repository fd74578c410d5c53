//! torch's lazy bits: whether a tensor is a lazily negated or conjugated view of its memory.
//!
//! A tensor with torch's negative bit (`x._neg_view()`) or conjugate bit (`z.conj()` of a complex
//! tensor, and the gradients autograd computes through one) has memory that holds the values
//! before the negation or conjugation, so it cannot be read, nor written, as it is. The bits can
//! change without the tensor's identity or memory changing (`t.data = t.data.conj()`), so the
//! torch front end reads them for every tensor of every step.
//!
//! They are read by calling the C functions behind `torch.Tensor.is_neg` and `is_conj` directly,
//! found once in the method table of torch's tensor base type. That skips the attribute lookup
//! and the generic call path of `obj.is_neg()`, which cost about a quarter of each check (the
//! rest is torch's own function, which releases and retakes the GIL). Where the table cannot be
//! read (Python 3.9 cannot read a static type's slots) the base type's methods are called through
//! Python. Either way it is the base type's method, so a subclass that overrides `is_neg` or
//! `is_conj` cannot hide a bit from the step. The torch step asks with torch function off (see
//! `torch_function`), so neither can a `__torch_function__` override nor a torch function mode.

use std::ffi::CStr;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::engine::memory::Element;

/// A lazy bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyBit {
    Negative,
    Conjugate,
}

impl LazyBit {
    /// Its name in messages: "negative" or "conjugate".
    pub fn name(self) -> &'static str {
        match self {
            LazyBit::Negative => "negative",
            LazyBit::Conjugate => "conjugate",
        }
    }

    /// What the view's memory holds the values before: "negation" or "conjugation".
    pub fn operation(self) -> &'static str {
        match self {
            LazyBit::Negative => "negation",
            LazyBit::Conjugate => "conjugation",
        }
    }

    fn method_name(self) -> &'static CStr {
        match self {
            LazyBit::Negative => c"is_neg",
            LazyBit::Conjugate => c"is_conj",
        }
    }
}

/// How the bits are read.
enum BitReaders {
    /// torch's C functions for `is_neg` and `is_conj`, from its tensor base type's method table;
    /// `base` is that type (`torch._C.TensorBase`), for the subtype check that makes a direct
    /// call sound.
    Direct {
        is_neg: ffi::PyCFunction,
        is_conj: ffi::PyCFunction,
        base: Py<PyType>,
    },
    /// The same methods called through Python: `TensorBase.is_neg(obj)`, the base type's own
    /// method either way, so that a subclass cannot override what the step is told.
    Methods {
        is_neg: Py<PyAny>,
        is_conj: Py<PyAny>,
    },
}

fn readers(py: Python<'_>) -> PyResult<&'static BitReaders> {
    static READERS: PyOnceLock<BitReaders> = PyOnceLock::new();
    READERS.get_or_try_init(py, || {
        // `torch.Tensor`'s base: `torch._C.TensorBase` (torch >= 2.2), `_TensorBase` before.
        let base = py
            .import("torch")?
            .getattr("Tensor")?
            .getattr("__base__")?
            .cast_into::<PyType>()?;
        Ok(match direct_functions(&base) {
            Some((is_neg, is_conj)) => BitReaders::Direct {
                is_neg,
                is_conj,
                base: base.unbind(),
            },
            None => BitReaders::Methods {
                is_neg: base.getattr("is_neg")?.unbind(),
                is_conj: base.getattr("is_conj")?.unbind(),
            },
        })
    })
}

/// The C functions of `base.is_neg` and `base.is_conj`, if its method table can be read and has
/// both as `METH_NOARGS` methods.
fn direct_functions(base: &Bound<'_, PyType>) -> Option<(ffi::PyCFunction, ffi::PyCFunction)> {
    // SAFETY: `base` is a live type object and the GIL is held. `PyType_GetSlot` returns the
    // type's `tp_methods`: a static array of `PyMethodDef` ended by an entry with a null name,
    // which lives as long as the type (torch never unloads). On Python 3.9 it refuses a static
    // type and sets an error, cleared here. Each entry is only read.
    unsafe {
        let table = ffi::PyType_GetSlot(base.as_type_ptr(), ffi::Py_tp_methods);
        if table.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let mut entry = table as *const ffi::PyMethodDef;
        let (mut is_neg, mut is_conj) = (None, None);
        while !(*entry).ml_name.is_null() {
            let name = CStr::from_ptr((*entry).ml_name);
            let slot = if name == LazyBit::Negative.method_name() {
                Some(&mut is_neg)
            } else if name == LazyBit::Conjugate.method_name() {
                Some(&mut is_conj)
            } else {
                None
            };
            // The first entry of a name is the method (as `PyType_Ready` keeps it). Only a plain
            // instance method that takes no arguments can be called as `f(self, NULL)`; any
            // other form (a class or static method, keywords) leaves the name unset, and the
            // methods are then called through Python.
            if let Some(slot) = slot {
                if slot.is_none() {
                    *slot = Some(
                        ((*entry).ml_flags == ffi::METH_NOARGS)
                            .then(|| (*entry).ml_meth.PyCFunction),
                    );
                }
            }
            entry = entry.add(1);
        }
        let (Some(Some(is_neg)), Some(Some(is_conj))) = (is_neg, is_conj) else {
            return None;
        };
        Some((is_neg, is_conj))
    }
}

/// Asks `obj` whether it has `bit`, as `torch._C.TensorBase.is_neg(obj)` (or `is_conj`) would
/// answer.
fn has_bit(obj: &Bound<'_, PyAny>, bit: LazyBit) -> PyResult<bool> {
    let py = obj.py();
    let answer = match readers(py)? {
        BitReaders::Direct {
            is_neg,
            is_conj,
            base,
        } => {
            let function = match bit {
                LazyBit::Negative => *is_neg,
                LazyBit::Conjugate => *is_conj,
            };
            // SAFETY: both are live type objects and the GIL is held; this only reads MROs.
            let instance =
                unsafe { ffi::PyType_IsSubtype(obj.get_type_ptr(), base.as_ptr().cast()) } != 0;
            if !instance {
                return Err(PyTypeError::new_err(format!(
                    "expected a torch.Tensor, got {}",
                    super::ndarray::type_name(obj)
                )));
            }
            // SAFETY: `function` is a `METH_NOARGS` method of `torch._C.TensorBase` (checked when
            // it was found) and `obj` an instance of it, so `function(obj, NULL)` is the call
            // that `TensorBase.is_neg(obj)` makes. The GIL is held; it returns a new reference,
            // or null with an error set, which `from_owned_ptr_or_err` takes.
            unsafe {
                Bound::from_owned_ptr_or_err(py, function(obj.as_ptr(), std::ptr::null_mut()))
            }?
        }
        BitReaders::Methods { is_neg, is_conj } => match bit {
            LazyBit::Negative => is_neg.bind(py).call1((obj,))?,
            LazyBit::Conjugate => is_conj.bind(py).call1((obj,))?,
        },
    };
    answer.is_truthy()
}

/// Which lazy bit `obj` (a torch.Tensor) has set, if any. `element` is the tensor's: only complex
/// tensors have a conjugate bit, so a real tensor is asked only about the negative bit.
pub fn lazy_bit(obj: &Bound<'_, PyAny>, element: Element) -> PyResult<Option<LazyBit>> {
    if has_bit(obj, LazyBit::Negative)? {
        return Ok(Some(LazyBit::Negative));
    }
    if element.real_part().is_some() && has_bit(obj, LazyBit::Conjugate)? {
        return Ok(Some(LazyBit::Conjugate));
    }
    Ok(None)
}
