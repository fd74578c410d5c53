//! The torch optimizer's step plan: what `adamax_rs.torch.Adamax.step` runs.
//!
//! The parameters are torch tensors, their gradients are `p.grad`, and their state is torch's
//! own: `optimizer.state[p]` is a dict `{"step": 0-d tensor, "exp_avg": tensor, "exp_inf":
//! tensor}`, as `torch.optim.Adamax` keeps it, so that everything in torch that reads or writes an
//! optimizer's state (state dicts, ZeroRedundancyOptimizer, checkpoints) keeps working. Each tensor
//! is described through DLPack (see `dlpack`) and checked by the same engine as numpy arrays; the
//! check of a parameter and its state is kept while their descriptions are unchanged.
//!
//! The step first gathers every object it needs (gradients, state entries, resolved lazy
//! gradients), which may run Python code, and only then reads memory, with torch function off
//! (see `torch_function`): from the first address read to the kernel's last write, no Python code
//! runs that could free or move memory already read.
//!
//! A step never creates state: it returns the parameters that have a gradient but no state yet,
//! having changed nothing, and the Python front end creates their state and steps again. The
//! `step` tensors are memory the step writes, like the others (see `engine::counter`): claimed
//! with them, read only once claimed, and written when the update has run, before their claims
//! are released.

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::engine::buffers::StepBuffers;
use crate::engine::counter::StepCounter;
use crate::engine::memory::RawArray;
use crate::engine::step::{
    check_gradient, CheckedTensor, Role, StepMemory, StepNumber, TensorState,
};
use crate::kernel::{Adamax, Hyperparameters};

use super::arrays::GradRead;
use super::dlpack::{reader, TensorProblem, TensorReader};
use super::errors::{conflict_error, guarded, Place};
use super::hyperparameters::PyHyperparameters;
use super::lazy_bits::lazy_bit;
use super::ndarray::type_name;
use super::policy::{state_kind, StatePolicy};
use super::reentry::one_step_at_a_time;
use super::run::{run_step, RunError};
use super::state_cursor::StateCursor;
use super::torch_function::TorchFunctionOff;
use super::torch_state_entry::TorchStateTensors;

/// What the plan remembers of one parameter position.
#[derive(Default)]
struct TorchCache {
    param: Option<Py<PyAny>>,
    state: Option<TensorState>,
}

/// The objects of one parameter's update, gathered (and held for the step) before any memory is
/// read.
struct TorchObjects<'py> {
    place: Place,
    param: Bound<'py, PyAny>,
    grad: Bound<'py, PyAny>,
    exp_avg: Bound<'py, PyAny>,
    exp_inf: Bound<'py, PyAny>,
    step_tensor: Bound<'py, PyAny>,
    scales: Option<[Bound<'py, PyAny>; 2]>,
}

/// What was read from one parameter's objects, `'a` the borrow of those objects.
struct TorchRead<'a> {
    counter: StepCounter<'a>,
    grad: GradRead,
}

/// A parameter found with a gradient and a state: its place, the tensor, its gradient and its
/// state dict.
type Found<'py> = (
    Place,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
);

/// The cached step of ``adamax_rs.torch.Adamax``. ``step(param_groups, state, hyperparameters)``
/// updates every parameter that has a gradient and returns ``None``, or, changing nothing, the
/// list of ``(group, index)`` of parameters that have a gradient but no state yet.
#[pyclass(module = "adamax_rs._core", name = "TorchStepPlan")]
pub struct TorchStepPlan {
    policy: StatePolicy,
    groups: Vec<Vec<TorchCache>>,
    buffers: StepBuffers,
}

fn problem_error(place: Place, role: Role, problem: TensorProblem) -> PyErr {
    match problem {
        TensorProblem::NotATensor(t) => place.type_error(format_args!(
            "{} must be a torch.Tensor, got {t}",
            role.describe()
        )),
        TensorProblem::Device(d) => place.value_error(format_args!(
            "{} is on {d}; adamax_rs.torch.Adamax updates tensors on the CPU only (use \
             torch.optim.Adamax for tensors on other devices)",
            role.describe()
        )),
        TensorProblem::Dtype(d) => place.type_error(format_args!(
            "{} has dtype {d}, which is not supported (float16, bfloat16, float32, float64, \
             complex64 or complex128, and uint8 for the codes of 8-bit state)",
            role.describe()
        )),
        TensorProblem::Layout(error) => error,
        TensorProblem::NoMemory => place.type_error(format_args!(
            "{} has no memory of its own (its data_ptr() is 0, as for a tensor subclass that \
             wraps another tensor); pass the tensor that holds the values",
            role.describe()
        )),
    }
}

