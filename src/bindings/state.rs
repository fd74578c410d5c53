//! The optimizer's state: `optimizer.state[param]` for each parameter, kept in Rust.
//!
//! A step reads every parameter's step count and state arrays, and writes the counts back. In
//! Python dicts that would cost a lookup per key per parameter per step, and the counts would be
//! new int objects written back by Python code, between which a `KeyboardInterrupt` could land.
//! Here [`ParameterState`] maps each parameter (by identity) to a [`StateEntry`], a small mapping
//! with fixed keys whose fields the engine reads directly, and whose count it commits without
//! running any Python code. Both behave like the dicts of `torch.optim.Optimizer.state`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indexmap::IndexMap;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyList, PyTuple};

use crate::kernel::MAX_STEP;

use super::gil_cell::GilCell;
use super::ndarray::{numpy, type_name};

/// The array keys a state entry may hold, in the order they are listed ("step" is always allowed
/// and comes first).
#[derive(Debug, PartialEq, Eq)]
pub struct StateKeys(pub Vec<String>);

impl StateKeys {
    fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|k| k == key)
    }

    fn describe(&self) -> String {
        std::iter::once("step")
            .chain(self.0.iter().map(String::as_str))
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One checked change of an entry.
enum Change {
    Step(u64),
    /// A new array for the slot.
    Array(usize, Py<PyAny>),
}

/// The contents of one entry.
#[derive(Default)]
pub struct EntryData {
    pub step: Option<u64>,
    /// One slot per key of the schema.
    pub arrays: Vec<Option<Py<PyAny>>>,
}

/// The version of a `ParameterState` and its entries, which changes with every change made from
/// Python, so a step knows whether it must read them again. (Atomic only to be shareable; the
/// GIL orders its uses.)
///
/// Every version is drawn from one clock for the whole process ([`next_version`]), so no two
/// states, nor two moments of one state, ever share a version. A plan compares the version it
/// cached with the version of the state it is given: with a count per state, the new state that
/// `load_state_dict` makes (counting from 0) could reach the old state's count exactly, and the
/// plan would then have used entries cached from before a change.
pub struct Mutations(AtomicU64);

/// The source of every [`Mutations`] version: each is used once.
static VERSION_CLOCK: AtomicU64 = AtomicU64::new(1);

/// A version no state has had.
fn next_version() -> u64 {
    VERSION_CLOCK.fetch_add(1, Ordering::Relaxed)
}

impl Default for Mutations {
    fn default() -> Self {
        Mutations(AtomicU64::new(next_version()))
    }
}

impl Mutations {
    fn bump(&self) {
        self.0.store(next_version(), Ordering::Relaxed);
    }

    /// The current version (compare for equality only: a new one is not always larger).
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl EntryData {
    fn is_empty(&self) -> bool {
        self.step.is_none() && self.arrays.iter().all(Option::is_none)
    }
}

/// The state of one parameter: a mapping with the keys ``step`` (an int) and the optimizer's state
/// arrays (``exp_avg``, ``exp_inf``, and ``master`` with master weights), like the dict torch keeps
/// for each parameter.
#[pyclass(module = "adamax_rs", name = "StateEntry", frozen, mapping)]
pub struct StateEntry {
    pub(super) data: GilCell<EntryData>,
    keys: Arc<StateKeys>,
    /// The counter of the `ParameterState` this entry belongs to.
    mutations: Arc<Mutations>,
}

/// `value` as a step count: an int (Python or numpy, not a bool) in `[0, 2**53]`.
pub fn step_count(value: &Bound<'_, PyAny>, where_: &str) -> PyResult<u64> {
    let is_int = value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>();
    let is_numpy_int = !is_int && value.is_instance(&numpy(value.py())?.getattr("integer")?)?;
    if !is_int && !is_numpy_int {
        return Err(PyTypeError::new_err(format!(
            "{where_}'step' must be an int, got {}",
            type_name(value)
        )));
    }
    let value = if is_numpy_int {
        value.call_method0("__int__")?
    } else {
        value.clone()
    };
    match value.extract::<u64>() {
        Ok(n) if n <= MAX_STEP => Ok(n),
        _ => {
            let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
            let shown = if shown.len() > 40 {
                format!("{}...", &shown[..37])
            } else {
                shown
            };
            Err(PyValueError::new_err(format!(
                "{where_}'step' must be between 0 and 2**53, got {shown}"
            )))
        }
    }
}

fn check_array(value: &Bound<'_, PyAny>, key: &str, where_: &str) -> PyResult<()> {
    if !value.is_instance(&numpy(value.py())?.getattr("ndarray")?)? {
        return Err(PyTypeError::new_err(format!(
            "{where_}'{key}' must be a numpy.ndarray, got {}",
            type_name(value)
        )));
    }
    Ok(())
}

impl StateEntry {
    pub fn new(keys: Arc<StateKeys>, mutations: Arc<Mutations>) -> Self {
        let arrays = (0..keys.0.len()).map(|_| None).collect();
        StateEntry {
            data: GilCell::new(EntryData { step: None, arrays }),
            keys,
            mutations,
        }
    }

    /// An entry holding the items of `mapping`, each checked for its type.
    pub fn from_mapping(
        mapping: &Bound<'_, PyAny>,
        keys: Arc<StateKeys>,
        mutations: Arc<Mutations>,
        where_: &str,
    ) -> PyResult<Self> {
        let entry = StateEntry::new(keys, mutations);
        let items = mapping.call_method0("items")?;
        for item in items.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            entry.set(&key, &value, where_)?;
        }
        Ok(entry)
    }

    /// The array keys this entry accepts.
    pub fn keys_schema(&self) -> &Arc<StateKeys> {
        &self.keys
    }

    /// `entry[key] = value`, checked, as a change not yet made.
    fn checked_change(
        &self,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        where_: &str,
    ) -> PyResult<Change> {
        let Ok(name) = key.extract::<String>() else {
            return Err(PyTypeError::new_err(format!(
                "{where_}state keys are strings, got {}",
                type_name(key)
            )));
        };
        if name == "step" {
            return Ok(Change::Step(step_count(value, where_)?));
        }
        let Some(slot) = self.keys.position(&name) else {
            return Err(PyValueError::new_err(format!(
                "{where_}'{name}' is not a state key of this optimizer (its keys are {})",
                self.keys.describe()
            )));
        };
        check_array(value, &name, where_)?;
        Ok(Change::Array(slot, value.clone().unbind()))
    }

    /// Makes `changes`, in order, at once: no Python code runs between them, and the arrays they
    /// replace are dropped after (their finalizers may use this entry).
    fn apply(&self, py: Python<'_>, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let replaced = self.data.update(py, |d| {
            let mut replaced = Vec::new();
            for change in changes {
                match change {
                    Change::Step(step) => d.step = Some(step),
                    Change::Array(slot, value) => {
                        replaced.extend(d.arrays[slot].replace(value));
                    }
                }
            }
            replaced
        });
        self.mutations.bump();
        drop(replaced);
    }

    fn set(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>, where_: &str) -> PyResult<()> {
        let change = self.checked_change(key, value, where_)?;
        self.apply(key.py(), vec![change]);
        Ok(())
    }

    /// (key, value) pairs present, "step" first.
    fn pairs(&self, py: Python<'_>) -> Vec<(String, Py<PyAny>)> {
        let (step, arrays) = self.data.read(py, |d| {
            let arrays: Vec<Option<Py<PyAny>>> = d
                .arrays
                .iter()
                .map(|a| a.as_ref().map(|a| a.clone_ref(py)))
                .collect();
            (d.step, arrays)
        });
        let mut out = Vec::with_capacity(1 + arrays.len());
        if let Some(step) = step {
            out.push((
                "step".to_string(),
                step.into_pyobject(py).expect("an int").into_any().unbind(),
            ));
        }
        for (key, array) in self.keys.0.iter().zip(arrays) {
            if let Some(a) = array {
                out.push((key.clone(), a));
            }
        }
        out
    }

    fn get(&self, py: Python<'_>, key: &str) -> Option<Py<PyAny>> {
        if key == "step" {
            let step = self.data.read(py, |d| d.step);
            return step.map(|s| s.into_pyobject(py).expect("an int").into_any().unbind());
        }
        let slot = self.keys.position(key)?;
        self.data
            .read(py, |d| d.arrays[slot].as_ref().map(|a| a.clone_ref(py)))
    }

    /// Whether the entry has neither a step count nor any array.
    pub fn is_empty(&self, py: Python<'_>) -> bool {
        self.data.read(py, EntryData::is_empty)
    }

    /// Whether this entry belongs to (reports its changes to) `mutations`.
    fn belongs_to(&self, mutations: &Arc<Mutations>) -> bool {
        Arc::ptr_eq(&self.mutations, mutations)
    }
}

