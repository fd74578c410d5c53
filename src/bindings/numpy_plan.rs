//! The numpy optimizer's step plan: what `adamax_rs.Adamax.step` runs.
//!
//! It reads the optimizer's `param_groups` and `state` itself, by name, and keeps per tensor what
//! it checked last time: the parameter object, its state entry, and the checked descriptions of
//! its parameter and state arrays. A step compares the parameter array's live header with its
//! description (a few loads), relies on the state's version for the state arrays, and reads only
//! the gradient in full, so a step over many small tensors costs little per tensor. Anything that
//! changed (a rebound `p.data`, a new group, a replaced state entry, an array reshaped in place)
//! is simply read and checked again. A step that ran Python code after its first read (a getter,
//! a finalizer) compares every array again before the update (see `step_with`).
//!
//! The step is all or nothing, interrupts included: everything is checked and every new state
//! array allocated before any memory is written, and the step counts and new entries are
//! committed right after the update, in Rust, with no Python code in between where a
//! `KeyboardInterrupt` could land.

use std::sync::Arc;

use pyo3::exceptions::{PyAttributeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::engine::buffers::StepBuffers;
use crate::engine::memory::Element;
use crate::engine::step::{CheckedTensor, Role, StepMemory, StepNumber, TensorState};
use crate::kernel::blockwise::BLOCK;
use crate::kernel::{Adamax, MAX_STEP};

use super::arrays::{
    problem_error, read_grad, state_and_grad, state_arrays_still_described, still_describes,
    GradRead, TensorObjects,
};
use super::errors::{conflict_error, guarded, Place};
use super::hyperparameters::{from_group, GroupValues};
use super::ndarray::header_matches;
use super::ndarray::{numpy, read_array, type_name};
use super::parameter::{data_and_grad, fast_fields};
use super::policy::{state_kind, StateKind, StatePolicy};
use super::reentry::one_step_at_a_time;
use super::run::run_step;
use super::state::{ParameterState, StateEntry, StateKeys};

/// A parameter's state arrays and step count, as its entry held them at the last step: valid
/// while nothing in the optimizer's state changed from Python (its version).
struct HeldState {
    exp_avg: Py<PyAny>,
    exp_inf: Py<PyAny>,
    master: Option<Py<PyAny>>,
    /// The block scales of 8-bit state.
    scales: Option<[Py<PyAny>; 2]>,
    step: u64,
}

/// What the plan remembers of one parameter position. Holding the objects keeps the memory the
/// checked `state` describes alive and in place, and their addresses meaningful for identity.
#[derive(Default)]
struct ParamCache {
    param: Option<Py<PyAny>>,
    entry: Option<Py<StateEntry>>,
    data: Option<Py<PyAny>>,
    held: Option<HeldState>,
    /// Boxed: it is large, and keeping it out of line keeps a step's pass over thousands of
    /// these caches within a few cache lines each.
    state: Option<Box<TensorState>>,
}

#[derive(Default)]
struct GroupCache {
    values: GroupValues,
    params: Vec<ParamCache>,
}

/// A tensor of this step.
struct Stepped {
    place: Place,
    /// Holds the gradient for the step (the cache holds everything else).
    grad: Py<PyAny>,
    step: u64,
    /// State made by this step for a parameter stepped for the first time: its arrays, and the
    /// entry they go into (new, or the parameter's empty one). Boxed: rare, and large.
    created: Option<Box<(HeldState, Py<StateEntry>, bool)>>,
}

/// What a step's commit lets go of, dropped after the commit (see `step_with`).
#[derive(Default)]
struct Released {
    objects: Vec<Py<PyAny>>,
    held: Vec<HeldState>,
}

/// Where the state's arrays sit in an entry (positions in the state's keys).
#[derive(Clone, Copy)]
struct Slots {
    exp_avg: Option<usize>,
    exp_inf: Option<usize>,
    master: Option<usize>,
    exp_avg_scale: Option<usize>,
    exp_inf_scale: Option<usize>,
}

/// The cached step of a numpy optimizer (``adamax_rs.Adamax`` keeps one).
/// ``step(param_groups, state)`` updates every parameter that has a gradient.
#[pyclass(module = "adamax_rs._core", name = "StepPlan")]
pub struct StepPlan {
    policy: StatePolicy,
    state: Option<Py<ParameterState>>,
    state_version: u64,
    groups: Vec<GroupCache>,
    /// Kept between steps: the written set, and the step's vectors (see `engine::buffers`).
    buffers: StepBuffers,
    grads: Vec<GradRead>,
    places: Vec<Place>,
    stepped: Vec<Stepped>,
}

/// A new state for a parameter whose data is `data`: zeros of the state's dtype in the
/// parameter's memory layout (so the step stays on the flat path), block scales for 8-bit state,
/// and the master copy if one is kept.
fn new_state(data: &Bound<'_, PyAny>, policy: &StatePolicy, place: Place) -> PyResult<HeldState> {
    let py = data.py();
    let param = read_array(data).map_err(|p| problem_error(place, Role::Param, p, None))?;
    let np = numpy(py)?;
    let state = policy.state_element(&param);
    if state == Element::BFloat16 {
        // numpy knows bfloat16 once ml_dtypes is imported.
        py.import("ml_dtypes")?;
    }
    let dtype = np.call_method1("dtype", (state.name(),))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", &dtype)?;
    let zeros_like = np.getattr("zeros_like")?;
    let exp_avg = zeros_like.call((data,), Some(&kwargs))?.unbind();
    let exp_inf = zeros_like.call((data,), Some(&kwargs))?.unbind();
    let scales = if state == Element::UInt8 {
        let blocks = param.len().unwrap_or(0).div_ceil(BLOCK);
        let zeros = |_: usize| -> PyResult<Py<PyAny>> {
            Ok(np.call_method1("zeros", (blocks, "float32"))?.unbind())
        };
        Some([zeros(0)?, zeros(1)?])
    } else {
        None
    };
    let master = if policy.wants_master(param.element) {
        let master_dtype = np.call_method1("dtype", (policy.master_element(&param).name(),))?;
        let order = PyDict::new(py);
        order.set_item("order", "K")?;
        Some(
            data.call_method("astype", (&master_dtype,), Some(&order))?
                .unbind(),
        )
    } else {
        None
    };
    Ok(HeldState {
        exp_avg,
        exp_inf,
        master,
        scales,
        step: 0,
    })
}

fn params_of<'py>(group: &Bound<'py, PyAny>, g: usize) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let params = group
        .get_item(pyo3::intern!(group.py(), "params"))
        .map_err(|_| {
            PyValueError::new_err(format!("group {g}: a parameter group needs a 'params' key"))
        })?;
    if let Ok(list) = params.cast::<PyList>() {
        return Ok(list.iter().collect());
    }
    if let Ok(tuple) = params.cast::<PyTuple>() {
        return Ok(tuple.iter().collect());
    }
    Err(PyTypeError::new_err(format!(
        "group {g}: 'params' must be a list of parameters, got {}",
        type_name(&params)
    )))
}

