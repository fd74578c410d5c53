//! Checking the arrays of a step and turning them into kernel jobs.
//!
//! `check_step` validates every array of every group (types, dtypes, shapes, flags) and
//! collects the memory each one touches; nothing is borrowed yet. Once the caller has
//! registered those claims, `Checked::plan` takes the slices and views the jobs run on.

use numpy::npyffi::{NPY_ARRAY_WRITEABLE, NPY_TYPES};
use numpy::{
    PyArrayDescr, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use half::{bf16, f16};

use super::args::{check_group, GroupArgs, Place, ROLES};
use crate::claims::{Claims, Conflict, Extent};
use crate::kernel::{Coefficients, TensorSlices};
use crate::schedule::{for_each_precision, Job, Precision, StridedJob};
use crate::strided::TensorViews;

/// The element types arrays may hold.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Float16,
    BFloat16,
    Float32,
    Float64,
}

/// An element type with its numpy dtype.
pub(super) trait NumpyFloat: numpy::Element {
    const KIND: Kind;
}

impl NumpyFloat for f16 {
    const KIND: Kind = Kind::Float16;
}
impl NumpyFloat for bf16 {
    const KIND: Kind = Kind::BFloat16;
}
impl NumpyFloat for f32 {
    const KIND: Kind = Kind::Float32;
}
impl NumpyFloat for f64 {
    const KIND: Kind = Kind::Float64;
}

/// The kind of a native-byte-order float dtype; `None` for anything else.
fn kind_of(dtype: &Bound<'_, PyArrayDescr>) -> Option<Kind> {
    if dtype.is_native_byteorder() == Some(false) || dtype.itemsize() > 8 {
        return None;
    }
    let num = dtype.num();
    if num == NPY_TYPES::NPY_FLOAT as i32 {
        Some(Kind::Float32)
    } else if num == NPY_TYPES::NPY_DOUBLE as i32 {
        Some(Kind::Float64)
    } else if num == NPY_TYPES::NPY_HALF as i32 {
        Some(Kind::Float16)
    } else if num >= NPY_TYPES::NPY_USERDEF as i32 && dtype.str().is_ok_and(|s| s == "bfloat16") {
        // ml_dtypes' bfloat16 (a user-defined dtype). Asking rust-numpy for it is only safe
        // once the dtype is registered, which its presence here proves.
        Some(Kind::BFloat16)
    } else {
        None
    }
}

pub(super) fn dtype_name(array: &Bound<'_, PyUntypedArray>) -> String {
    array
        .dtype()
        .str()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn as_ndarray<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    place: Place,
    what: &str,
) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().map_err(|_| {
        place.type_error(format_args!(
            "{what} must be a numpy.ndarray, got {}",
            type_name(obj)
        ))
    })
}

fn is_writeable(array: &Bound<'_, PyUntypedArray>) -> bool {
    // SAFETY: `as_array_ptr` points to the live PyArrayObject that `array` holds a reference
    // to; reading its `flags` field is what numpy's own PyArray_FLAGS macro does.
    unsafe { (*array.as_array_ptr()).flags & NPY_ARRAY_WRITEABLE != 0 }
}

fn extent<T: numpy::Element>(array: &Bound<'_, PyArrayDyn<T>>) -> Option<Extent> {
    Extent::of_array(
        array.data() as usize,
        array.shape(),
        array.strides(),
        std::mem::size_of::<T>(),
    )
}

/// The checked arrays of one tensor. They are not yet borrowed: that needs the step's
/// claims to be registered first.
pub(super) struct Tensor<'a, 'py, K: Precision>
where
    K::Param: numpy::Element,
    K::State: numpy::Element,
{
    param: &'a Bound<'py, PyArrayDyn<K::Param>>,
    grad: &'a Bound<'py, PyArrayDyn<K::Param>>,
    exp_avg: &'a Bound<'py, PyArrayDyn<K::State>>,
    exp_inf: &'a Bound<'py, PyArrayDyn<K::State>>,
    master: Option<&'a Bound<'py, PyArrayDyn<K::State>>>,
    coefficients: Coefficients<K::Compute>,
}

