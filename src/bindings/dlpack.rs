//! The torch front end's view of a tensor: its memory described through DLPack.
//!
//! torch (2.10 and later) publishes DLPack's C exchange API on its tensor type
//! (`__dlpack_c_exchange_api__`): `dltensor_from_py_object_no_sync` fills a `DLTensor` for a
//! tensor without allocating, in a few nanoseconds. Older torch falls back to reading
//! `data_ptr()`, `size()`, `stride()` and `dtype` from Python, which is slower but gives the same
//! description. The layouts below follow DLPack's public header (`dlpack.h`, version 1).

use std::ffi::{c_int, c_void};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCapsule, PyType};

use crate::engine::memory::{Dims, Element, RawArray, Strides};

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

/// DLPack's `DLTensor`: a description that does not own the memory.
#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    /// In elements; null for a compact row-major tensor.
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLPackExchangeAPIHeader {
    version: DLPackVersion,
    prev_api: *mut DLPackExchangeAPIHeader,
}

type DLTensorFromPyObject =
    unsafe extern "C" fn(py_object: *mut c_void, out: *mut DLTensor) -> c_int;

/// DLPack's `DLPackExchangeAPI`; only the field used here is typed.
#[repr(C)]
struct DLPackExchangeAPI {
    header: DLPackExchangeAPIHeader,
    managed_tensor_allocator: *const c_void,
    managed_tensor_from_py_object_no_sync: *const c_void,
    managed_tensor_to_py_object_no_sync: *const c_void,
    dltensor_from_py_object_no_sync: Option<DLTensorFromPyObject>,
    current_work_stream: *const c_void,
}

const DL_CPU: i32 = 1;
const DL_UINT: u8 = 1;
const DL_FLOAT: u8 = 2;
const DL_BFLOAT: u8 = 4;
const DL_COMPLEX: u8 = 5;

/// Why a tensor cannot be used.
pub enum TensorProblem {
    /// Not a torch.Tensor: the name of its type.
    NotATensor(String),
    /// A tensor that is not on the CPU: its device.
    Device(String),
    /// An element type the optimizer does not update: its name.
    Dtype(String),
    /// Sparse, or a layout DLPack cannot describe: the error torch gave.
    Layout(PyErr),
    /// Elements but no memory (its data pointer is 0).
    NoMemory,
}

fn element_of(dtype: DLDataType) -> Option<Element> {
    if dtype.lanes != 1 {
        return None;
    }
    Some(match (dtype.code, dtype.bits) {
        (DL_FLOAT, 16) => Element::Float16,
        (DL_BFLOAT, 16) => Element::BFloat16,
        (DL_FLOAT, 32) => Element::Float32,
        (DL_FLOAT, 64) => Element::Float64,
        (DL_COMPLEX, 64) => Element::Complex64,
        (DL_COMPLEX, 128) => Element::Complex128,
        (DL_UINT, 8) => Element::UInt8,
        _ => return None,
    })
}

/// How tensors are read: through the exchange API when torch has one.
pub struct TensorReader {
    /// `torch.Tensor`, for type checks.
    tensor_type: Py<PyType>,
    /// The exchange function, if torch publishes it (the table lives as long as the process).
    from_object: Option<DLTensorFromPyObject>,
}

// SAFETY: the function pointer is a plain C function of torch's that lives for the whole process
// and is called only with the GIL held; `Py` is `Send` and `Sync`.
unsafe impl Send for TensorReader {}
unsafe impl Sync for TensorReader {}

