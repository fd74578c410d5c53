//! The numpy front end's view of an array: its header read into an engine [`RawArray`].
//!
//! The fields are read straight from numpy's `PyArrayObject` (a few nanoseconds); rust-numpy's
//! typed views and borrow table are not used, because the engine does its own checks and
//! claims, and because their checks cost more than the update of a small tensor.

use std::sync::atomic::{AtomicI32, Ordering};

use numpy::npyffi::{PyArrayObject, PyArray_Descr, NPY_ARRAY_WRITEABLE, NPY_TYPES, PY_ARRAY_API};
use numpy::{PyArrayDescr, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

use crate::engine::memory::{Dims, Element, RawArray, Strides};

/// Why an object cannot be used as an array here.
pub enum ArrayProblem {
    /// Not a `numpy.ndarray`: the name of its type.
    NotAnArray(String),
    /// An array of an element type the optimizer does not update: the dtype's name.
    Dtype(String),
}

/// The type number numpy gave ml_dtypes' bfloat16 when it was registered (user-defined type
/// numbers are never reused within a process), or -1 while not yet seen.
static BFLOAT16_TYPE_NUM: AtomicI32 = AtomicI32::new(-1);

/// The element type of `dtype`; `None` if the optimizer does not handle it.
pub fn element_of(dtype: &Bound<'_, PyArrayDescr>) -> Option<Element> {
    if dtype.is_native_byteorder() == Some(false) {
        return None;
    }
    let num = dtype.num();
    let element = if num == NPY_TYPES::NPY_FLOAT as i32 {
        Element::Float32
    } else if num == NPY_TYPES::NPY_DOUBLE as i32 {
        Element::Float64
    } else if num == NPY_TYPES::NPY_HALF as i32 {
        Element::Float16
    } else if num == NPY_TYPES::NPY_CFLOAT as i32 {
        Element::Complex64
    } else if num == NPY_TYPES::NPY_CDOUBLE as i32 {
        Element::Complex128
    } else if num == NPY_TYPES::NPY_UBYTE as i32 {
        Element::UInt8
    } else if num >= NPY_TYPES::NPY_USERDEF as i32 && is_bfloat16(dtype, num) {
        Element::BFloat16
    } else {
        return None;
    };
    (dtype.itemsize() == element.size()).then_some(element)
}

/// Whether the user-defined type `num` of `dtype` is a bfloat16 (ml_dtypes' is the one in use):
/// its scalar type is named `bfloat16`.
///
/// This runs no Python code: it is called between reads of a step's array headers, and code run
/// there (a profiler hook, or another thread given the GIL) could move memory already read. The
/// dtype's own name (`dtype.str`) is computed in Python, so the scalar type's `__name__` is read
/// instead, and only from a type whose metatype is exactly `type`, where that attribute is C
/// code (a metaclass could make it a Python property).
fn is_bfloat16(dtype: &Bound<'_, PyArrayDescr>, num: i32) -> bool {
    let known = BFLOAT16_TYPE_NUM.load(Ordering::Relaxed);
    if known >= 0 {
        return num == known;
    }
    // SAFETY: the GIL is held (`dtype` is bound to it); `as_dtype_ptr` is the live descriptor,
    // whose `typeobj` (the first field after the object header in numpy 1 and 2 alike) numpy
    // sets for every dtype and keeps alive with it. `PyType_Type` is the interpreter's static
    // `type`. The attribute read returns a new reference (released below) or null with an
    // exception set, which is cleared: no exception was pending, since this runs only while
    // headers are read, between calls that return `Result`s.
    let found = unsafe {
        let scalar = (*dtype.as_dtype_ptr()).typeobj.cast::<ffi::PyObject>();
        if scalar.is_null() || ffi::Py_TYPE(scalar) != std::ptr::addr_of_mut!(ffi::PyType_Type) {
            return false;
        }
        let name = ffi::PyObject_GetAttrString(scalar, c"__name__".as_ptr());
        if name.is_null() {
            ffi::PyErr_Clear();
            return false;
        }
        let named = ffi::PyUnicode_Check(name) != 0
            && ffi::PyUnicode_CompareWithASCIIString(name, c"bfloat16".as_ptr()) == 0;
        ffi::Py_DECREF(name);
        named
    };
    if found {
        BFLOAT16_TYPE_NUM.store(num, Ordering::Relaxed);
    }
    found
}

/// The name of `obj`'s type, for messages.
pub fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `obj`'s type name, and where a torch tensor goes instead of a numpy array (the numpy front
/// ends' messages end with it, as `dtypes.torch_hint` does in Python).
fn type_name_with_torch_hint(obj: &Bound<'_, PyAny>) -> String {
    let name = type_name(obj);
    let from_torch = obj
        .get_type()
        .module()
        .is_ok_and(|m| m.to_string().split('.').next() == Some("torch"));
    if from_torch {
        format!("{name}; for torch tensors use adamax_rs.torch.Adamax")
    } else {
        name
    }
}

/// The builtin dtypes' descriptors (numpy's singletons, kept alive here), so that an array's
/// element type is usually found by comparing one pointer.
fn builtin_descrs(py: Python<'_>) -> &'static [(usize, Element)] {
    static BUILTIN: PyOnceLock<Vec<(usize, Element)>> = PyOnceLock::new();
    BUILTIN.get_or_init(py, || {
        [
            (NPY_TYPES::NPY_HALF, Element::Float16),
            (NPY_TYPES::NPY_FLOAT, Element::Float32),
            (NPY_TYPES::NPY_DOUBLE, Element::Float64),
            (NPY_TYPES::NPY_CFLOAT, Element::Complex64),
            (NPY_TYPES::NPY_CDOUBLE, Element::Complex128),
            (NPY_TYPES::NPY_UBYTE, Element::UInt8),
        ]
        .into_iter()
        .filter_map(|(num, element)| {
            // SAFETY: PyArray_DescrFromType returns a new reference to numpy's descriptor for a
            // builtin type number; the reference is leaked on purpose, so the address compared
            // with below always belongs to that descriptor.
            let descr =
                unsafe { PY_ARRAY_API.PyArray_DescrFromType(py, num as std::os::raw::c_int) };
            (!descr.is_null()).then_some((descr as usize, element))
        })
        .collect()
    })
}

/// The element type of the descriptor `descr` of a live array.
fn descr_element(py: Python<'_>, descr: *mut PyArray_Descr) -> Result<Element, ArrayProblem> {
    let address = descr as usize;
    if let Some(&(_, element)) = builtin_descrs(py).iter().find(|(d, _)| *d == address) {
        return Ok(element);
    }
    // SAFETY: `descr` is the descriptor of an array the caller holds: a live object, borrowed
    // here only for the duration of this call.
    let dtype = unsafe { Bound::from_borrowed_ptr(py, descr.cast()) };
    let dtype = dtype
        .cast_into::<PyArrayDescr>()
        .map_err(|_| ArrayProblem::Dtype("?".into()))?;
    element_of(&dtype).ok_or_else(|| {
        ArrayProblem::Dtype(
            dtype
                .str()
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "?".into()),
        )
    })
}

/// `obj`'s numpy header, if it is an ndarray.
fn header(obj: &Bound<'_, PyAny>) -> Option<*mut PyArrayObject> {
    obj.cast::<PyUntypedArray>().ok().map(|a| a.as_array_ptr())
}

/// `obj`'s header as a [`RawArray`].
pub fn read_array(obj: &Bound<'_, PyAny>) -> Result<RawArray, ArrayProblem> {
    let Some(ptr) = header(obj) else {
        return Err(ArrayProblem::NotAnArray(type_name_with_torch_hint(obj)));
    };
    // SAFETY: `ptr` is the PyArrayObject that `obj` (a live, type-checked ndarray) is; reading its
    // fields is what numpy's own PyArray_DATA/NDIM/DIMS/STRIDES/DESCR/FLAGS macros do, and
    // `dimensions` and `strides` each point to `nd` values owned by the array.
    unsafe {
        let element = descr_element(obj.py(), (*ptr).descr)?;
        let nd = usize::try_from((*ptr).nd).unwrap_or(0);
        let (shape, strides) = if nd == 0 {
            (Dims::new(), Strides::new())
        } else {
            (
                std::slice::from_raw_parts((*ptr).dimensions, nd)
                    .iter()
                    .map(|&d| d.max(0) as usize)
                    .collect(),
                Strides::from_slice(std::slice::from_raw_parts((*ptr).strides, nd)),
            )
        };
        Ok(RawArray {
            address: (*ptr).data as usize,
            element,
            shape,
            strides,
            writeable: (*ptr).flags & NPY_ARRAY_WRITEABLE != 0,
        })
    }
}

/// Whether `obj` is an ndarray whose header is exactly `raw` (the same memory, element type,
/// shape, strides and writeability): a few loads, no allocation.
pub fn header_matches(obj: &Bound<'_, PyAny>, raw: &RawArray) -> bool {
    let Some(ptr) = header(obj) else {
        return false;
    };
    // SAFETY: as in `read_array`.
    unsafe {
        let nd = usize::try_from((*ptr).nd).unwrap_or(usize::MAX);
        if (*ptr).data as usize != raw.address
            || nd != raw.shape.len()
            || ((*ptr).flags & NPY_ARRAY_WRITEABLE != 0) != raw.writeable
        {
            return false;
        }
        if nd > 0 {
            let dims = std::slice::from_raw_parts((*ptr).dimensions, nd);
            let strides = std::slice::from_raw_parts((*ptr).strides, nd);
            // Element by element: a slice comparison calls memcmp, which for the one or two axes
            // of most arrays costs more than the comparison (this runs for every array of every
            // tensor of a step).
            let same_layout = dims
                .iter()
                .zip(strides)
                .zip(raw.shape.iter().zip(raw.strides.iter()))
                .all(|((&d, &s), (&n, &t))| d >= 0 && d as usize == n && s == t);
            if !same_layout {
                return false;
            }
        }
        matches!(descr_element(obj.py(), (*ptr).descr), Ok(e) if e == raw.element)
    }
}

/// When `obj` is an ndarray laid out exactly like `like` (element type, shape, strides), its
/// address: then nothing else about it needs reading. `None` otherwise (read it in full).
pub fn address_if_like(obj: &Bound<'_, PyAny>, like: &RawArray) -> Option<usize> {
    let ptr = header(obj)?;
    // SAFETY: as in `read_array`.
    unsafe {
        let nd = usize::try_from((*ptr).nd).ok()?;
        if nd != like.shape.len() {
            return None;
        }
        if nd > 0 {
            let dims = std::slice::from_raw_parts((*ptr).dimensions, nd);
            let strides = std::slice::from_raw_parts((*ptr).strides, nd);
            if !dims
                .iter()
                .zip(&like.shape)
                .all(|(&d, &n)| d >= 0 && d as usize == n)
                || strides != &like.strides[..]
            {
                return None;
            }
        }
        let element = descr_element(obj.py(), (*ptr).descr).ok()?;
        (element == like.element).then_some((*ptr).data as usize)
    }
}

/// The `numpy` module.
pub fn numpy(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    NUMPY
        .get_or_try_init(py, || py.import("numpy").map(Bound::unbind))
        .map(|m| m.bind(py))
}