#[pymethods]
impl StateEntry {
    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let name: Option<String> = key.extract().ok();
        name.and_then(|k| self.get(py, &k))
            .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        super::errors::guarded(|| self.set(key, value, ""))
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = key.py();
        let name: Option<String> = key.extract().ok();
        let slot = name.as_deref().and_then(|k| self.keys.position(k));
        let (removed, old) = self.data.update(py, |d| match (name.as_deref(), slot) {
            (Some("step"), _) => (d.step.take().is_some(), None),
            (_, Some(slot)) => {
                let old = d.arrays[slot].take();
                (old.is_some(), old)
            }
            _ => (false, None),
        });
        drop(old);
        if !removed {
            return Err(PyKeyError::new_err(key.clone().unbind()));
        }
        self.mutations.bump();
        Ok(())
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        let py = key.py();
        key.extract::<String>()
            .is_ok_and(|k| self.get(py, &k).is_some())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.data.read(py, |d| {
            usize::from(d.step.is_some()) + d.arrays.iter().filter(|a| a.is_some()).count()
        })
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.try_iter().map(Bound::into_any)
    }

    /// The keys present, "step" first.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.pairs(py).into_iter().map(|(k, _)| k))
    }

    /// The values, in the order of `keys()`.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.pairs(py).into_iter().map(|(_, v)| v))
    }

    /// (key, value) pairs, in the order of `keys()`.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items: PyResult<Vec<Bound<'py, PyTuple>>> = self
            .pairs(py)
            .into_iter()
            .map(|(k, v)| PyTuple::new(py, [k.into_pyobject(py)?.into_any().unbind(), v]))
            .collect();
        PyList::new(py, items?)
    }

    /// ``entry[key]``, or ``default`` when the key is absent.
    #[pyo3(name = "get", signature = (key, default = None))]
    fn get_item_or(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> Option<Py<PyAny>> {
        key.extract::<String>()
            .ok()
            .and_then(|k| self.get(py, &k))
            .or(default)
    }

    /// Removes every key.
    fn clear(&self, py: Python<'_>) {
        let old = self.data.update(py, |d| {
            d.step = None;
            std::mem::take(&mut d.arrays)
        });
        let empty = (0..old.len()).map(|_| None).collect();
        self.data.update(py, |d| d.arrays = empty);
        self.mutations.bump();
        drop(old);
    }

    /// A plain dict with the same items (the arrays are not copied).
    fn copy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (k, v) in self.pairs(py) {
            out.set_item(k, v)?;
        }
        Ok(out)
    }

    /// Sets each item of `other` (a mapping) and of the keywords, checking each as
    /// `entry[key] = value` does, as ``dict.update``; all or nothing: every item is checked
    /// before any is set.
    #[pyo3(signature = (other = None, **keywords))]
    fn update(
        &self,
        other: Option<&Bound<'_, PyAny>>,
        keywords: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        super::errors::guarded(|| {
            let mut changes = Vec::new();
            let mut py = None;
            for mapping in other.into_iter().chain(keywords.map(|k| k.as_any())) {
                py = Some(mapping.py());
                let items = mapping.call_method0("items")?;
                for item in items.try_iter()? {
                    let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
                    changes.push(self.checked_change(&key, &value, "")?);
                }
            }
            if let Some(py) = py {
                self.apply(py, changes);
            }
            Ok(())
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.copy(py)?.repr()?.to_string())
    }
}