fn describe(
    reader: &TensorReader,
    obj: &Bound<'_, PyAny>,
    place: Place,
    role: Role,
) -> PyResult<RawArray> {
    reader
        .describe(obj)
        .map_err(|p| problem_error(place, role, p))
}

/// Refuses a tensor the step writes that has a lazy bit set (see [`lazy_bit`]).
fn refuse_lazy(obj: &Bound<'_, PyAny>, raw: &RawArray, place: Place, role: Role) -> PyResult<()> {
    match lazy_bit(obj, raw.element)? {
        None => Ok(()),
        Some(bit) => Err(place.value_error(format_args!(
            "{} has torch's {} bit set (a lazy view whose memory holds the values before \
             the {}); the step cannot write it in place: resolve it first, for example \
             p.data = p.data.resolve_conj().resolve_neg()",
            role.describe(),
            bit.name(),
            bit.operation()
        ))),
    }
}

/// torch's C function that bumps autograd's version counters: `torch._C._increment_version`.
///
/// Called directly, not through `torch.autograd.graph.increment_version`, its Python wrapper:
/// a Python function would run bytecode between the update and the bump, where a Ctrl-C
/// (a signal handler raising `KeyboardInterrupt`) could land and leave the parameters changed
/// but their versions not. A C function called from here runs no bytecode, so a signal that
/// arrives is handled after the step returns, with everything committed.
fn increment_version(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static INCREMENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    INCREMENT
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("torch._C")?
                    .getattr("_increment_version")?
                    .unbind(),
            )
        })
        .map(|f| f.bind(py))
}

/// Tells autograd that `params` changed in place: one call with the list where torch takes a
/// list (torch >= 2.2's signature); one call a tensor where it takes a single tensor (older).
fn tell_autograd(py: Python<'_>, params: &[&Bound<'_, PyAny>]) -> PyResult<()> {
    let increment = increment_version(py)?;
    let list = PyList::new(py, params)?;
    match increment.call1((list,)) {
        Ok(_) => Ok(()),
        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
            for param in params {
                increment.call1((param,))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The refusal of a state's `step` that cannot hold a count.
fn not_a_count(place: Place) -> PyErr {
    place.value_error(
        "its state's 'step' must be a tensor of one float32 or float64 element on the CPU \
         holding a whole number between 0 and 2**53",
    )
}

/// Where the step count in a state's `step` tensor is. Its value is read by the engine once the
/// step's memory is claimed (`StepCounter::next_step`), where no other step can change it before
/// it is written back.
fn step_counter<'a>(
    reader: &TensorReader,
    obj: &'a Bound<'_, PyAny>,
    place: Place,
) -> PyResult<StepCounter<'a>> {
    let raw = reader.describe(obj).map_err(|_| not_a_count(place))?;
    if raw.len() != Some(1) {
        return Err(not_a_count(place));
    }
    // A negated view's memory holds minus its value: refused, as any lazy state tensor is.
    if let Some(bit) = lazy_bit(obj, raw.element)? {
        return Err(place.value_error(format_args!(
            "its state's 'step' has torch's {} bit set (a lazy view whose memory holds the \
             values before the {}); resolve it first, for example \
             state['step'] = state['step'].resolve_neg()",
            bit.name(),
            bit.operation()
        )));
    }
    // SAFETY: the address of the one element of the tensor `obj`, which the caller holds alive
    // for 'a, and, as for all tensors the step uses, keeps un-moved (no Python code runs on this
    // thread until the step has run; other threads are the documented limit).
    unsafe { StepCounter::new(raw.address, raw.element) }.ok_or_else(|| not_a_count(place))
}

/// A parameter's state tensors, read from its entry of `optimizer.state`: Python code may run
/// here (a mapping's `__getitem__`), so nothing reads memory yet.
fn gather<'py>(
    place: Place,
    param: Bound<'py, PyAny>,
    grad: Bound<'py, PyAny>,
    entry: &Bound<'py, PyAny>,
) -> PyResult<TorchObjects<'py>> {
    let read = TorchStateTensors::read(entry)?;
    let required = |value: Option<Bound<'py, PyAny>>, name: &str| {
        value.ok_or_else(|| {
            let keys = entry
                .call_method0("keys")
                .and_then(|k| k.repr())
                .map(|r| r.to_string())
                .unwrap_or_default();
            place.value_error(format_args!("its state has no '{name}' (it has {keys})"))
        })
    };
    let exp_avg = required(read.exp_avg, "exp_avg")?;
    let exp_inf = required(read.exp_inf, "exp_inf")?;
    let step_tensor = required(read.step, "step")?;
    // The block scales of 8-bit state, when the state has them.
    let scales = match (read.exp_avg_scale, read.exp_inf_scale) {
        (Some(a), Some(b)) => Some([a, b]),
        (None, None) => None,
        _ => {
            return Err(place.value_error(
                "its state has one of exp_avg_scale and exp_inf_scale but not the other",
            ))
        }
    };
    Ok(TorchObjects {
        place,
        param,
        grad,
        exp_avg,
        exp_inf,
        step_tensor,
        scales,
    })
}