/// Whether the held state arrays' headers are still those `state` checked: an array moved,
/// retyped or made read-only in place between steps (`resize(refcheck=False)`,
/// `ndarray.__setstate__`, assigning `.dtype` or `.flags.writeable`) keeps the state's version,
/// and is read and checked again instead. A few loads per array.
fn held_headers_match(py: Python<'_>, held: &HeldState, state: &TensorState) -> bool {
    state_arrays_still_described(
        state,
        held.exp_avg.bind(py),
        held.exp_inf.bind(py),
        held.master.as_ref().map(|m| m.bind(py)),
        held.scales.as_ref().map(|[a, b]| [a.bind(py), b.bind(py)]),
    )
}

/// The arrays of a held state, as objects.
fn held_objects<'py>(
    py: Python<'py>,
    place: Place,
    data: &Bound<'py, PyAny>,
    grad: &Bound<'py, PyAny>,
    held: &HeldState,
) -> TensorObjects<'py> {
    TensorObjects {
        place,
        data: data.clone(),
        grad: grad.clone(),
        exp_avg: held.exp_avg.bind(py).clone(),
        exp_inf: held.exp_inf.bind(py).clone(),
        master: held.master.as_ref().map(|m| m.bind(py).clone()),
        scales: held
            .scales
            .as_ref()
            .map(|[a, b]| [a.bind(py).clone(), b.bind(py).clone()]),
        group: place.group,
        step: held.step + 1,
    }
}