/// The contents of a [`ParameterState`].
#[derive(Default)]
pub struct StateMap {
    /// By parameter identity (`id(param)`): the parameter (kept alive, so the id stays its own)
    /// and its entry.
    pub entries: IndexMap<usize, (Py<PyAny>, Py<StateEntry>)>,
}

/// The optimizer's state, keyed by parameter identity: ``state[p]`` is ``p``'s
/// :class:`StateEntry`, created empty on first access (as the ``defaultdict(dict)`` of
/// ``torch.optim.Optimizer.state``). Assigning a dict checks and converts it. Keys are compared by
/// identity, so parameter types that define ``__eq__`` element-wise work as keys.
#[pyclass(module = "adamax_rs", name = "ParameterState", frozen, mapping)]
pub struct ParameterState {
    map: GilCell<StateMap>,
    keys: Arc<StateKeys>,
    mutations: Arc<Mutations>,
}

impl ParameterState {
    /// The entry of `param`, if it has one.
    pub fn entry(&self, py: Python<'_>, param: &Bound<'_, PyAny>) -> Option<Py<StateEntry>> {
        let key = param.as_ptr() as usize;
        self.map
            .read(py, |m| m.entries.get(&key).map(|(_, e)| e.clone_ref(py)))
    }

    /// The version: it changes whenever an entry is added, replaced or removed, or an entry is
    /// changed from Python (not when a step commits its counts).
    pub fn current_version(&self) -> u64 {
        self.mutations.count()
    }