impl TorchStepPlan {
    /// Reads and checks the memory of one parameter's tensors, keeping the check of its state
    /// while the descriptions are unchanged. Runs no Python code while torch function is off,
    /// except in raising an error. `Ok(None)`: the gradient is a lazily negated or conjugated
    /// view, to be resolved by the caller (only when `lazy_grad_allowed`; else it is an error).
    fn read_objects<'a>(
        &mut self,
        reader: &TensorReader,
        o: &'a TorchObjects<'_>,
        lazy_grad_allowed: bool,
    ) -> PyResult<Option<TorchRead<'a>>> {
        let place = o.place;
        let param_raw = describe(reader, &o.param, place, Role::Param)?;
        refuse_lazy(&o.param, &param_raw, place, Role::Param)?;
        let grad_raw = reader.describe(&o.grad).map_err(|problem| match problem {
            TensorProblem::Layout(error)
                if o.grad
                    .getattr("is_sparse")
                    .and_then(|s| s.is_truthy())
                    .unwrap_or(false) =>
            {
                let _ = error;
                PyRuntimeError::new_err("Adamax does not support sparse gradients")
            }
            other => problem_error(place, Role::Grad, other),
        })?;
        // A lazily conjugated or negated gradient (autograd makes them) is only read: the caller
        // resolves its values into a new tensor, held for the step, and reads everything again.
        if let Some(bit) = lazy_bit(&o.grad, grad_raw.element)? {
            if lazy_grad_allowed {
                return Ok(None);
            }
            return Err(place.value_error(format_args!(
                "its gradient has torch's {} bit set again after it was resolved (Python code \
                 run by the step changed it)",
                bit.name()
            )));
        }
        check_gradient(&param_raw, &grad_raw).map_err(|e| place.tensor_error(e))?;
        let grad_layout = if grad_raw.element == param_raw.element
            && grad_raw.shape == param_raw.shape
            && grad_raw.strides == param_raw.strides
        {
            GradRead::LikeParam(grad_raw.address)
        } else {
            GradRead::Other(Box::new(grad_raw))
        };
        let exp_avg_raw = describe(reader, &o.exp_avg, place, Role::ExpAvg)?;
        let exp_inf_raw = describe(reader, &o.exp_inf, place, Role::ExpInf)?;
        let scales_raw = match &o.scales {
            Some([a, b]) => Some([
                describe(reader, a, place, Role::ExpAvgScale)?,
                describe(reader, b, place, Role::ExpInfScale)?,
            ]),
            None => None,
        };
        let counter = step_counter(reader, &o.step_tensor, place)?;
        let cache = &mut self.groups[place.group][place.index];
        let unchanged = cache.state.as_ref().is_some_and(|s| {
            s.param() == &param_raw
                && s.exp_avg() == &exp_avg_raw
                && s.exp_inf() == &exp_inf_raw
                && s.scales() == scales_raw.as_ref()
        });
        // Every step: a lazy view has the description of the tensor it views, so an unchanged
        // description does not mean an unchanged bit.
        refuse_lazy(&o.exp_avg, &exp_avg_raw, place, Role::ExpAvg)?;
        refuse_lazy(&o.exp_inf, &exp_inf_raw, place, Role::ExpInf)?;
        if let (Some([a, b]), Some([a_raw, b_raw])) = (&o.scales, &scales_raw) {
            refuse_lazy(a, a_raw, place, Role::ExpAvgScale)?;
            refuse_lazy(b, b_raw, place, Role::ExpInfScale)?;
        }
        if !unchanged {
            cache.state = None;
            let state = TensorState::check(param_raw, exp_avg_raw, exp_inf_raw, None, scales_raw)
                .map_err(|e| place.tensor_error(e))?;
            let expected = self.policy.state_element(state.param());
            for (role, array) in [
                (Role::ExpAvg, state.exp_avg()),
                (Role::ExpInf, state.exp_inf()),
            ] {
                if array.element != expected {
                    return Err(place.type_error(format_args!(
                        "{} has dtype {} but this optimizer keeps {}",
                        role.describe(),
                        array.element,
                        self.policy.describe(state.param())
                    )));
                }
            }
            cache.state = Some(state);
        }
        Ok(Some(TorchRead {
            counter,
            grad: grad_layout,
        }))
    }
}