/// Reads a parameter's entry: its arrays and step count, `None` when it is empty (never stepped).
fn read_entry(
    py: Python<'_>,
    entry: &StateEntry,
    slots: Slots,
    wants_master: bool,
    place: Place,
) -> PyResult<Option<HeldState>> {
    let (step, [exp_avg, exp_inf, master, avg_scale, inf_scale]) = entry.data.read(py, |d| {
        let at = |slot: Option<usize>| {
            slot.and_then(|i| d.arrays[i].as_ref())
                .map(|a| a.clone_ref(py))
        };
        (
            d.step,
            [
                at(slots.exp_avg),
                at(slots.exp_inf),
                at(slots.master),
                at(slots.exp_avg_scale),
                at(slots.exp_inf_scale),
            ],
        )
    });
    let nothing = [&exp_avg, &exp_inf, &master, &avg_scale, &inf_scale]
        .iter()
        .all(|a| a.is_none());
    if step.is_none() && nothing {
        return Ok(None);
    }
    let present = [
        ("step", step.is_some()),
        ("exp_avg", exp_avg.is_some()),
        ("exp_inf", exp_inf.is_some()),
        ("master", master.is_some() || !wants_master),
        ("exp_inf_scale", inf_scale.is_some() || avg_scale.is_none()),
        ("exp_avg_scale", avg_scale.is_some() || inf_scale.is_none()),
    ];
    let missing: Vec<String> = present
        .iter()
        .filter(|(_, here)| !here)
        .map(|(name, _)| format!("'{name}'"))
        .collect();
    if !missing.is_empty() {
        return Err(place.value_error(format_args!("its state lacks {}", missing.join(", "))));
    }
    if master.is_some() && !wants_master {
        return Err(place.value_error(
            "its state has a 'master' copy, which only float16 and bfloat16 parameters of an \
             optimizer with master_weights=True keep",
        ));
    }
    let (Some(step), Some(exp_avg), Some(exp_inf)) = (step, exp_avg, exp_inf) else {
        unreachable!("checked just above")
    };
    let scales = match (avg_scale, inf_scale) {
        (Some(a), Some(b)) => Some([a, b]),
        _ => None,
    };
    Ok(Some(HeldState {
        exp_avg,
        exp_inf,
        master,
        scales,
        step,
    }))
}

/// Everything one step needs besides the caches: the state, how its entries are laid out, the
/// policy, and whether the state changed from Python since the last step.
struct StepContext<'a> {
    state: &'a ParameterState,
    slots: Slots,
    policy: StatePolicy,
    relookup: bool,
    /// The state's version when the step began (see `ParameterState::current_version`; no
    /// other state ever has it).
    version_at_start: u64,
}