    /// Gives `param` the entry `entry` (used by the step's commit: no Python code runs; the
    /// entry replaced, if any, is returned for the caller to drop).
    pub fn insert(
        &self,
        param: &Bound<'_, PyAny>,
        entry: Py<StateEntry>,
    ) -> Option<(Py<PyAny>, Py<StateEntry>)> {
        let py = param.py();
        let key = param.as_ptr() as usize;
        let value = (param.clone().unbind(), entry);
        let old = self.map.update(py, |m| m.entries.insert(key, value));
        self.mutations.bump();
        old
    }

    /// A new, empty entry of this state (not inserted).
    pub fn new_entry(&self) -> StateEntry {
        StateEntry::new(Arc::clone(&self.keys), Arc::clone(&self.mutations))
    }

    /// The array keys entries accept.
    pub fn schema(&self) -> &Arc<StateKeys> {
        &self.keys
    }
}

#[pymethods]
impl ParameterState {
    /// ParameterState(keys)
    ///
    /// An empty state whose entries accept "step" and the array keys ``keys``.
    #[new]
    fn new(keys: Vec<String>) -> Self {
        ParameterState {
            map: GilCell::new(StateMap::default()),
            keys: Arc::new(StateKeys(keys)),
            mutations: Arc::new(Mutations::default()),
        }
    }

    /// The array keys entries accept (besides "step").
    #[getter]
    fn state_keys(&self) -> Vec<String> {
        self.keys.0.clone()
    }

    /// Changes whenever an entry is added, replaced or removed, or an entry changed.
    #[getter]
    fn version(&self) -> u64 {
        self.current_version()
    }

    fn __getitem__(&self, py: Python<'_>, param: &Bound<'_, PyAny>) -> PyResult<Py<StateEntry>> {
        if let Some(entry) = self.entry(py, param) {
            return Ok(entry);
        }
        let entry = Py::new(py, self.new_entry())?;
        drop(self.insert(param, entry.clone_ref(py)));
        Ok(entry)
    }

    /// ``state[param]`` without creating an entry: ``default`` when there is none.
    #[pyo3(signature = (param, default = None))]
    fn get(
        &self,
        py: Python<'_>,
        param: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> Option<Py<PyAny>> {
        self.entry(py, param).map(Py::into_any).or(default)
    }

    fn __setitem__(&self, param: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        super::errors::guarded(|| {
            let py = param.py();
            // An entry of this state is kept as it is; anything else (a dict, an entry of another
            // optimizer) is checked and copied into a new entry that reports its changes here.
            let entry = match value.cast::<StateEntry>() {
                Ok(e) if e.get().belongs_to(&self.mutations) => e.clone().unbind(),
                _ => {
                    let entry = StateEntry::from_mapping(
                        value,
                        Arc::clone(&self.keys),
                        Arc::clone(&self.mutations),
                        "",
                    )?;
                    Py::new(py, entry)?
                }
            };
            drop(self.insert(param, entry));
            Ok(())
        })
    }

    fn __delitem__(&self, param: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = param.as_ptr() as usize;
        let old = self
            .map
            .update(param.py(), |m| m.entries.shift_remove(&key));
        if old.is_none() {
            return Err(PyKeyError::new_err(param.clone().unbind()));
        }
        self.mutations.bump();
        drop(old);
        Ok(())
    }

    fn __contains__(&self, param: &Bound<'_, PyAny>) -> bool {
        let key = param.as_ptr() as usize;
        self.map.read(param.py(), |m| m.entries.contains_key(&key))
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.map.read(py, |m| m.entries.len())
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.try_iter().map(Bound::into_any)
    }

    /// The parameters that have an entry, in the order their entries were made.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let params: Vec<Py<PyAny>> = self.map.read(py, |m| {
            m.entries.values().map(|(p, _)| p.clone_ref(py)).collect()
        });
        PyList::new(py, params)
    }

    /// The entries, in the order of `keys()`.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let entries: Vec<Py<StateEntry>> = self.map.read(py, |m| {
            m.entries.values().map(|(_, e)| e.clone_ref(py)).collect()
        });
        PyList::new(py, entries)
    }

    /// (parameter, entry) pairs, in the order of `keys()`.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pairs: Vec<(Py<PyAny>, Py<StateEntry>)> = self.map.read(py, |m| {
            m.entries
                .values()
                .map(|(p, e)| (p.clone_ref(py), e.clone_ref(py)))
                .collect()
        });
        let tuples: PyResult<Vec<Bound<'py, PyTuple>>> = pairs
            .into_iter()
            .map(|(p, e)| PyTuple::new(py, [p, e.into_any()]))
            .collect();
        PyList::new(py, tuples?)
    }

    /// Removes every entry.
    fn clear(&self, py: Python<'_>) {
        let old = self.map.update(py, |m| std::mem::take(&mut m.entries));
        self.mutations.bump();
        drop(old);
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("ParameterState({} parameters)", self.__len__(py))
    }
}
