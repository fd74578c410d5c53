//! Hyperparameters as Python gives them: by name, from keywords or from a parameter group's dict,
//! checked for type and range with messages that name the key.

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt};

use crate::kernel::{Hyperparameters, StepSizeType};

/// The names of the numeric hyperparameters, in the order of [`Hyperparameters`]' fields.
pub const NUMBERS: [&str; 5] = ["lr", "beta1", "beta2", "eps", "weight_decay"];
/// The names of the options.
pub const FLAGS: [&str; 3] = ["maximize", "eps_inside_max", "decoupled_weight_decay"];

fn numbers_real(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static REAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    REAL.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("numbers")?.getattr("Real")?.unbind())
    })
    .map(|r| r.bind(py))
}

fn numpy_bool(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static BOOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    BOOL.get_or_try_init(py, || {
        Ok::<_, PyErr>(super::ndarray::numpy(py)?.getattr("bool_")?.unbind())
    })
    .map(|r| r.bind(py))
}

/// `value` as a float: a Python or numpy real number, not a bool. `where_` prefixes messages.
pub fn real_number(value: &Bound<'_, PyAny>, key: &str, where_: &str) -> PyResult<f64> {
    let py = value.py();
    if value.is_exact_instance_of::<PyFloat>() {
        return value.extract();
    }
    let is_bool = value.is_instance_of::<PyBool>() || value.is_instance(numpy_bool(py)?)?;
    if !is_bool
        && (value.is_exact_instance_of::<PyInt>() || value.is_instance(numbers_real(py)?)?)
    {
        let converted = if value.is_instance_of::<PyInt>() {
            value.extract::<f64>()
        } else {
            value
                .call_method0(intern!(py, "__float__"))
                .and_then(|f| f.extract::<f64>())
        };
        return converted.map_err(|error| {
            if error.is_instance_of::<PyOverflowError>(py) {
                let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
                let shown = if shown.len() > 40 {
                    format!("{}...", &shown[..37])
                } else {
                    shown
                };
                PyValueError::new_err(format!(
                    "{where_}{key}={shown} is out of range (it does not fit in a float64)"
                ))
            } else {
                error
            }
        });
    }
    let name = super::ndarray::type_name(value);
    Err(PyTypeError::new_err(format!(
        "{where_}{key} must be a real number, got {name}"
    )))
}

/// `value` as a bool: `True`, `False` or a numpy bool. `where_` prefixes messages.
pub fn flag(value: &Bound<'_, PyAny>, key: &str, where_: &str) -> PyResult<bool> {
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(b.is_true());
    }
    if value.is_instance(numpy_bool(value.py())?)? {
        return value.is_truthy();
    }
    let name = super::ndarray::type_name(value);
    Err(PyTypeError::new_err(format!(
        "{where_}{key} must be a bool, got {name}"
    )))
}

/// Checks the ranges, with `where_` before the message.
pub fn validated(h: Hyperparameters, where_: &str) -> PyResult<Hyperparameters> {
    h.validate()
        .map_err(|e| PyValueError::new_err(format!("{where_}{e}")))?;
    Ok(h)
}

fn assemble(numbers: [f64; 5], flags: [bool; 3]) -> Hyperparameters {
    let [lr, beta1, beta2, eps, weight_decay] = numbers;
    let [maximize, eps_inside_max, decoupled_weight_decay] = flags;
    Hyperparameters {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        maximize,
        eps_inside_max,
        decoupled_weight_decay,
        // An option of the optimizer, not of a group: the step plan sets it.
        stochastic_rounding: false,
        step_size_type: Default::default(),
    }
}

/// The raw values of a group's hyperparameters, to tell cheaply whether they changed: equal
/// when every value is the very same immutable object as before.
#[derive(Default)]
pub struct GroupValues {
    values: Vec<Py<PyAny>>,
    parsed: Option<Hyperparameters>,
}

fn immutable(value: &Bound<'_, PyAny>) -> bool {
    value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_instance_of::<PyBool>()
}