/// One parameter position: `None` when it has no gradient this step; otherwise its gradient's
/// description (pushed to `grads`) after bringing the cache up to date with its parameter and
/// state. Makes the state of a parameter stepped for the first time (not yet stored anywhere).
///
/// Sets `python_may_have_run` unless it took the fast path, which runs no Python code and
/// allocates no Python object.
fn prepare<'py>(
    cache: &mut ParamCache,
    context: &StepContext<'_>,
    place: Place,
    param: Bound<'py, PyAny>,
    grads: &mut Vec<GradRead>,
    python_may_have_run: &mut bool,
) -> PyResult<Option<Stepped>> {
    let py = param.py();
    if !cache.param.as_ref().is_some_and(|p| p.is(&param)) {
        // Dropping what the cache held may run finalizers.
        *python_may_have_run = true;
        *cache = ParamCache {
            param: Some(param.clone().unbind()),
            ..ParamCache::default()
        };
    }
    // The fast path: an exact Parameter whose data is the array checked before, with the state
    // held unchanged since (its version), only needs its gradient read.
    let cached_data = cache.data.as_ref().map_or(0, |d| d.as_ptr() as usize);
    if let Some((same_data, grad)) = fast_fields(&param, cached_data) {
        let Some(grad) = grad else { return Ok(None) };
        if let (true, false, Some(held), Some(state)) =
            (same_data, context.relookup, &cache.held, &cache.state)
        {
            let data = cache.data.as_ref().expect("compared above").bind(py);
            if header_matches(data, state.param()) && held_headers_match(py, held, state) {
                grads.push(read_grad(place, data, &grad, state.param())?);
                return Ok(Some(Stepped {
                    place,
                    grad: grad.unbind(),
                    step: held.step + 1,
                    created: None,
                }));
            }
        }
    }
    // The slow path: getters, entry reads, new state (allocations, so the garbage collector).
    *python_may_have_run = true;
    let (data, grad) = data_and_grad(&param).map_err(|e| {
        if e.is_instance_of::<PyAttributeError>(py) {
            place.type_error(format_args!(
                "expected a Parameter (an object with .data and .grad), got {}",
                type_name(&param)
            ))
        } else {
            e
        }
    })?;
    let Some(grad) = grad else {
        return Ok(None);
    };
    if context.relookup || cache.entry.is_none() {
        cache.entry = context.state.entry(py, &param);
        cache.held = None;
    }
    let policy = &context.policy;
    let wants_master =
        policy.master_weights && read_array(&data).is_ok_and(|r| policy.wants_master(r.element));
    if cache.held.is_none() {
        if let Some(entry) = &cache.entry {
            cache.held = read_entry(py, entry.get(), context.slots, wants_master, place)?;
        }
    }
    if !cache.data.as_ref().is_some_and(|d| d.is(&data)) {
        cache.data = Some(data.clone().unbind());
    }
    let (objects, created) = match &cache.held {
        Some(held) => {
            if held.step >= MAX_STEP {
                return Err(place.value_error(format_args!(
                    "its step count {} cannot advance past 2**53",
                    held.step
                )));
            }
            (held_objects(py, place, &data, &grad, held), None)
        }
        None => {
            let held = new_state(&data, policy, place)?;
            let (entry, is_new) = match &cache.entry {
                Some(e) => (e.clone_ref(py), false),
                None => (Py::new(py, context.state.new_entry())?, true),
            };
            (
                held_objects(py, place, &data, &grad, &held),
                Some(Box::new((held, entry, is_new))),
            )
        }
    };
    let current = cache
        .state
        .as_ref()
        .filter(|s| still_describes(s, &objects));
    let grad_raw = match current {
        Some(state) => read_grad(place, &data, &grad, state.param())?,
        None => {
            cache.state = None;
            let (state, grad_raw) = state_and_grad(&objects, Some(policy))?;
            cache.state = Some(Box::new(state));
            GradRead::Other(Box::new(grad_raw))
        }
    };
    grads.push(grad_raw);
    Ok(Some(Stepped {
        place,
        grad: grad.unbind(),
        step: objects.step,
        created,
    }))
}

#[pymethods]
impl StepPlan {
    #[new]
    #[pyo3(signature = (*, state_dtype = None, master_weights = false, stochastic_rounding = None))]
    fn new(
        state_dtype: Option<&str>,
        master_weights: bool,
        stochastic_rounding: Option<bool>,
    ) -> PyResult<Self> {
        let kind = state_kind(state_dtype)?;
        Ok(StepPlan {
            policy: StatePolicy::new(kind, master_weights, stochastic_rounding)?,
            state: None,
            state_version: 0,
            groups: Vec::new(),
            buffers: StepBuffers::default(),
            grads: Vec::new(),
            places: Vec::new(),
            stepped: Vec::new(),
        })
    }

    /// Whether this plan rounds the state stochastically: ``stochastic_rounding`` as given, or
    /// with ``None``, whether the state is bfloat16 or 8-bit.
    #[getter]
    fn stochastic_rounding(&self) -> bool {
        self.policy.stochastic_rounding
    }