/// The reader for the torch imported in this process.
pub fn reader(py: Python<'_>) -> PyResult<&'static TensorReader> {
    static READER: PyOnceLock<TensorReader> = PyOnceLock::new();
    READER.get_or_try_init(py, || {
        let torch = py.import("torch")?;
        let tensor_type = torch.getattr("Tensor")?.cast_into::<PyType>()?;
        let from_object = exchange_function(&tensor_type);
        Ok(TensorReader {
            tensor_type: tensor_type.unbind(),
            from_object,
        })
    })
}

fn exchange_function(tensor_type: &Bound<'_, PyType>) -> Option<DLTensorFromPyObject> {
    let capsule = tensor_type.getattr("__dlpack_c_exchange_api__").ok()?;
    let capsule = capsule.cast::<PyCapsule>().ok()?;
    let name = c"dlpack_exchange_api";
    // SAFETY: a capsule named "dlpack_exchange_api" holds a `DLPackExchangeAPI*` that lives for
    // the whole process (DLPack's contract for `__dlpack_c_exchange_api__`); it is read only after
    // checking that its major version is the one whose layout is declared above.
    unsafe {
        let pointer = pyo3::ffi::PyCapsule_GetPointer(capsule.as_ptr(), name.as_ptr());
        if pointer.is_null() {
            pyo3::ffi::PyErr_Clear();
            return None;
        }
        let api = &*(pointer as *const DLPackExchangeAPI);
        if api.header.version.major != 1 {
            return None;
        }
        api.dltensor_from_py_object_no_sync
    }
}

impl TensorReader {
    /// Whether `obj` is a torch.Tensor (or a subclass, such as nn.Parameter).
    ///
    /// Asked of the object's real type, not through `isinstance`: that also accepts an object
    /// whose `__class__` only claims to be a tensor, which torch's exchange function then reads
    /// as one (it crashed), and it costs more (a `__instancecheck__` lookup on torch's
    /// metaclass) for every tensor of every step.
    pub fn is_tensor(&self, obj: &Bound<'_, PyAny>) -> bool {
        // SAFETY: both are live type objects (a `Bound` keeps `obj`, and so its type, alive;
        // `tensor_type` is held by the reader), and the GIL is held; `PyType_IsSubtype` only
        // reads their MROs and raises nothing.
        unsafe {
            pyo3::ffi::PyType_IsSubtype(
                obj.get_type_ptr(),
                self.tensor_type.bind(obj.py()).as_type_ptr(),
            ) != 0
        }
    }

    /// `obj`'s memory, element type, shape and strides.
    pub fn describe(&self, obj: &Bound<'_, PyAny>) -> Result<RawArray, TensorProblem> {
        if !self.is_tensor(obj) {
            return Err(TensorProblem::NotATensor(super::ndarray::type_name(obj)));
        }
        let raw = match self.from_object {
            Some(function) => self.describe_exchanged(obj, function),
            None => describe_from_python(obj),
        }?;
        // A tensor with elements at address 0: a wrapper subclass (`_make_wrapper_subclass`)
        // whose values live in another tensor it holds. DLPack still describes it, and the kernel
        // would read and write near address 0.
        if raw.address == 0 && raw.shape.iter().all(|&n| n > 0) {
            return Err(TensorProblem::NoMemory);
        }
        Ok(raw)
    }

    fn describe_exchanged(
        &self,
        obj: &Bound<'_, PyAny>,
        function: DLTensorFromPyObject,
    ) -> Result<RawArray, TensorProblem> {
        let mut tensor = DLTensor {
            data: std::ptr::null_mut(),
            device: DLDevice {
                device_type: 0,
                device_id: 0,
            },
            ndim: 0,
            dtype: DLDataType {
                code: 0,
                bits: 0,
                lanes: 0,
            },
            shape: std::ptr::null_mut(),
            strides: std::ptr::null_mut(),
            byte_offset: 0,
        };
        // SAFETY: `obj` is a live torch.Tensor (checked above) and the function is torch's
        // exchange function for its tensor type; it fills `tensor` and does not keep it. The
        // shape and strides it points to belong to the tensor and are copied below before anything
        // else runs.
        let status = unsafe { function(obj.as_ptr().cast(), &mut tensor) };
        if status != 0 {
            let error = PyErr::take(obj.py())
                .unwrap_or_else(|| PyTypeError::new_err("DLPack export failed"));
            return Err(TensorProblem::Layout(error));
        }
        if tensor.device.device_type != DL_CPU {
            return Err(TensorProblem::Device(device_name(obj)));
        }
        let Some(element) = element_of(tensor.dtype) else {
            return Err(TensorProblem::Dtype(dtype_name(obj)));
        };
        let nd = usize::try_from(tensor.ndim).unwrap_or(0);
        // SAFETY: DLPack's contract: `shape` points to `ndim` sizes and `strides` (when not null)
        // to `ndim` strides, valid until control returns to the producer.
        let (shape, strides) = unsafe {
            let shape: Dims = if nd == 0 {
                Dims::new()
            } else {
                std::slice::from_raw_parts(tensor.shape, nd)
                    .iter()
                    .map(|&d| d.max(0) as usize)
                    .collect()
            };
            let strides: Strides = if nd == 0 {
                Strides::new()
            } else if tensor.strides.is_null() {
                row_major(&shape, element.size())
            } else {
                std::slice::from_raw_parts(tensor.strides, nd)
                    .iter()
                    .map(|&s| s as isize * element.size() as isize)
                    .collect()
            };
            (shape, strides)
        };
        Ok(RawArray {
            address: (tensor.data as usize).wrapping_add(tensor.byte_offset as usize),
            element,
            shape,
            strides,
            writeable: true,
        })
    }
}

fn row_major(shape: &[usize], size: usize) -> Strides {
    let mut strides: Strides = shape.iter().map(|_| 0isize).collect();
    let mut step = size as isize;
    for (stride, &n) in strides.iter_mut().zip(shape).rev() {
        *stride = step;
        step *= n.max(1) as isize;
    }
    strides
}

fn device_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("device")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "?".into())
}

fn dtype_name(obj: &Bound<'_, PyAny>) -> String {
    obj.getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "?".into())
}

/// The description read through Python (torch without the exchange API).
fn describe_from_python(obj: &Bound<'_, PyAny>) -> Result<RawArray, TensorProblem> {
    let layout = |e: PyErr| TensorProblem::Layout(e);
    if obj
        .getattr("is_sparse")
        .and_then(|s| s.is_truthy())
        .map_err(layout)?
    {
        return Err(TensorProblem::Layout(PyTypeError::new_err(
            "sparse tensors have no strided layout",
        )));
    }
    if obj
        .getattr("device")
        .and_then(|d| d.getattr("type"))
        .and_then(|t| t.extract::<String>())
        .map_err(layout)?
        != "cpu"
    {
        return Err(TensorProblem::Device(device_name(obj)));
    }
    let name = dtype_name(obj);
    let element = match name.as_str() {
        "torch.float16" => Element::Float16,
        "torch.bfloat16" => Element::BFloat16,
        "torch.float32" => Element::Float32,
        "torch.float64" => Element::Float64,
        "torch.complex64" => Element::Complex64,
        "torch.complex128" => Element::Complex128,
        "torch.uint8" => Element::UInt8,
        _ => return Err(TensorProblem::Dtype(name)),
    };
    let shape: Vec<usize> = obj
        .call_method0("size")
        .and_then(|s| s.extract())
        .map_err(layout)?;
    let strides: Vec<isize> = obj
        .call_method0("stride")
        .and_then(|s| s.extract())
        .map_err(layout)?;
    let address: usize = obj
        .call_method0("data_ptr")
        .and_then(|a| a.extract())
        .map_err(layout)?;
    Ok(RawArray {
        address,
        element,
        shape: shape.into_iter().collect(),
        strides: strides
            .into_iter()
            .map(|s| s * element.size() as isize)
            .collect(),
        writeable: true,
    })
}
