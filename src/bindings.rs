//! The Python module `adamax_rs._core`: conversion, validation, borrowing, GIL release.
//!
//! Nothing here decides what Adamax does; that is `kernel`. A step arrives as one call with
//! every parameter group of the optimizer. Every array of every group is checked first
//! (types, dtypes, shapes, flags, and with `claims`, that nothing written overlaps anything
//! else in the step or in a step running on another thread); only then is any memory written,
//! so an error always leaves every array untouched.

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::npyffi::NPY_ARRAY_WRITEABLE;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::claims::{Claims, Conflict, Extent};
use crate::dispatch::{self, Isa, Op};
use crate::kernel::{Coefficients, Float, Hyperparameters, TensorSlices};
use crate::pool;
use crate::schedule::{run_jobs_with, IntoJob, Job, STREAMS_PER_ELEMENT};
use crate::strided::{adamax_update_strided, TensorViews};

/// Below this many bytes moved, the step keeps the GIL: releasing and taking it back can
/// cost more than the work (and, with other Python threads busy, up to a switch interval).
const KEEP_GIL_BELOW_BYTES: usize = 64 * 1024;

/// One parameter group as the Python layer sends it (a tuple).
#[derive(FromPyObject)]
struct GroupArgs<'py>(
    Vec<Bound<'py, PyAny>>, // params: ndarrays
    Vec<Bound<'py, PyAny>>, // grads: ndarrays or None (skipped)
    Vec<Bound<'py, PyAny>>, // exp_avgs: ndarrays (anything where the grad is None)
    Vec<Bound<'py, PyAny>>, // exp_infs
    Vec<i64>,               // steps: the t of this step, >= 1 where the grad is not None
    HyperArgs,
);

/// A group's hyperparameters, as a tuple in the order of [`Hyperparameters`]' fields.
#[derive(FromPyObject)]
struct HyperArgs(f64, f64, f64, f64, f64, bool, bool, bool);

impl From<&HyperArgs> for Hyperparameters {
    fn from(h: &HyperArgs) -> Self {
        let HyperArgs(lr, beta1, beta2, eps, weight_decay, maximize, eps_inside_max, decoupled) =
            *h;
        Hyperparameters {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            maximize,
            eps_inside_max,
            decoupled_weight_decay: decoupled,
        }
    }
}

/// Where an array sits in the step, for error messages.
#[derive(Clone, Copy)]
struct Place {
    group: usize,
    index: usize,
}

impl Place {
    fn value_error(self, what: impl std::fmt::Display) -> PyErr {
        PyValueError::new_err(format!(
            "group {}, parameter {}: {what}",
            self.group, self.index
        ))
    }
    fn type_error(self, what: impl std::fmt::Display) -> PyErr {
        PyTypeError::new_err(format!(
            "group {}, parameter {}: {what}",
            self.group, self.index
        ))
    }
}

/// The names of a tensor's four arrays, in claim-tag order (`tag = 4 * tensor + role`).
const ROLES: [&str; 4] = ["the parameter", "the gradient", "exp_avg", "exp_inf"];

/// The four checked arrays of one tensor. They are not yet borrowed: that needs the step's
/// claims to be registered first.
struct Tensor<'a, 'py, T> {
    arrays: [&'a Bound<'py, PyArrayDyn<T>>; 4],
    coefficients: Coefficients<T>,
}

/// Every checked tensor of a step, by dtype, with the step's memory claims.
struct CheckedStep<'a, 'py> {
    f32s: Vec<Tensor<'a, 'py, f32>>,
    f64s: Vec<Tensor<'a, 'py, f64>>,
    places: Vec<Place>,
    claims: Claims,
}

/// A tensor whose four arrays do not share one memory order.
enum StridedJob<'a> {
    F32(TensorViews<'a, f32>, Coefficients<f32>),
    F64(TensorViews<'a, f64>, Coefficients<f64>),
}

impl StridedJob<'_> {
    fn cost(&self) -> usize {
        match self {
            StridedJob::F32(v, _) => v.len() * 4 * STREAMS_PER_ELEMENT,
            StridedJob::F64(v, _) => v.len() * 8 * STREAMS_PER_ELEMENT,
        }
    }

    fn run(self) {
        match self {
            StridedJob::F32(v, c) => adamax_update_strided(v, &c),
            StridedJob::F64(v, c) => adamax_update_strided(v, &c),
        }
    }
}