/// The arrays of one tensor as Python passed them; the parameter and `exp_avg` are already
/// known to be arrays of a supported kind.
pub(super) struct TensorArgs<'a, 'py> {
    param: (&'a Bound<'py, PyUntypedArray>, Kind),
    grad: &'a Bound<'py, PyAny>,
    exp_avg: (&'a Bound<'py, PyUntypedArray>, Kind),
    exp_inf: &'a Bound<'py, PyAny>,
    master: Option<&'a Bound<'py, PyAny>>,
}

/// `array` as an array of `T`, if its dtype is `T`'s.
fn typed<'a, 'py, T: NumpyFloat>(
    array: &'a Bound<'py, PyUntypedArray>,
    kind: Option<Kind>,
) -> Option<&'a Bound<'py, PyArrayDyn<T>>> {
    // SAFETY: `array` is a numpy array (that is what `PyUntypedArray` checked), and `kind_of`
    // found its dtype to be `T`'s: the same type number (or ml_dtypes' bfloat16), the same
    // item size, native byte order. That is all `PyArrayDyn<T>` assumes of it; the number
    // of dimensions is free (`Dyn`).
    (kind == Some(T::KIND)).then(|| unsafe { array.cast_unchecked::<PyArrayDyn<T>>() })
}

/// `obj` as an array of `T`, or a `TypeError` naming its dtype and the one expected.
fn expect_typed<'a, 'py, T: NumpyFloat>(
    obj: &'a Bound<'py, PyAny>,
    place: Place,
    what: &str,
    like: (&str, &Bound<'py, PyUntypedArray>),
) -> PyResult<&'a Bound<'py, PyArrayDyn<T>>> {
    let array = as_ndarray(obj, place, what)?;
    typed::<T>(array, kind_of(&array.dtype())).ok_or_else(|| {
        place.type_error(format_args!(
            "{what} has dtype {} but {} has dtype {}",
            dtype_name(array),
            like.0,
            dtype_name(like.1)
        ))
    })
}

/// Checks the arrays of one tensor with parameter type `K::Param` and state type `K::State`.
fn check_tensor<'a, 'py, K>(
    place: Place,
    args: TensorArgs<'a, 'py>,
    coefficients: Coefficients<K::Compute>,
) -> PyResult<Tensor<'a, 'py, K>>
where
    K: Precision,
    K::Param: NumpyFloat,
    K::State: NumpyFloat,
{
    let (param_any, param_kind) = args.param;
    let (state_any, state_kind) = args.exp_avg;
    if args.grad.is(param_any) {
        return Err(place.value_error("the gradient is the parameter array itself"));
    }
    let internal = || to_runtime("the dtype dispatch does not match the arrays");
    let param = typed::<K::Param>(param_any, Some(param_kind)).ok_or_else(internal)?;
    let exp_avg = typed::<K::State>(state_any, Some(state_kind)).ok_or_else(internal)?;
    let grad = expect_typed::<K::Param>(args.grad, place, ROLES[1], (ROLES[0], param_any))?;
    let exp_inf = expect_typed::<K::State>(args.exp_inf, place, ROLES[3], (ROLES[2], state_any))?;
    let master = match args.master {
        Some(obj) => Some(expect_typed::<K::State>(
            obj,
            place,
            ROLES[4],
            (ROLES[2], state_any),
        )?),
        None => None,
    };
    let arrays: [Option<&Bound<'py, PyUntypedArray>>; 5] = [
        Some(param_any),
        Some(grad.as_untyped()),
        Some(state_any),
        Some(exp_inf.as_untyped()),
        master.map(|m| m.as_untyped()),
    ];
    for (role, array) in arrays.iter().enumerate() {
        let Some(array) = array else { continue };
        let what = ROLES[role];
        if array.shape() != param.shape() {
            return Err(place.value_error(format_args!(
                "{what} has shape {:?} but the parameter has shape {:?}",
                array.shape(),
                param.shape()
            )));
        }
        if !array.is_aligned() {
            return Err(place.type_error(format_args!(
                "{what} is not aligned to its element size; make an aligned copy first"
            )));
        }
        if role != 1 && !is_writeable(array) {
            return Err(place.value_error(format_args!("{what} is read-only (not writeable)")));
        }
    }
    Ok(Tensor {
        param,
        grad,
        exp_avg,
        exp_inf,
        master,
        coefficients,
    })
}

impl<K: Precision> Tensor<'_, '_, K>
where
    K::Param: numpy::Element,
    K::State: numpy::Element,
{
    /// The memory each array touches, in `ROLES` order.
    fn extents(&self) -> [Option<Extent>; 5] {
        [
            extent(self.param),
            extent(self.grad),
            extent(self.exp_avg),
            extent(self.exp_inf),
            self.master.and_then(extent),
        ]
    }

    /// Adds the work of this tensor: flat slices when all arrays share a memory order,
    /// views otherwise.
    ///
    /// # Safety
    /// The caller must hold a registration of the step's claims (`claims::Registration`)
    /// for as long as the jobs exist: it guarantees that no array written here overlaps any
    /// other array of the step, and that no other step on any thread uses that memory.
    unsafe fn plan<'s>(
        &'s self,
        jobs: &mut Vec<Job<'s>>,
        strided: &mut Vec<StridedJob<'s>>,
    ) -> PyResult<()> {
        let untyped = [
            Some(self.param.as_untyped()),
            Some(self.grad.as_untyped()),
            Some(self.exp_avg.as_untyped()),
            Some(self.exp_inf.as_untyped()),
            self.master.map(|m| m.as_untyped()),
        ];
        let present = || untyped.iter().flatten();
        let all_c = present().all(|a| a.is_c_contiguous());
        let all_f = present().all(|a| a.is_fortran_contiguous());
        let c = self.coefficients;
        // SAFETY (every `unsafe` call below): the arrays are alive (the step's argument
        // lists hold references to them until the step returns), have the element types
        // checked by `check_tensor`, and are aligned; the registered claims guarantee that
        // nothing else in this step or in another step aliases the memory we take `&mut` to,
        // and the caller keeps that registration for the lifetime of the jobs.
        if all_c || all_f {
            let master = match self.master {
                Some(m) => Some(unsafe { m.as_slice_mut() }.map_err(to_runtime)?),
                None => None,
            };
            let slices = TensorSlices::with_master(
                unsafe { self.param.as_slice_mut() }.map_err(to_runtime)?,
                unsafe { self.grad.as_slice() }.map_err(to_runtime)?,
                unsafe { self.exp_avg.as_slice_mut() }.map_err(to_runtime)?,
                unsafe { self.exp_inf.as_slice_mut() }.map_err(to_runtime)?,
                master,
            )
            .map_err(to_runtime)?;
            if !slices.is_empty() {
                jobs.push(K::job(slices, c));
            }
        } else {
            let views = TensorViews::new(
                unsafe { self.param.as_array_mut() },
                unsafe { self.grad.as_array() },
                unsafe { self.exp_avg.as_array_mut() },
                unsafe { self.exp_inf.as_array_mut() },
                self.master.map(|m| unsafe { m.as_array_mut() }),
            )
            .map_err(to_runtime)?;
            if !views.is_empty() {
                strided.push(K::strided_job(views, c));
            }
        }
        Ok(())
    }
}