/// The hyperparameters of a group dict (`group[name]` for each name), read by name, with a
/// message naming the group for a missing key, a wrong type or a value out of range. A torch-style
/// `"betas"` key is refused: these groups keep `beta1` and `beta2`, and a `betas` key set after
/// construction (by hand, or by a scheduler written for torch) must not be silently ignored.
///
/// The flag says whether the values were read again (which may run Python code: a number's
/// `__float__`, a replaced value's finalizer); `false` when they are the very objects read last
/// time, which runs none.
pub fn from_group(
    group: &Bound<'_, PyAny>,
    g: usize,
    cache: &mut GroupValues,
) -> PyResult<(Hyperparameters, bool)> {
    let py = group.py();
    let where_ = || format!("group {g}: ");
    let Ok(dict) = group.cast::<PyDict>() else {
        let name = super::ndarray::type_name(group);
        return Err(PyTypeError::new_err(format!(
            "param_groups[{g}] must be a dict, got {name}"
        )));
    };
    let keys = [
        intern!(py, "lr"),
        intern!(py, "beta1"),
        intern!(py, "beta2"),
        intern!(py, "eps"),
        intern!(py, "weight_decay"),
        intern!(py, "maximize"),
        intern!(py, "eps_inside_max"),
        intern!(py, "decoupled_weight_decay"),
    ];
    if let Some(betas) = dict.get_item(intern!(py, "betas"))? {
        let shown = betas.repr().map(|r| r.to_string()).unwrap_or_default();
        return Err(PyValueError::new_err(format!(
            "{}'betas' is not a key of adamax_rs.Adamax's groups, which keep 'beta1' and 'beta2'; \
             set those instead of betas={shown} (or use adamax_rs.torch.Adamax, whose groups keep \
             torch's 'betas')",
            where_()
        )));
    }
    let mut values = Vec::with_capacity(keys.len());
    for (key, name) in keys.iter().zip(NUMBERS.iter().chain(FLAGS.iter())) {
        match dict.get_item(key)? {
            Some(v) => values.push(v),
            None => {
                return Err(PyValueError::new_err(format!(
                    "{}missing hyperparameter '{name}'",
                    where_()
                )))
            }
        }
    }
    let same = cache.parsed.is_some()
        && cache.values.len() == values.len()
        && cache
            .values
            .iter()
            .zip(&values)
            .all(|(old, new)| old.is(new) && immutable(new));
    if let (true, Some(parsed)) = (same, cache.parsed) {
        return Ok((parsed, false));
    }
    let mut numbers = [0.0; 5];
    for (i, name) in NUMBERS.iter().enumerate() {
        numbers[i] = real_number(&values[i], name, &where_())?;
    }
    let mut flags = [false; 3];
    for (i, name) in FLAGS.iter().enumerate() {
        flags[i] = flag(&values[5 + i], name, &where_())?;
    }
    let h = validated(assemble(numbers, flags), &where_())?;
    cache.values = values.into_iter().map(Bound::unbind).collect();
    cache.parsed = Some(h);
    Ok((h, true))
}

/// An optional keyword argument: given (any object, `None` included, which is then checked like
/// any other value) or left out. `Option` would make an explicit `None` mean "left out".
pub enum Keyword<'py> {
    Given(Bound<'py, PyAny>),
    LeftOut,
}

impl<'a, 'py> FromPyObject<'a, 'py> for Keyword<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Keyword::Given(obj.to_owned()))
    }
}

impl Keyword<'_> {
    /// The value, or `default` when left out.
    fn or<T>(
        &self,
        default: T,
        read: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> PyResult<T> {
        match self {
            Keyword::Given(value) => read(value),
            Keyword::LeftOut => Ok(default),
        }
    }
}

/// The hyperparameters of an Adamax step, checked (for the functional form and the torch front
/// end, which pass them by keyword).
#[pyclass(
    module = "adamax_rs._core",
    name = "Hyperparameters",
    frozen,
    skip_from_py_object
)]
#[derive(Clone, Copy)]
pub struct PyHyperparameters(pub Hyperparameters);

