//! One step at a time per plan: a step started while another step of the same plan is running
//! gets a clear `RuntimeError`, not pyo3's bare "Already borrowed".
//!
//! A step runs Python code (a parameter's `grad` property, a `__del__` of an array it drops) and
//! releases the GIL while it updates large tensors, so a second step of the same plan can be
//! started from inside the first one, on the same thread, or from another thread that uses the
//! plan without the optimizer's lock. Either way the second step must refuse, changing nothing.

use std::cell::RefCell;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::PyClass;

thread_local! {
    /// The plans (by address) whose step this thread is running now.
    static RUNNING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Forgets a plan's step on this thread when the step ends, however it ends.
struct Running(usize);

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| {
            let mut running = r.borrow_mut();
            if let Some(i) = running.iter().rposition(|&p| p == self.0) {
                running.swap_remove(i);
            }
        });
    }
}

/// Runs `f` on the plan `plan` (a `StepPlan` or a `TorchStepPlan`, named `what` in messages),
/// or refuses with a `RuntimeError` if a step of that plan is already running.
pub fn one_step_at_a_time<T, R>(
    plan: &Bound<'_, T>,
    what: &str,
    f: impl FnOnce(&mut T) -> PyResult<R>,
) -> PyResult<R>
where
    T: PyClass<Frozen = pyo3::pyclass::boolean_struct::False>,
{
    let address = plan.as_ptr() as usize;
    let here = RUNNING.with(|r| r.borrow().contains(&address));
    if here {
        return Err(PyRuntimeError::new_err(format!(
            "a step of this {what} is already running on this thread: a step cannot be started \
             from Python code that a step runs (a gradient property, a __del__, a hook); nothing \
             was changed"
        )));
    }
    let Ok(mut borrowed) = plan.try_borrow_mut() else {
        return Err(PyRuntimeError::new_err(format!(
            "a step of this {what} is already running on another thread: steps of one optimizer \
             run one at a time (adamax_rs's optimizers take a lock for that); nothing was changed"
        )));
    };
    RUNNING.with(|r| r.borrow_mut().push(address));
    let _running = Running(address);
    f(&mut borrowed)
}