    /// One Adamax step over every parameter of ``param_groups`` (a list of group dicts) that has
    /// a gradient, with state in ``state`` (a ``ParameterState``). Raises ``TypeError`` or
    /// ``ValueError`` naming the group and parameter, and then nothing has changed.
    fn step(
        slf: &Bound<'_, Self>,
        param_groups: &Bound<'_, PyAny>,
        state: &Bound<'_, ParameterState>,
    ) -> PyResult<()> {
        guarded(|| {
            one_step_at_a_time(slf, "optimizer", |plan| {
                plan.run(slf.py(), param_groups, state)
            })
        })
    }
}

impl StepPlan {
    /// Refuses a state whose entries cannot hold every array this plan keeps: the step would
    /// otherwise update moments that no entry holds, and the next step start them again.
    fn check_schema(&self, slots: Slots, keys: &StateKeys) -> PyResult<()> {
        let blockwise = self.policy.kind == StateKind::Blockwise8;
        let needed = [
            ("exp_avg", slots.exp_avg.is_some()),
            ("exp_inf", slots.exp_inf.is_some()),
            (
                "master",
                slots.master.is_some() || !self.policy.master_weights,
            ),
            ("exp_avg_scale", slots.exp_avg_scale.is_some() || !blockwise),
            ("exp_inf_scale", slots.exp_inf_scale.is_some() || !blockwise),
        ];
        let missing: Vec<String> = needed
            .iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| format!("'{name}'"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(PyValueError::new_err(format!(
            "state: its entries cannot hold {}, which this step keeps for each parameter (its \
             keys are {:?})",
            missing.join(", "),
            keys.0
        )))
    }

    fn run(
        &mut self,
        py: Python<'_>,
        param_groups: &Bound<'_, PyAny>,
        state: &Bound<'_, ParameterState>,
    ) -> PyResult<()> {
        let Ok(groups) = param_groups.cast::<PyList>() else {
            return Err(PyTypeError::new_err(format!(
                "param_groups must be a list of dicts, got {}",
                type_name(param_groups)
            )));
        };
        if !self.state.as_ref().is_some_and(|s| s.is(state)) {
            self.groups.clear();
            self.buffers.forget_writes();
            self.state = Some(state.clone().unbind());
        }
        let state_ref = state.get();
        let keys = Arc::clone(state_ref.schema());
        let position = |name: &str| keys.0.iter().position(|k| k == name);
        let slots = Slots {
            exp_avg: position("exp_avg"),
            exp_inf: position("exp_inf"),
            master: position("master"),
            exp_avg_scale: position("exp_avg_scale"),
            exp_inf_scale: position("exp_inf_scale"),
        };
        self.check_schema(slots, &keys)?;
        let version_at_start = state_ref.current_version();
        let context = StepContext {
            state: state_ref,
            slots,
            policy: self.policy,
            relookup: version_at_start != self.state_version,
            version_at_start,
        };
        self.groups.resize_with(groups.len(), GroupCache::default);
        self.groups.truncate(groups.len());

        // 1. Read every group's hyperparameters and every tensor's parameter and gradient, check
        //    them (reusing the checks of unchanged parameters and state), and make missing state.
        let mut hyperparameters = Vec::with_capacity(groups.len());
        let mut stepped = std::mem::take(&mut self.stepped);
        let mut grads = std::mem::take(&mut self.grads);
        grads.clear();
        let outcome = self.step_with(
            py,
            groups,
            &context,
            &mut hyperparameters,
            &mut stepped,
            &mut grads,
        );
        stepped.clear();
        self.stepped = stepped;
        self.grads = grads;
        outcome
    }

    /// The body of a step; `stepped` and `grads` are the plan's vectors, lent for the step.
    fn step_with<'py>(
        &mut self,
        py: Python<'py>,
        groups: &Bound<'py, PyList>,
        context: &StepContext<'_>,
        hyperparameters: &mut Vec<crate::kernel::Hyperparameters>,
        stepped: &mut Vec<Stepped>,
        grads: &mut Vec<GradRead>,
    ) -> PyResult<()> {
        let state_ref = context.state;
        // 1a. Every group's hyperparameters and parameter list, before the first array is read:
        //     reading them may run Python code (a value's `__float__`, a dict subclass's
        //     `__getitem__`, or a key's `__eq__` when a lookup meets a colliding hash, even in an
        //     exact dict), which could move or free an array already read. The parameter caches
        //     of positions that went away are dropped here too, for the finalizers that runs.
        let mut lists = Vec::with_capacity(self.groups.len());
        // (Groups added by such code wait for the next step; `run` sized the caches.)
        for (group, (g, cache)) in groups.iter().zip(self.groups.iter_mut().enumerate()) {
            let (h, _) = from_group(&group, g, &mut cache.values)?;
            hyperparameters.push(context.policy.apply(h));
            let params = params_of(&group, g)?;
            cache.params.truncate(params.len());
            lists.push(params);
        }
        // Whether Python code may have run since the first array was read (see 1b). The step
        // goes over the lists as 1a read them: a parameter that Python code run later removes
        // from its group is still stepped, as if the removal came just after the step.
        let mut python_may_have_run = false;
        for (g, params) in lists.into_iter().enumerate() {
            let Some(cache) = self.groups.get_mut(g) else {
                return Err(super::errors::internal(
                    "a parameter group without its cache",
                ));
            };
            cache.params.resize_with(params.len(), ParamCache::default);
            for (index, (param, slot)) in
                params.into_iter().zip(cache.params.iter_mut()).enumerate()
            {
                let place = Place { group: g, index };
                let prepared =
                    prepare(slot, context, place, param, grads, &mut python_may_have_run);
                if let Some(s) = prepared? {
                    stepped.push(s);
                }
            }
        }

        // 1b. Python code may have run after a tensor's arrays were read: a later parameter's
        //     `data` or `grad` getter, a hyperparameter's `__float__`, a finalizer run by the
        //     garbage collector when new state was allocated. Such code could have moved an array's
        //     buffer (`resize(refcheck=False)`, `ndarray.__setstate__`). Then every tensor's arrays
        //     are compared with their checked descriptions once more, and its gradient read
        //     again, in a pass that runs no Python code and allocates no Python object, right
        //     before the update. A step that took only the fast path ran no Python code after
        //     its first read (the usual training step: this pass would cost about 40% more
        //     bookkeeping for small tensors).
        let recheck = if python_may_have_run {
            stepped.len()
        } else {
            0
        };
        for (s, grad) in stepped.iter().zip(grads.iter_mut()).take(recheck) {
            let cache = &self.groups[s.place.group].params[s.place.index];
            let held = match &s.created {
                Some(created) => Some(&created.0),
                None => cache.held.as_ref(),
            };
            let (Some(state), Some(data), Some(held)) = (&cache.state, &cache.data, held) else {
                return Err(super::errors::internal(
                    "a tensor without its checked arrays",
                ));
            };
            let data = data.bind(py);
            let objects = held_objects(py, s.place, data, s.grad.bind(py), held);
            if !still_describes(state, &objects) {
                return Err(s.place.value_error(
                    "its arrays' memory was moved after the step checked them (by \
                     resize(refcheck=False) or ndarray.__setstate__, for example from a getter \
                     or a finalizer that the step ran); nothing was changed",
                ));
            }
            *grad = read_grad(s.place, data, s.grad.bind(py), state.param())?;
        }

        // 2. The step's memory: every tensor, checked against its gradient; the claims.
        let mut tensors = self.buffers.tensors();
        for (s, grad) in stepped.iter().zip(grads.iter()) {
            let state = self.groups[s.place.group].params[s.place.index]
                .state
                .as_ref()
                .ok_or_else(|| super::errors::internal("a tensor without its checked state"))?;
            // SAFETY: `state` describes the arrays the cache holds for this tensor (its data array
            // and held or new state arrays), compared with their live headers during this call or
            // read from them when they were first held, and compared again (1b) after the last
            // Python code the step ran, if it ran any after the first read; holding them keeps
            // that memory alive. `grad` was read from the gradient that `stepped` holds, again
            // in 1b when it ran. Both outlive the step, which ends in this call. (Like any numpy
            // C function that releases the GIL, the update assumes no other thread moves a buffer
            // meanwhile; and a state buffer moved between steps with numpy's unsafe
            // `resize(refcheck=False)` or `ndarray.__setstate__` is outside what a step that runs
            // no Python code can see.)
            let checked = unsafe {
                CheckedTensor::new(
                    state,
                    grad.as_array(),
                    s.place.group,
                    StepNumber::Given(s.step),
                )
            };
            tensors.push(checked.map_err(|e| s.place.tensor_error(e))?);
        }
        self.places.clear();
        self.places.extend(stepped.iter().map(|s| s.place));
        let mut step = StepMemory::new(tensors, hyperparameters, &mut self.buffers)
            .map_err(|c| conflict_error(&self.places, c))?;

        // 3. Claim the memory, run, release.
        let ran = run_step(py, &mut step, Adamax, &mut self.buffers);
        step.finish(&mut self.buffers);
        ran?;

        // 4. Commit: step counts and new entries, without running any Python code. Whatever the
        //    commit lets go of (an array it replaces, an entry, a gradient held for the step) is
        //    kept in `released` and dropped only at the end: dropping the last reference to a
        //    Python object runs its finalizer, which must not find the commit half done, nor run
        //    while an entry's contents are borrowed.
        let slots = context.slots;
        // Python code may have changed the state since the step began (a later parameter's
        // getter, or another thread while the update ran without the GIL). Then each entry keeps
        // what was written into it, as if that write came just after the step: the step fills
        // only what is still empty and advances only counts still as it found them.
        let untouched = state_ref.current_version() == context.version_at_start;
        let mut released = Released::default();
        for s in stepped.drain(..) {
            let Stepped {
                place,
                grad,
                step,
                created,
            } = s;
            released.objects.push(grad);
            let cache = &mut self.groups[place.group].params[place.index];
            match created.map(|created| *created) {
                Some((held, entry, is_new)) => {
                    let arrays = [
                        (slots.exp_avg, Some(&held.exp_avg)),
                        (slots.exp_inf, Some(&held.exp_inf)),
                        (slots.master, held.master.as_ref()),
                        (slots.exp_avg_scale, held.scales.as_ref().map(|[a, _]| a)),
                        (slots.exp_inf_scale, held.scales.as_ref().map(|[_, b]| b)),
                    ];
                    let objects = &mut released.objects;
                    entry.get().data.update(py, |d| {
                        if untouched || d.step.is_none() {
                            d.step = Some(step);
                        }
                        for (slot, value) in arrays {
                            if let (Some(slot), Some(value)) = (slot, value) {
                                if untouched || d.arrays[slot].is_none() {
                                    objects.extend(d.arrays[slot].replace(value.clone_ref(py)));
                                }
                            }
                        }
                    });
                    let mut stored = true;
                    if is_new {
                        match &cache.param {
                            // A parameter given an entry while the step ran keeps that entry.
                            Some(param)
                                if untouched || state_ref.entry(py, param.bind(py)).is_none() =>
                            {
                                if let Some((p, e)) =
                                    state_ref.insert(param.bind(py), entry.clone_ref(py))
                                {
                                    released.objects.extend([p, e.into_any()]);
                                }
                            }
                            _ => stored = false,
                        }
                    }
                    if let Some(old) = cache.entry.replace(entry) {
                        released.objects.push(old.into_any());
                    }
                    let kept = (untouched && stored).then_some(HeldState { step, ..held });
                    if let Some(old) = std::mem::replace(&mut cache.held, kept) {
                        released.held.push(old);
                    }
                }
                None => {
                    if let Some(entry) = &cache.entry {
                        entry.get().data.update(py, |d| {
                            if untouched || d.step == Some(step - 1) {
                                d.step = Some(step);
                            }
                        });
                    }
                    if let Some(held) = &mut cache.held {
                        held.step = step;
                    }
                }
            }
        }
        // The state as the plan now knows it; when Python changed it during the step, the caches
        // are read again at the next step.
        if untouched {
            self.state_version = state_ref.current_version();
        }
        drop(released);
        Ok(())
    }
}
