//! The stateless entry point: one step over lists of arrays the caller owns
//! (`adamax_rs.functional.adamax`), and the bandwidth probe over the same.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

use crate::engine::buffers::StepBuffers;
use crate::engine::step::{CheckedTensor, GradArray, StepMemory, StepNumber};
use crate::kernel::{Adamax, Hyperparameters, Update, MAX_STEP};
use crate::probe::BandwidthProbe;

use super::arrays::{state_and_grad, TensorObjects};
use super::errors::{conflict_error, guarded, Place};
use super::hyperparameters::PyHyperparameters;
use super::run::run_step;

fn items<'py>(list: &Bound<'py, PyAny>, what: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if list.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a sequence of arrays, got str"
        )));
    }
    list.try_iter()
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "{what} must be a sequence, got {}",
                super::ndarray::type_name(list)
            ))
        })?
        .collect()
}

fn step_number(value: &Bound<'_, PyAny>, index: usize) -> PyResult<u64> {
    let place = Place { group: 0, index };
    if value.is_instance_of::<PyBool>() {
        return Err(place.type_error("steps must be integers, got bool"));
    }
    let t = super::state::step_count(value, &format!("{place}: ")).map_err(|e| {
        let py = value.py();
        if e.is_instance_of::<PyTypeError>(py) {
            place.type_error(format_args!(
                "steps must be integers, got {}",
                super::ndarray::type_name(value)
            ))
        } else {
            // The state's rule says 0 is a count; a step number starts at 1.
            let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
            let shown = if shown.len() > 40 {
                format!("{}...", shown.chars().take(37).collect::<String>())
            } else {
                shown
            };
            place.value_error(format_args!(
                "step must be between 1 and 2**53, got {shown}"
            ))
        }
    })?;
    if t == 0 || t > MAX_STEP {
        return Err(place.value_error(format_args!("step must be between 1 and 2**53, got {t}")));
    }
    Ok(t)
}

/// The lists a stateless step takes, as Python gave them (`None` for an optional list left out).
struct ArrayLists<'a, 'py> {
    params: &'a Bound<'py, PyAny>,
    grads: &'a Bound<'py, PyAny>,
    exp_avgs: &'a Bound<'py, PyAny>,
    exp_infs: &'a Bound<'py, PyAny>,
    steps: Option<&'a Bound<'py, PyAny>>,
    masters: Option<&'a Bound<'py, PyAny>>,
    exp_avg_scales: Option<&'a Bound<'py, PyAny>>,
    exp_inf_scales: Option<&'a Bound<'py, PyAny>>,
}