/// An internal inconsistency (checked above, so never expected): a Python error, not a panic.
pub(super) fn to_runtime(e: impl std::fmt::Display) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("adamax_rs internal error: {e}"))
}

macro_rules! define_checked {
    ($($variant:ident($p:ty, $s:ty, $c:ty)),* $(,)?) => {
        /// A checked tensor of any supported precision.
        pub(super) enum Checked<'a, 'py> {
            $($variant(Tensor<'a, 'py, ($p, $s)>),)*
        }

        impl<'a, 'py> Checked<'a, 'py> {
            fn new(
                place: Place,
                kinds: (Kind, Kind),
                args: TensorArgs<'a, 'py>,
                hyperparameters: &crate::kernel::Hyperparameters,
                step: u64,
            ) -> PyResult<Option<Self>> {
                $(
                    if kinds == (<$p as NumpyFloat>::KIND, <$s as NumpyFloat>::KIND) {
                        let c = hyperparameters.coefficients::<$c>(step);
                        return Ok(Some(Checked::$variant(check_tensor(place, args, c)?)));
                    }
                )*
                Ok(None)
            }

            fn extents(&self) -> [Option<Extent>; 5] {
                match self {
                    $(Checked::$variant(t) => t.extents(),)*
                }
            }

            /// # Safety
            /// As [`Tensor::plan`].
            pub(super) unsafe fn plan<'s>(
                &'s self,
                jobs: &mut Vec<Job<'s>>,
                strided: &mut Vec<StridedJob<'s>>,
            ) -> PyResult<()> {
                match self {
                    // SAFETY: the caller upholds `Tensor::plan`'s contract.
                    $(Checked::$variant(t) => unsafe { t.plan(jobs, strided) },)*
                }
            }
        }
    };
}