#[pymethods]
impl TorchStepPlan {
    #[new]
    #[pyo3(signature = (*, state_dtype = None, stochastic_rounding = None))]
    fn new(state_dtype: Option<&str>, stochastic_rounding: Option<bool>) -> PyResult<Self> {
        let kind = state_kind(state_dtype)?;
        Ok(TorchStepPlan {
            policy: StatePolicy::new(kind, false, stochastic_rounding)?,
            groups: Vec::new(),
            buffers: StepBuffers::default(),
        })
    }

    /// Whether this plan rounds the state stochastically: ``stochastic_rounding`` as given, or
    /// with ``None``, whether the state is bfloat16 or 8-bit.
    #[getter]
    fn stochastic_rounding(&self) -> bool {
        self.policy.stochastic_rounding
    }

    /// One Adamax step over every parameter of ``param_groups`` that has a gradient, with the
    /// state in ``state`` (``optimizer.state``) and ``hyperparameters[g]`` for group ``g``.
    /// Returns ``None``; or, when some parameters with a gradient have no state yet, their
    /// ``(group, index)`` pairs, having changed nothing.
    fn step<'py>(
        slf: &Bound<'py, Self>,
        param_groups: &Bound<'py, PyAny>,
        state: &Bound<'py, PyAny>,
        hyperparameters: Vec<PyRef<'py, PyHyperparameters>>,
    ) -> PyResult<Option<Vec<(usize, usize)>>> {
        guarded(|| {
            one_step_at_a_time(slf, "optimizer", |plan| {
                plan.run(
                    slf.py(),
                    param_groups,
                    state,
                    hyperparameters
                        .iter()
                        .map(|h| plan.policy.apply(h.0))
                        .collect(),
                )
            })
        })
    }
}

