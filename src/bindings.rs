//! The Python module `adamax_rs._core`: conversion, validation, borrowing, GIL release.
//!
//! Nothing here decides what Adamax does; that is `kernel`. A step arrives as one call with
//! every parameter group of the optimizer. All arrays of all groups are checked and borrowed
//! first (rust-numpy's borrow table refuses overlapping writers), and only then does any
//! arithmetic run, so an error always leaves every array untouched.

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyReadwriteArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

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
    Vec<Bound<'py, PyAny>>, // exp_avgs: ndarrays (None where the grad is None)
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

/// The four arrays of one tensor, borrowed, with its coefficients.
struct Borrowed<'py, T: Element> {
    param: PyReadwriteArrayDyn<'py, T>,
    grad: PyReadonlyArrayDyn<'py, T>,
    exp_avg: PyReadwriteArrayDyn<'py, T>,
    exp_inf: PyReadwriteArrayDyn<'py, T>,
    coefficients: Coefficients<T>,
}

/// Every borrowed tensor of a step, by dtype.
#[derive(Default)]
struct StepBorrows<'py> {
    f32s: Vec<Borrowed<'py, f32>>,
    f64s: Vec<Borrowed<'py, f64>>,
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

/// The array as `PyArrayDyn<T>`; the dtype was already matched, so this only fails for a
/// non-native byte order, which numpy reports as a different dtype.
fn typed<'a, 'py, T: Element>(
    array: &'a Bound<'py, PyUntypedArray>,
    place: Place,
    what: &str,
) -> PyResult<&'a Bound<'py, PyArrayDyn<T>>> {
    array.cast::<PyArrayDyn<T>>().map_err(|_| {
        place.type_error(format_args!(
            "{what} has dtype {} (non-native byte order is not supported)",
            dtype_name(array)
        ))
    })
}

fn borrow_error(place: Place, what: &str, err: numpy::BorrowError) -> PyErr {
    match err {
        numpy::BorrowError::NotWriteable => {
            place.value_error(format_args!("{what} is read-only (not writeable)"))
        }
        _ => place.value_error(format_args!(
            "{what} shares memory with another array of this step (a gradient that is a \
             view of its parameter, or two parameters over one buffer), or is in use by \
             another thread"
        )),
    }
}

/// Checks and borrows the four arrays of one tensor whose parameter has element type `T`.
#[allow(clippy::too_many_arguments)]
fn borrow_tensor<'py, T: Element + Float>(
    place: Place,
    param: &Bound<'py, PyUntypedArray>,
    grad: &Bound<'py, PyAny>,
    exp_avg: &Bound<'py, PyAny>,
    exp_inf: &Bound<'py, PyAny>,
    coefficients: Coefficients<T>,
) -> PyResult<Borrowed<'py, T>> {
    let shape = param.shape();
    let param_dtype = param.dtype();
    let mut others = Vec::with_capacity(3);
    for (obj, what) in [
        (grad, "gradient"),
        (exp_avg, "exp_avg"),
        (exp_inf, "exp_inf"),
    ] {
        let array = as_ndarray(obj, place, what)?;
        if !array.dtype().is_equiv_to(&param_dtype) {
            return Err(place.type_error(format_args!(
                "{what} has dtype {} but the parameter has dtype {}",
                dtype_name(array),
                dtype_name(param)
            )));
        }
        if array.shape() != shape {
            return Err(place.value_error(format_args!(
                "{what} has shape {:?} but the parameter has shape {:?}",
                array.shape(),
                shape
            )));
        }
        if !array.is_aligned() {
            return Err(place.type_error(format_args!(
                "{what} is not aligned to its element size; make an aligned copy first"
            )));
        }
        others.push(typed::<T>(array, place, what)?);
    }
    if grad.is(param) {
        return Err(place.value_error("the gradient is the parameter array itself"));
    }
    if !param.is_aligned() {
        return Err(place.type_error(
            "the parameter array is not aligned to its element size; make an aligned copy first",
        ));
    }
    let param = typed::<T>(param, place, "the parameter")?;
    Ok(Borrowed {
        param: param
            .try_readwrite()
            .map_err(|e| borrow_error(place, "the parameter", e))?,
        grad: others[0]
            .try_readonly()
            .map_err(|e| borrow_error(place, "the gradient", e))?,
        exp_avg: others[1]
            .try_readwrite()
            .map_err(|e| borrow_error(place, "exp_avg", e))?,
        exp_inf: others[2]
            .try_readwrite()
            .map_err(|e| borrow_error(place, "exp_inf", e))?,
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

/// Checks and borrows everything in the step; nothing is written yet.
fn borrow_step<'py>(groups: &[GroupArgs<'py>]) -> PyResult<StepBorrows<'py>> {
    let mut borrows = StepBorrows::default();
    for (g, args) in groups.iter().enumerate() {
        let hyperparameters = check_group(g, args)?;
        let GroupArgs(params, grads, exp_avgs, exp_infs, steps, ..) = args;
        for (index, grad) in grads.iter().enumerate() {
            if grad.is_none() {
                continue;
            }
            let place = Place { group: g, index };
            let step = steps[index];
            if step < 1 {
                return Err(place.value_error(format_args!("step must be >= 1, got {step}")));
            }
            let param = as_ndarray(&params[index], place, "the parameter")?;
            let (exp_avg, exp_inf) = (&exp_avgs[index], &exp_infs[index]);
            let dtype = param.dtype();
            let py = param.py();
            if dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
                let c = hyperparameters.coefficients::<f32>(step as u64);
                borrows
                    .f32s
                    .push(borrow_tensor(place, param, grad, exp_avg, exp_inf, c)?);
            } else if dtype.is_equiv_to(&numpy::dtype::<f64>(py)) {
                let c = hyperparameters.coefficients::<f64>(step as u64);
                borrows
                    .f64s
                    .push(borrow_tensor(place, param, grad, exp_avg, exp_inf, c)?);
            } else {
                return Err(place.type_error(format_args!(
                    "parameter dtype {} is not supported (float32 or float64)",
                    dtype_name(param)
                )));
            }
        }
    }
    Ok(borrows)
}