fn dtype_name(array: &Bound<'_, PyUntypedArray>) -> String {
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

fn is_writeable(array: &Bound<'_, PyUntypedArray>) -> bool {
    // SAFETY: `as_array_ptr` points to the live PyArrayObject that `array` holds a reference
    // to; reading its `flags` field is what numpy's own PyArray_FLAGS macro does.
    unsafe { (*array.as_array_ptr()).flags & NPY_ARRAY_WRITEABLE != 0 }
}

fn extent<T>(array: &Bound<'_, PyArrayDyn<T>>) -> Option<Extent>
where
    T: numpy::Element,
{
    Extent::of_array(
        array.data() as usize,
        array.shape(),
        array.strides(),
        std::mem::size_of::<T>(),
    )
}

/// Checks the arrays of one tensor whose parameter has element type `T`.
fn check_tensor<'a, 'py, T: numpy::Element + Float>(
    place: Place,
    param: &'a Bound<'py, PyArrayDyn<T>>,
    others: [&'a Bound<'py, PyAny>; 3],
    coefficients: Coefficients<T>,
) -> PyResult<Tensor<'a, 'py, T>> {
    if others[0].is(param) {
        return Err(place.value_error("the gradient is the parameter array itself"));
    }
    let mut arrays = [param; 4];
    for (role, obj) in others.into_iter().enumerate() {
        let what = ROLES[role + 1];
        arrays[role + 1] =
            obj.cast::<PyArrayDyn<T>>()
                .map_err(|_| match obj.cast::<PyUntypedArray>() {
                    Ok(array) => place.type_error(format_args!(
                        "{what} has dtype {} but the parameter has dtype {}",
                        dtype_name(array),
                        dtype_name(param.as_untyped())
                    )),
                    Err(_) => place.type_error(format_args!(
                        "{what} must be a numpy.ndarray, got {}",
                        type_name(obj)
                    )),
                })?;
    }
    for (role, array) in arrays.iter().enumerate() {
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
        if role != 1 && !is_writeable(array.as_untyped()) {
            return Err(place.value_error(format_args!("{what} is read-only (not writeable)")));
        }
    }
    Ok(Tensor {
        arrays,
        coefficients,
    })
}

fn check_group(group: usize, args: &GroupArgs<'_>) -> PyResult<Hyperparameters> {
    let GroupArgs(params, grads, exp_avgs, exp_infs, steps, hyper) = args;
    let n = params.len();
    for (len, what) in [
        (grads.len(), "grads"),
        (exp_avgs.len(), "exp_avgs"),
        (exp_infs.len(), "exp_infs"),
        (steps.len(), "steps"),
    ] {
        if len != n {
            return Err(PyValueError::new_err(format!(
                "group {group}: {what} has {len} entries but there are {n} parameters"
            )));
        }
    }
    let hyperparameters = Hyperparameters::from(hyper);
    hyperparameters
        .validate()
        .map_err(|e| PyValueError::new_err(format!("group {group}: {e}")))?;
    Ok(hyperparameters)
}

/// Checks everything in the step; nothing is borrowed or written yet.
fn check_step<'a, 'py>(groups: &'a [GroupArgs<'py>]) -> PyResult<CheckedStep<'a, 'py>> {
    let mut step = CheckedStep {
        f32s: Vec::new(),
        f64s: Vec::new(),
        places: Vec::new(),
        claims: Claims::with_capacity(groups.iter().map(|g| 3 * g.0.len()).sum()),
    };
    for (g, args) in groups.iter().enumerate() {
        let hyperparameters = check_group(g, args)?;
        let GroupArgs(params, grads, exp_avgs, exp_infs, steps, ..) = args;
        for (index, grad) in grads.iter().enumerate() {
            if grad.is_none() {
                continue;
            }
            let place = Place { group: g, index };
            let t = steps[index];
            if t < 1 {
                return Err(place.value_error(format_args!("step must be >= 1, got {t}")));
            }
            let others = [grad, &exp_avgs[index], &exp_infs[index]];
            let param = &params[index];
            let arrays = if let Ok(p) = param.cast::<PyArrayDyn<f32>>() {
                let c = hyperparameters.coefficients::<f32>(t as u64);
                let tensor = check_tensor(place, p, others, c)?;
                let arrays = tensor.arrays.map(extent);
                step.f32s.push(tensor);
                arrays
            } else if let Ok(p) = param.cast::<PyArrayDyn<f64>>() {
                let c = hyperparameters.coefficients::<f64>(t as u64);
                let tensor = check_tensor(place, p, others, c)?;
                let arrays = tensor.arrays.map(extent);
                step.f64s.push(tensor);
                arrays
            } else {
                return Err(match param.cast::<PyUntypedArray>() {
                    Ok(array) => place.type_error(format_args!(
                        "parameter dtype {} is not supported (float32 or float64, native byte order)",
                        dtype_name(array)
                    )),
                    Err(_) => place.type_error(format_args!(
                        "the parameter must be a numpy.ndarray, got {}",
                        type_name(param)
                    )),
                });
            };
            let tensor_tag = 4 * step.places.len();
            step.places.push(place);
            for (role, extent) in arrays.into_iter().enumerate() {
                if let Some(extent) = extent {
                    if role == 1 {
                        step.claims.read(extent, tensor_tag + role);
                    } else {
                        step.claims.write(extent, tensor_tag + role);
                    }
                }
            }
        }
    }
    Ok(step)
}

/// The error for a memory conflict, naming both arrays.
fn conflict_error(places: &[Place], conflict: Conflict) -> PyErr {
    let describe = |tag: usize| (places[tag / 4], ROLES[tag % 4]);
    match conflict {
        Conflict::WithinStep { first, second } => {
            let ((p1, r1), (p2, r2)) = (describe(first), describe(second));
            let (first, second) =
                if (p1.group, p1.index, first % 4) <= (p2.group, p2.index, second % 4) {
                    ((p1, r1), (p2, r2))
                } else {
                    ((p2, r2), (p1, r1))
                };
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
            let (place, role) = describe(tag);
            place.value_error(format_args!("{role} is in use by a step on another thread"))
        }
    }
}

/// Turns checked arrays into work: flat slices when the four share a memory order, views
/// otherwise.
///
/// # Safety
/// The caller must hold a registration of the step's claims (`claims::Registration`) for
/// as long as the returned jobs exist: it guarantees that no array written here overlaps any
/// other array of the step, and that no other step on any thread uses that memory.
unsafe fn plan<'a, T: numpy::Element + Float + IntoJob<'a>>(
    tensors: &'a [Tensor<'a, '_, T>],
    jobs: &mut Vec<Job<'a>>,
    strided: &mut Vec<StridedJob<'a>>,
    wrap: fn(TensorViews<'a, T>, Coefficients<T>) -> StridedJob<'a>,
) -> PyResult<()> {
    for tensor in tensors {
        let [param, grad, exp_avg, exp_inf] = tensor.arrays;
        let all_c = tensor.arrays.iter().all(|a| a.is_c_contiguous());
        let all_f = tensor.arrays.iter().all(|a| a.is_fortran_contiguous());
        let c = tensor.coefficients;
        // SAFETY (all four `unsafe` calls below): the arrays are alive (the step's argument
        // lists hold references to them until the step returns), have dtype `T` and are
        // aligned (`check_tensor`), and the registered claims guarantee that nothing else in
        // this step or in another step aliases the memory we take `&mut` to; the caller
        // keeps that registration for the lifetime of the jobs.
        if all_c || all_f {
            let slices = TensorSlices::new(
                unsafe { param.as_slice_mut() }.map_err(to_runtime)?,
                unsafe { grad.as_slice() }.map_err(to_runtime)?,
                unsafe { exp_avg.as_slice_mut() }.map_err(to_runtime)?,
                unsafe { exp_inf.as_slice_mut() }.map_err(to_runtime)?,
            )
            .map_err(to_runtime)?;
            if !slices.is_empty() {
                jobs.push(T::job(slices, c));
            }
        } else {
            let views = TensorViews::new(
                unsafe { param.as_array_mut() },
                unsafe { grad.as_array() },
                unsafe { exp_avg.as_array_mut() },
                unsafe { exp_inf.as_array_mut() },
            )
            .map_err(to_runtime)?;
            if !views.is_empty() {
                strided.push(wrap(views, c));
            }
        }
    }
    Ok(())
}

/// An internal inconsistency (checked above, so never expected): a Python error, not a panic.
fn to_runtime(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(format!("adamax_rs internal error: {e}"))
}

/// Checks, claims and runs one step of `op` over every group.
fn run_step(py: Python<'_>, groups: Vec<GroupArgs<'_>>, op: Op) -> PyResult<()> {
    let CheckedStep {
        f32s,
        f64s,
        places,
        claims,
    } = check_step(&groups)?;
    let checked = claims.check().map_err(|c| conflict_error(&places, c))?;
    // Steps sharing memory with this one (two optimizers over one parameter, on two
    // threads) run one after the other: wait for them with the GIL released.
    let registration = match checked.register() {
        Ok(registration) => registration,
        Err(_) => py.detach(|| checked.register_waiting()),
    };
    let mut jobs = Vec::with_capacity(f32s.len() + f64s.len());
    let mut strided = Vec::new();
    // SAFETY: `registration` lives until the end of this function, after every job has run.
    unsafe {
        plan(&f32s, &mut jobs, &mut strided, StridedJob::F32)?;
        plan(&f64s, &mut jobs, &mut strided, StridedJob::F64)?;
    }
    if op == Op::BandwidthProbe && !strided.is_empty() {
        return Err(PyValueError::new_err(
            "the bandwidth probe needs arrays that share one contiguous layout",
        ));
    }
    let cost: usize = jobs.iter().map(Job::cost).sum::<usize>()
        + strided.iter().map(StridedJob::cost).sum::<usize>();
    let work = move || {
        // The kernel has no panicking paths; this is the last line of defence so that a
        // bug shows up as a RuntimeError and never as pyo3's PanicException.
        catch_unwind(AssertUnwindSafe(|| {
            strided.into_iter().for_each(StridedJob::run);
            run_jobs_with(jobs, op);
        }))
        .map_err(|_| "a Rust panic during the update")
    };
    let outcome = if cost < KEEP_GIL_BELOW_BYTES {
        work()
    } else {
        py.detach(work)
    };
    drop(registration);
    outcome.map_err(to_runtime)
}

/// adamax_step(groups, /)
/// --
///
/// One Adamax step over every parameter group of an optimizer, in place.
#[pyfunction]
fn adamax_step(py: Python<'_>, groups: Vec<GroupArgs<'_>>) -> PyResult<()> {
    run_step(py, groups, Op::Adamax)
}

/// bandwidth_probe(groups, /)
/// --
///
/// Moves exactly the memory an Adamax step moves, with trivial arithmetic (benchmarks only).
#[pyfunction]
fn bandwidth_probe(py: Python<'_>, groups: Vec<GroupArgs<'_>>) -> PyResult<()> {
    run_step(py, groups, Op::BandwidthProbe)
}

/// Checks hyperparameter ranges; raises ValueError naming the first bad one.
#[pyfunction]
#[pyo3(signature = (lr, beta1, beta2, eps, weight_decay))]
fn check_hyperparameters(
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
) -> PyResult<()> {
    Hyperparameters {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        maximize: false,
        eps_inside_max: false,
        decoupled_weight_decay: false,
    }
    .validate()
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Sets the number of threads a step may use; 0 restores the default.
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    let n = usize::try_from(n)
        .map_err(|_| PyValueError::new_err(format!("number of threads must be >= 0, got {n}")))?;
    pool::set_num_threads(n);
    Ok(())
}

/// The number of threads a step may use.
#[pyfunction]
fn get_num_threads() -> usize {
    pool::num_threads()
}

/// The vector instruction set the kernel uses on this CPU.
#[pyfunction]
fn simd_level() -> &'static str {
    match dispatch::detected() {
        Isa::Baseline => "baseline",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
    }
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(adamax_step, m)?)?;
    m.add_function(wrap_pyfunction!(bandwidth_probe, m)?)?;
    m.add_function(wrap_pyfunction!(check_hyperparameters, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    Ok(())
}