impl TorchStepPlan {
    fn run<'py>(
        &mut self,
        py: Python<'py>,
        param_groups: &Bound<'py, PyAny>,
        state: &Bound<'py, PyAny>,
        hyperparameters: Vec<Hyperparameters>,
    ) -> PyResult<Option<Vec<(usize, usize)>>> {
        let reader = reader(py)?;
        let Ok(groups) = param_groups.cast::<PyList>() else {
            return Err(PyTypeError::new_err(format!(
                "param_groups must be a list of dicts, got {}",
                type_name(param_groups)
            )));
        };
        if hyperparameters.len() != groups.len() {
            return Err(PyValueError::new_err(format!(
                "{} hyperparameter sets for {} parameter groups",
                hyperparameters.len(),
                groups.len()
            )));
        }
        self.groups.resize_with(groups.len(), Vec::new);
        self.groups.truncate(groups.len());
        let get = pyo3::intern!(py, "get");
        let grad_name = pyo3::intern!(py, "grad");

        // 1. Every parameter with a gradient, and its state; stop (changing nothing) if some have
        //    none yet.
        let mut found: Vec<Found<'py>> = Vec::new();
        let mut missing = Vec::new();
        let mut entries = state
            .cast::<PyDict>()
            .ok()
            .map(|d| StateCursor::new(d.clone()));
        for (g, group) in groups.iter().enumerate() {
            let params = group.get_item("params").map_err(|_| {
                PyValueError::new_err(format!("group {g}: a parameter group needs a 'params' key"))
            })?;
            let params: Vec<Bound<'py, PyAny>> =
                match (params.cast::<PyList>(), params.cast::<PyTuple>()) {
                    (Ok(list), _) => list.iter().collect(),
                    (_, Ok(tuple)) => tuple.iter().collect(),
                    _ => {
                        return Err(PyTypeError::new_err(format!(
                            "group {g}: 'params' must be a list of tensors, got {}",
                            type_name(&params)
                        )))
                    }
                };
            let caches = &mut self.groups[g];
            caches.resize_with(params.len(), TorchCache::default);
            caches.truncate(params.len());
            for (index, (param, cache)) in params.into_iter().zip(caches.iter_mut()).enumerate() {
                let place = Place { group: g, index };
                if !cache.param.as_ref().is_some_and(|p| p.is(&param)) {
                    *cache = TorchCache {
                        param: Some(param.clone().unbind()),
                        state: None,
                    };
                }
                // A tensor's `grad` error (raised by a subclass's `grad` property, say) is its
                // own; anything else without a usable `grad` is not a tensor.
                let grad = param.getattr(grad_name).map_err(|e| {
                    if reader.is_tensor(&param) {
                        e
                    } else {
                        let error = place.type_error(format_args!(
                            "expected a torch.Tensor parameter, got {}",
                            type_name(&param)
                        ));
                        error.set_cause(py, Some(e));
                        error
                    }
                })?;
                if grad.is_none() {
                    if let Some(entries) = &mut entries {
                        entries.pass(&param);
                    }
                    continue;
                }
                // `optimizer.state` is a dict (torch's defaultdict): read it without `__missing__`,
                // which would insert an empty entry.
                let entry = match &mut entries {
                    Some(entries) => entries.get(&param)?,
                    None => Some(state.call_method1(get, (&param,))?).filter(|e| !e.is_none()),
                };
                let Some(entry) = entry else {
                    missing.push((g, index));
                    continue;
                };
                let empty = entry.len().map(|n| n == 0).unwrap_or(false);
                if empty {
                    missing.push((g, index));
                    continue;
                }
                found.push((place, param, grad, entry));
            }
        }
        if !missing.is_empty() {
            return Ok(Some(missing));
        }

        // 2. Each parameter's state tensors. Python code may still run here, before any memory
        //    is read.
        let mut objects = Vec::with_capacity(found.len());
        for (place, param, grad, entry) in found {
            objects.push(gather(place, param, grad, &entry)?);
        }

        // 3. Read and check every tensor's memory. From the first address read to the end of the
        //    step, no Python code runs that could free or move memory already read: torch
        //    function is off (see `torch_function`), so torch's methods run their C code only.
        //    A lazily negated or conjugated gradient is resolved into a new tensor, which runs
        //    torch (and so possibly Python code), and then everything is read again.
        let mut resolved = false;
        let (_torch_function_off, reads) = loop {
            let off = TorchFunctionOff::enter(py)?;
            let mut reads = Vec::with_capacity(objects.len());
            let mut lazy = Vec::new();
            for (i, o) in objects.iter().enumerate() {
                match self.read_objects(reader, o, !resolved)? {
                    Some(read) => reads.push(read),
                    None => lazy.push(i),
                }
            }
            if lazy.is_empty() {
                break (off, reads);
            }
            drop(off);
            for i in lazy {
                let o = &mut objects[i];
                o.grad = o
                    .grad
                    .call_method0(pyo3::intern!(py, "resolve_conj"))?
                    .call_method0(pyo3::intern!(py, "resolve_neg"))?;
            }
            resolved = true;
        };
        let mut checked = self.buffers.tensors();
        for (o, read) in objects.iter().zip(&reads) {
            let state = self.groups[o.place.group][o.place.index]
                .state
                .as_ref()
                .ok_or_else(|| super::errors::internal("a tensor without its checked state"))?;
            // `LikeParam` was decided against the parameter's description read in this call,
            // which `state` holds.
            let grad = read.grad.as_array();
            // SAFETY: `state` was compared with the descriptions read in this call from the
            // parameter and state tensors that `objects` holds, and `grad` read from the gradient
            // it holds, with no Python code run since on this thread (torch function is off); they
            // stay alive until the end of this function, after the step has run. The GIL is let go
            // while they are read (torch's `is_neg` releases it) and while the update runs: like
            // any torch kernel, the step assumes no other thread resizes or re-points them
            // meanwhile.
            let one = unsafe {
                CheckedTensor::new(
                    state,
                    grad,
                    o.place.group,
                    StepNumber::Counted(read.counter),
                )
            };
            checked.push(one.map_err(|e| o.place.tensor_error(e))?);
        }
        let places: Vec<Place> = objects.iter().map(|o| o.place).collect();
        let mut step = StepMemory::new(checked, &hyperparameters, &mut self.buffers)
            .map_err(|c| conflict_error(&places, c))?;

        // 4. Claim the memory, read the step counts, run, write the counts, release.
        let ran = run_step(py, &mut step, Adamax, &mut self.buffers);
        step.finish(&mut self.buffers);
        ran.map_err(|error| match error {
            RunError::NotACount { index } => not_a_count(places[index]),
            RunError::Python(error) => error,
        })?;

        // Then tell autograd the parameters changed in place, as torch's own in-place updates do.
        if !objects.is_empty() {
            let params: Vec<&Bound<'_, PyAny>> = objects.iter().map(|o| &o.param).collect();
            tell_autograd(py, &params)?;
        }
        Ok(None)
    }
}