/// Turns borrowed arrays into work: flat slices when the four share a memory order, views
/// otherwise.
fn plan<'a, T: Element + Float + IntoJob<'a>>(
    borrowed: &'a mut [Borrowed<'_, T>],
    jobs: &mut Vec<Job<'a>>,
    strided: &mut Vec<StridedJob<'a>>,
    wrap: fn(TensorViews<'a, T>, Coefficients<T>) -> StridedJob<'a>,
) -> PyResult<()> {
    for b in borrowed.iter_mut() {
        let arrays: [&Bound<'_, PyUntypedArray>; 4] = [
            b.param.as_untyped(),
            b.grad.as_untyped(),
            b.exp_avg.as_untyped(),
            b.exp_inf.as_untyped(),
        ];
        let all_c = arrays.iter().all(|a| a.is_c_contiguous());
        let all_f = arrays.iter().all(|a| a.is_fortran_contiguous());
        let c = b.coefficients;
        if all_c || all_f {
            let slices = TensorSlices::new(
                b.param.as_slice_mut().map_err(to_runtime)?,
                b.grad.as_slice().map_err(to_runtime)?,
                b.exp_avg.as_slice_mut().map_err(to_runtime)?,
                b.exp_inf.as_slice_mut().map_err(to_runtime)?,
            )
            .map_err(to_runtime)?;
            if !slices.is_empty() {
                jobs.push(T::job(slices, c));
            }
        } else {
            let views = TensorViews::new(
                b.param.as_array_mut(),
                b.grad.as_array(),
                b.exp_avg.as_array_mut(),
                b.exp_inf.as_array_mut(),
            )
            .map_err(to_runtime)?;
            strided.push(wrap(views, c));
        }
    }
    Ok(())
}

/// An internal inconsistency (checked above, so never expected): a Python error, not a panic.
fn to_runtime(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(format!("adamax_rs internal error: {e}"))
}

/// Checks, borrows and runs one step of `op` over every group.
fn run_step(py: Python<'_>, groups: Vec<GroupArgs<'_>>, op: Op) -> PyResult<()> {
    let mut borrows = borrow_step(&groups)?;
    let mut jobs = Vec::with_capacity(borrows.f32s.len() + borrows.f64s.len());
    let mut strided = Vec::new();
    plan(&mut borrows.f32s, &mut jobs, &mut strided, StridedJob::F32)?;
    plan(&mut borrows.f64s, &mut jobs, &mut strided, StridedJob::F64)?;
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