#[pymethods]
impl PyHyperparameters {
    /// Hyperparameters(*, lr, beta1, beta2, eps, weight_decay=0.0, maximize=False,
    /// eps_inside_max=False, decoupled_weight_decay=False, step_size_dtype="float64")
    ///
    /// ``step_size_dtype``: the type ``lr / (1 - beta1**t)`` is computed in ("float64",
    /// "float32", "float16" or "bfloat16"): that of a tensor ``lr`` in torch's for-loop Adamax
    /// (the torch front end sets it).
    /// Raises TypeError for a value of the wrong type, ValueError for one out of range.
    #[new]
    #[pyo3(signature = (*, lr, beta1, beta2, eps, weight_decay = Keyword::LeftOut, maximize = Keyword::LeftOut, eps_inside_max = Keyword::LeftOut, decoupled_weight_decay = Keyword::LeftOut, step_size_dtype = Keyword::LeftOut))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        lr: &Bound<'_, PyAny>,
        beta1: &Bound<'_, PyAny>,
        beta2: &Bound<'_, PyAny>,
        eps: &Bound<'_, PyAny>,
        weight_decay: Keyword<'_>,
        maximize: Keyword<'_>,
        eps_inside_max: Keyword<'_>,
        decoupled_weight_decay: Keyword<'_>,
        step_size_dtype: Keyword<'_>,
    ) -> PyResult<Self> {
        super::errors::guarded(|| {
            let number = |v: &Keyword<'_>, name: &str| v.or(0.0, |v| real_number(v, name, ""));
            let option = |v: &Keyword<'_>, name: &str| v.or(false, |v| flag(v, name, ""));
            let h = assemble(
                [
                    real_number(lr, "lr", "")?,
                    real_number(beta1, "beta1", "")?,
                    real_number(beta2, "beta2", "")?,
                    real_number(eps, "eps", "")?,
                    number(&weight_decay, "weight_decay")?,
                ],
                [
                    option(&maximize, "maximize")?,
                    option(&eps_inside_max, "eps_inside_max")?,
                    option(&decoupled_weight_decay, "decoupled_weight_decay")?,
                ],
            );
            let step_size_type = step_size_dtype.or(StepSizeType::Float64, |v| {
                let name: String = v.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "step_size_dtype must be a str, got {}",
                        super::ndarray::type_name(v)
                    ))
                })?;
                StepSizeType::from_name(&name).ok_or_else(|| {
                    let shown = v.repr().map(|r| r.to_string()).unwrap_or(name);
                    PyValueError::new_err(format!(
                        "step_size_dtype must be 'float64', 'float32', 'float16' or 'bfloat16', \
                         got {shown}"
                    ))
                })
            })?;
            let h = Hyperparameters {
                step_size_type,
                ..h
            };
            Ok(PyHyperparameters(validated(h, "")?))
        })
    }

    #[getter]
    fn lr(&self) -> f64 {
        self.0.lr
    }
    #[getter]
    fn beta1(&self) -> f64 {
        self.0.beta1
    }
    #[getter]
    fn beta2(&self) -> f64 {
        self.0.beta2
    }
    #[getter]
    fn eps(&self) -> f64 {
        self.0.eps
    }
    #[getter]
    fn weight_decay(&self) -> f64 {
        self.0.weight_decay
    }
    #[getter]
    fn maximize(&self) -> bool {
        self.0.maximize
    }
    #[getter]
    fn eps_inside_max(&self) -> bool {
        self.0.eps_inside_max
    }
    #[getter]
    fn decoupled_weight_decay(&self) -> bool {
        self.0.decoupled_weight_decay
    }
    #[getter]
    fn step_size_dtype(&self) -> &'static str {
        self.0.step_size_type.name()
    }

    fn __repr__(&self) -> String {
        let h = &self.0;
        let py_bool = |b: bool| if b { "True" } else { "False" };
        format!(
            "Hyperparameters(lr={}, beta1={}, beta2={}, eps={}, weight_decay={}, maximize={}, \
             eps_inside_max={}, decoupled_weight_decay={}, step_size_dtype='{}')",
            crate::kernel::PyFloat(h.lr),
            crate::kernel::PyFloat(h.beta1),
            crate::kernel::PyFloat(h.beta2),
            crate::kernel::PyFloat(h.eps),
            crate::kernel::PyFloat(h.weight_decay),
            py_bool(h.maximize),
            py_bool(h.eps_inside_max),
            py_bool(h.decoupled_weight_decay),
            h.step_size_type.name()
        )
    }
}
