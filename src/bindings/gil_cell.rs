//! Fields guarded by the GIL, without a lock of their own.
//!
//! `Parameter`'s `data`/`grad` and the optimizer state are read for every tensor of every step. A
//! mutex or PyO3's borrow flag costs an atomic read-modify-write on each read, a large part of
//! the step over small tensors. Every access to these fields already holds the GIL (they are only
//! reached from Python-facing methods and from the step before it releases the GIL), and the module
//! declares `gil_used = true`, so that a free-threaded interpreter keeps the GIL on while it is
//! loaded: the GIL is the lock.

use std::cell::UnsafeCell;

use pyo3::prelude::*;

/// A value only touched by the thread holding the GIL.
pub struct GilCell<T>(UnsafeCell<T>);

// SAFETY: every access goes through a method taking a `Python` token, i.e. with the GIL held, and
// the module requires the GIL (`gil_used = true`), so at most one thread is inside any of these
// methods at a time. The methods run no Python code while they hold a reference into the cell
// (values they replace are handed back to the caller, which drops them afterwards), so a
// re-entrant access from a destructor cannot alias it either. `T: Send` because the value may be
// touched by whichever thread holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        GilCell(UnsafeCell::new(value))
    }

    /// Reads through `f`, which must not call Python code or drop Python objects.
    pub fn read<R>(&self, _py: Python<'_>, f: impl FnOnce(&T) -> R) -> R {
        // SAFETY: see the `Sync` impl: the GIL is held and nothing else is inside the cell.
        f(unsafe { &*self.0.get() })
    }

    /// Changes through `f`, which must not call Python code or drop Python objects (move them
    /// out and return them instead).
    pub fn update<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: see the `Sync` impl: the GIL is held and nothing else is inside the cell.
        f(unsafe { &mut *self.0.get() })
    }
}
