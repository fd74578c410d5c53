//! What the numpy front end shares between its entry points: reading a tensor's ndarrays into
//! engine descriptions and checking them, with messages that name the array.

use pyo3::prelude::*;

use crate::engine::memory::{Element, RawArray};
use crate::engine::step::{check_gradient, GradArray, Role, TensorState};

use super::errors::Place;
use super::ndarray::{address_if_like, header_matches, read_array, ArrayProblem};
use super::policy::StatePolicy;

/// The ndarrays of one tensor for one step (holding them keeps their memory alive for the step),
/// and its step number.
pub struct TensorObjects<'py> {
    pub place: Place,
    pub data: Bound<'py, PyAny>,
    pub grad: Bound<'py, PyAny>,
    pub exp_avg: Bound<'py, PyAny>,
    pub exp_inf: Bound<'py, PyAny>,
    pub master: Option<Bound<'py, PyAny>>,
    /// The block scales of 8-bit state (exp_avg's, exp_inf's).
    pub scales: Option<[Bound<'py, PyAny>; 2]>,
    pub group: usize,
    pub step: u64,
}

const SUPPORTED: &str =
    "float16, bfloat16 (ml_dtypes), float32, float64, complex64 or complex128, \
                         native byte order";

/// The exception for an object that is not a usable array in the role `role`.
pub fn problem_error(
    place: Place,
    role: Role,
    problem: ArrayProblem,
    param: Option<Element>,
) -> PyErr {
    match (problem, role, param) {
        (ArrayProblem::NotAnArray(t), Role::Param, _) => {
            place.type_error(format_args!(".data must be a numpy.ndarray, got {t}"))
        }
        (ArrayProblem::NotAnArray(t), _, _) => place.type_error(format_args!(
            "{} must be a numpy.ndarray, got {t}",
            role.describe()
        )),
        (ArrayProblem::Dtype(d), Role::Param, _) => place.type_error(format_args!(
            "parameter dtype {d} is not supported ({SUPPORTED})"
        )),
        (ArrayProblem::Dtype(d), Role::Grad, Some(p)) => place.type_error(format_args!(
            "the gradient has dtype {d} but the parameter has dtype {p}"
        )),
        (ArrayProblem::Dtype(d), _, _) => place.type_error(format_args!(
            "{} has dtype {d}, which is not supported",
            role.describe()
        )),
    }
}

fn read(
    obj: &Bound<'_, PyAny>,
    place: Place,
    role: Role,
    param: Option<Element>,
) -> PyResult<RawArray> {
    read_array(obj).map_err(|p| problem_error(place, role, p, param))
}

/// The parameter and the gradient, read and checked against each other.
fn param_and_grad(objects: &TensorObjects<'_>) -> PyResult<(RawArray, RawArray)> {
    let place = objects.place;
    if objects.grad.is(&objects.data) {
        return Err(place.value_error("the gradient is the parameter array itself"));
    }
    let param = read(&objects.data, place, Role::Param, None)?;
    if param.element == Element::UInt8 {
        return Err(problem_error(
            place,
            Role::Param,
            ArrayProblem::Dtype("uint8".into()),
            None,
        ));
    }
    let grad = read(&objects.grad, place, Role::Grad, Some(param.element))?;
    check_gradient(&param, &grad).map_err(|e| place.tensor_error(e))?;
    Ok((param, grad))
}

