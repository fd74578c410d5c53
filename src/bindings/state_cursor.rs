//! Reads each parameter's entry of `optimizer.state` in the dict's own order.
//!
//! A lookup `state[p]` hashes `p`, and torch's `Tensor.__hash__` is a Python function
//! (`id(self)`), so every lookup runs Python code: about a twentieth of the torch step's
//! bookkeeping. But the state dict is filled in the order the parameters are first stepped, which
//! is the order of `param_groups`, so the parameter looked up next is almost always the key of the
//! dict's next entry. The cursor reads that entry (`PyDict_Next`, no hashing) and uses it when its
//! key *is* the parameter; otherwise it does the ordinary lookup.
//!
//! Both give the same answer as long as a key's hash does not change while it is in the dict
//! (Python's own rule for dict keys; torch's `Tensor.__hash__` is `id(self)`): a dict holds an
//! object as a key at most once, and a lookup of an object that is a key finds that entry (its
//! identity is compared before `__eq__`). The cursor skips the hash call itself, so a `__hash__`
//! that raises or has side effects is not run when the entry is found in order. The entry is read
//! at the moment of the lookup, and `PyDict_Next` runs no Python code, so a dict changed
//! meanwhile (by Python code the step ran earlier) is read as it is then.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A position in a dict's entries, moved forward as the parameters are visited in order.
pub struct StateCursor<'py> {
    dict: Bound<'py, PyDict>,
    position: ffi::Py_ssize_t,
}

impl<'py> StateCursor<'py> {
    pub fn new(dict: Bound<'py, PyDict>) -> Self {
        StateCursor { dict, position: 0 }
    }

    /// The value of the dict's next entry if its key is `key`, moving past it; else `None`, not
    /// moving.
    fn next_if_key(&mut self, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        let mut position = self.position;
        let mut found_key = std::ptr::null_mut();
        let mut value = std::ptr::null_mut();
        // SAFETY: the GIL is held (and an abi3 build is never free-threaded) and `dict` is a
        // live dict. `PyDict_Next` runs no Python code; it reads the entry at `position` or after
        // it within the dict's current entries (it checks the bound, so a position from before
        // a change to the dict is safe), and lends its key and value. The key is only compared
        // by address while `key` is held (so the address is not reused), and the value is taken
        // as a new reference in this block, before any Python code can run.
        unsafe {
            let more = ffi::PyDict_Next(
                self.dict.as_ptr(),
                &mut position,
                &mut found_key,
                &mut value,
            );
            if more == 0 || found_key != key.as_ptr() {
                return None;
            }
            self.position = position;
            Some(Bound::from_borrowed_ptr(self.dict.py(), value))
        }
    }

    /// Moves past `key` if it is the next entry's key: for a parameter that is not looked up
    /// (it has no gradient) but may have state, so that the next parameter's entry is next.
    pub fn pass(&mut self, key: &Bound<'py, PyAny>) {
        let _ = self.next_if_key(key);
    }

    /// `dict.get(key)`: `None` where the key is not in the dict.
    pub fn get(&mut self, key: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.next_if_key(key) {
            Some(value) => Ok(Some(value)),
            None => self.dict.get_item(key),
        }
    }
}