/// One step of `rule` over lists of arrays, all checked before any is written.
fn arrays_step<'py, U: Update>(
    py: Python<'py>,
    lists: ArrayLists<'_, 'py>,
    hyperparameters: Hyperparameters,
    rule: U,
) -> PyResult<()> {
    let params = items(lists.params, "params")?;
    let n = params.len();
    let mut read = Vec::new();
    for (list, what) in [
        (Some(lists.grads), "grads"),
        (Some(lists.exp_avgs), "exp_avgs"),
        (Some(lists.exp_infs), "exp_infs"),
        (lists.steps, "steps"),
        (lists.masters, "masters"),
        (lists.exp_avg_scales, "exp_avg_scales"),
        (lists.exp_inf_scales, "exp_inf_scales"),
    ] {
        let values = match list {
            Some(l) if !l.is_none() => Some(items(l, what)?),
            _ => None,
        };
        if let Some(v) = &values {
            if v.len() != n {
                return Err(PyValueError::new_err(format!(
                    "{what} has {} entries but there are {n} parameters",
                    v.len()
                )));
            }
        }
        read.push(values);
    }
    let [grads, exp_avgs, exp_infs, steps, masters, avg_scales, inf_scales]: [Option<
        Vec<Bound<'py, PyAny>>,
    >; 7] = read
        .try_into()
        .map_err(|_| super::errors::internal("seven lists"))?;
    if avg_scales.is_some() != inf_scales.is_some() {
        return Err(PyValueError::new_err(
            "give both exp_avg_scales and exp_inf_scales (8-bit state), or neither",
        ));
    }
    let (grads, exp_avgs, exp_infs) = (
        grads.unwrap_or_default(),
        exp_avgs.unwrap_or_default(),
        exp_infs.unwrap_or_default(),
    );
    let mut objects = Vec::with_capacity(n);
    for (index, data) in params.into_iter().enumerate() {
        if grads[index].is_none() {
            continue;
        }
        let step = match &steps {
            Some(s) => step_number(&s[index], index)?,
            None => 1,
        };
        let present = |list: &Option<Vec<Bound<'py, PyAny>>>| -> Option<Bound<'py, PyAny>> {
            list.as_ref()
                .map(|l| l[index].clone())
                .filter(|m| !m.is_none())
        };
        let scales = match (present(&avg_scales), present(&inf_scales)) {
            (Some(a), Some(b)) => Some([a, b]),
            _ => None,
        };
        objects.push(TensorObjects {
            place: Place { group: 0, index },
            data,
            grad: grads[index].clone(),
            exp_avg: exp_avgs[index].clone(),
            exp_inf: exp_infs[index].clone(),
            master: present(&masters),
            scales,
            group: 0,
            step,
        });
    }
    let mut described = Vec::with_capacity(objects.len());
    for o in &objects {
        described.push(state_and_grad(o, None)?);
    }
    let mut tensors = Vec::with_capacity(objects.len());
    for (o, (state, grad)) in objects.iter().zip(&described) {
        // SAFETY: `state` and `grad` were read just above from the headers of the arrays in `o`,
        // which `objects` keeps alive until this function returns, after the step has run.
        let checked = unsafe {
            CheckedTensor::new(
                state,
                GradArray::Other(grad),
                o.group,
                StepNumber::Given(o.step),
            )
        };
        tensors.push(checked.map_err(|e| o.place.tensor_error(e))?);
    }
    let places: Vec<Place> = objects.iter().map(|o| o.place).collect();
    let mut buffers = StepBuffers::default();
    let mut step = StepMemory::new(tensors, &[hyperparameters], &mut buffers)
        .map_err(|c| conflict_error(&places, c))?;
    Ok(run_step(py, &mut step, rule, &mut buffers)?)
}

/// One Adamax step in place over lists of arrays (see ``adamax_rs.functional.adamax``).
#[pyfunction]
#[pyo3(signature = (params, grads, exp_avgs, exp_infs, steps, *, hyperparameters, masters = None, exp_avg_scales = None, exp_inf_scales = None, stochastic_rounding = true))]
#[allow(clippy::too_many_arguments)]
pub fn adamax_arrays(
    py: Python<'_>,
    params: &Bound<'_, PyAny>,
    grads: &Bound<'_, PyAny>,
    exp_avgs: &Bound<'_, PyAny>,
    exp_infs: &Bound<'_, PyAny>,
    steps: &Bound<'_, PyAny>,
    hyperparameters: PyRef<'_, PyHyperparameters>,
    masters: Option<&Bound<'_, PyAny>>,
    exp_avg_scales: Option<&Bound<'_, PyAny>>,
    exp_inf_scales: Option<&Bound<'_, PyAny>>,
    stochastic_rounding: bool,
) -> PyResult<()> {
    let h = Hyperparameters {
        stochastic_rounding,
        ..hyperparameters.0
    };
    let lists = ArrayLists {
        params,
        grads,
        exp_avgs,
        exp_infs,
        steps: Some(steps),
        masters,
        exp_avg_scales,
        exp_inf_scales,
    };
    guarded(|| arrays_step(py, lists, h, Adamax))
}

/// Moves exactly the memory an Adamax step over these arrays moves, with trivial arithmetic
/// (a benchmark tool: its time is the floor for a one-pass optimizer on this machine).
#[pyfunction]
#[pyo3(signature = (params, grads, exp_avgs, exp_infs, /, *, exp_avg_scales = None, exp_inf_scales = None))]
pub fn bandwidth_probe(
    py: Python<'_>,
    params: &Bound<'_, PyAny>,
    grads: &Bound<'_, PyAny>,
    exp_avgs: &Bound<'_, PyAny>,
    exp_infs: &Bound<'_, PyAny>,
    exp_avg_scales: Option<&Bound<'_, PyAny>>,
    exp_inf_scales: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let lists = ArrayLists {
        params,
        grads,
        exp_avgs,
        exp_infs,
        steps: None,
        masters: None,
        exp_avg_scales,
        exp_inf_scales,
    };
    guarded(|| arrays_step(py, lists, Hyperparameters::default(), BandwidthProbe))
}