/// Reads and checks a tensor's parameter, gradient and state from scratch. The gradient is
/// checked first, so that a gradient that does not match its parameter is reported as such;
/// then the engine's checks of the state, then `policy`'s rule about its dtypes.
pub fn state_and_grad(
    objects: &TensorObjects<'_>,
    policy: Option<&StatePolicy>,
) -> PyResult<(TensorState, RawArray)> {
    let place = objects.place;
    let (param, grad) = param_and_grad(objects)?;
    let element = Some(param.element);
    let exp_avg = read(&objects.exp_avg, place, Role::ExpAvg, element)?;
    let exp_inf = read(&objects.exp_inf, place, Role::ExpInf, element)?;
    let master = match &objects.master {
        Some(m) => Some(read(m, place, Role::Master, element)?),
        None => None,
    };
    let scales = match &objects.scales {
        Some([a, b]) => Some([
            read(a, place, Role::ExpAvgScale, element)?,
            read(b, place, Role::ExpInfScale, element)?,
        ]),
        None => None,
    };
    let state = TensorState::check(param, exp_avg, exp_inf, master, scales)
        .map_err(|e| place.tensor_error(e))?;
    if let Some(policy) = policy {
        let param = state.param();
        let expected = policy.state_element(param);
        let arrays = [
            (Role::ExpAvg, Some(state.exp_avg()), expected),
            (Role::ExpInf, Some(state.exp_inf()), expected),
            (Role::Master, state.master(), policy.master_element(param)),
        ];
        for (role, array, want) in arrays {
            match array {
                Some(a) if a.element != want => {
                    return Err(place.type_error(format_args!(
                        "{} has dtype {} but this optimizer keeps {}",
                        role.describe(),
                        a.element,
                        policy.describe(param)
                    )))
                }
                _ => {}
            }
        }
    }
    Ok((state, grad))
}

/// Whether `state` still describes the tensor's parameter and state arrays (their headers are
/// unchanged since it was checked).
pub fn still_describes(state: &TensorState, objects: &TensorObjects<'_>) -> bool {
    header_matches(&objects.data, state.param())
        && state_arrays_still_described(
            state,
            &objects.exp_avg,
            &objects.exp_inf,
            objects.master.as_ref(),
            objects.scales.as_ref().map(|[a, b]| [a, b]),
        )
}

/// Whether `state` still describes these state arrays: [`still_describes`] without the
/// parameter, for a step that holds the state arrays apart from the other objects.
pub fn state_arrays_still_described(
    state: &TensorState,
    exp_avg: &Bound<'_, PyAny>,
    exp_inf: &Bound<'_, PyAny>,
    master: Option<&Bound<'_, PyAny>>,
    scales: Option<[&Bound<'_, PyAny>; 2]>,
) -> bool {
    let master_same = match (master, state.master()) {
        (Some(obj), Some(raw)) => header_matches(obj, raw),
        (None, None) => true,
        _ => false,
    };
    let scales_same = match (scales, state.scales()) {
        (Some([a, b]), Some([ra, rb])) => header_matches(a, ra) && header_matches(b, rb),
        (None, None) => true,
        _ => false,
    };
    master_same
        && scales_same
        && header_matches(exp_avg, state.exp_avg())
        && header_matches(exp_inf, state.exp_inf())
}

/// A gradient as read for one step: usually laid out like its parameter, when only its address
/// is kept.
pub enum GradRead {
    LikeParam(usize),
    /// Boxed: rare, and large (a step keeps one of these per tensor).
    Other(Box<RawArray>),
}

impl GradRead {
    /// The engine's view of it.
    pub fn as_array(&self) -> GradArray<'_> {
        match self {
            GradRead::LikeParam(address) => GradArray::LikeParam { address: *address },
            GradRead::Other(raw) => GradArray::Other(raw),
        }
    }
}

/// The gradient, for a tensor whose parameter is known to be described by `param`.
pub fn read_grad(
    place: Place,
    data: &Bound<'_, PyAny>,
    grad: &Bound<'_, PyAny>,
    param: &RawArray,
) -> PyResult<GradRead> {
    if grad.is(data) {
        return Err(place.value_error("the gradient is the parameter array itself"));
    }
    if let Some(address) = address_if_like(grad, param) {
        return Ok(GradRead::LikeParam(address));
    }
    read(grad, place, Role::Grad, Some(param.element)).map(|raw| GradRead::Other(Box::new(raw)))
}