for_each_precision!(define_checked);

/// Every checked tensor of a step, with the step's memory claims.
pub(super) struct CheckedStep<'a, 'py> {
    pub tensors: Vec<Checked<'a, 'py>>,
    pub places: Vec<Place>,
    pub claims: Claims,
}

/// Checks everything in the step; nothing is borrowed or written yet.
pub(super) fn check_step<'a, 'py>(groups: &'a [GroupArgs<'py>]) -> PyResult<CheckedStep<'a, 'py>> {
    let arrays: usize = groups.iter().map(|g| g.0.len()).sum();
    let mut step = CheckedStep {
        tensors: Vec::with_capacity(arrays),
        places: Vec::with_capacity(arrays),
        claims: Claims::with_capacity(3 * arrays),
    };
    for (g, args) in groups.iter().enumerate() {
        let hyperparameters = check_group(g, args)?;
        let GroupArgs(params, grads, exp_avgs, exp_infs, masters, steps, _) = args;
        for (index, grad) in grads.iter().enumerate() {
            if grad.is_none() {
                continue;
            }
            let place = Place { group: g, index };
            let t = steps[index];
            if t < 1 {
                return Err(place.value_error(format_args!("step must be >= 1, got {t}")));
            }
            let param = as_ndarray(&params[index], place, ROLES[0])?;
            let Some(param_kind) = kind_of(&param.dtype()) else {
                return Err(place.type_error(format_args!(
                    "parameter dtype {} is not supported (float16, bfloat16, float32 or \
                     float64, native byte order)",
                    dtype_name(param)
                )));
            };
            let state = as_ndarray(&exp_avgs[index], place, ROLES[2])?;
            let Some(state_kind) =
                kind_of(&state.dtype()).filter(|k| matches!(k, Kind::Float32 | Kind::Float64))
            else {
                return Err(place.type_error(format_args!(
                    "exp_avg has dtype {}; optimizer state must be float32 or float64",
                    dtype_name(state)
                )));
            };
            let master = &masters[index];
            let tensor_args = TensorArgs {
                param: (param, param_kind),
                grad,
                exp_avg: (state, state_kind),
                exp_inf: &exp_infs[index],
                master: (!master.is_none()).then_some(master),
            };
            let kinds = (param_kind, state_kind);
            let Some(tensor) = Checked::new(place, kinds, tensor_args, &hyperparameters, t as u64)?
            else {
                return Err(place.type_error(format_args!(
                    "a {} parameter with {} state is not supported",
                    dtype_name(param),
                    dtype_name(state)
                )));
            };
            let tag = ROLES.len() * step.places.len();
            for (role, extent) in tensor.extents().into_iter().enumerate() {
                if let Some(extent) = extent {
                    if role == 1 {
                        step.claims.read(extent, tag + role);
                    } else {
                        step.claims.write(extent, tag + role);
                    }
                }
            }
            step.places.push(place);
            step.tensors.push(tensor);
        }
    }
    Ok(step)
}

/// The error for a memory conflict, naming both arrays.
pub(super) fn conflict_error(places: &[Place], conflict: Conflict) -> PyErr {
    let roles = ROLES.len();
    let describe = |tag: usize| (places[tag / roles], ROLES[tag % roles], tag);
    match conflict {
        Conflict::WithinStep { first, second } => {
            let (a, b) = (describe(first), describe(second));
            let key = |d: &(Place, &str, usize)| (d.0.group, d.0.index, d.2 % roles);
            let (first, second) = if key(&a) <= key(&b) { (a, b) } else { (b, a) };
            let other = if (first.0.group, first.0.index) == (second.0.group, second.0.index) {
                second.1.to_string()
            } else {
                format!(
                    "{} of group {}, parameter {}",
                    second.1, second.0.group, second.0.index
                )
            };
            first.0.value_error(format_args!(
                "{} shares memory with {other}; each parameter, gradient and state array \
                 written in a step needs memory of its own",
                first.1
            ))
        }
        Conflict::OtherStep { tag } => {
            let (place, role, _) = describe(tag);
            place.value_error(format_args!("{role} is in use by a step on another thread"))
        }
    }
}
