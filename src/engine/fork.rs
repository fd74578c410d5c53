//! `fork()` safety: the handlers that keep a child process from inheriting locks held, or memory
//! claimed, by threads that do not exist in it.
//!
//! Installed once per process with `pthread_atfork`. Before the fork they wait (a bounded time) for
//! running steps to finish and hold the engine's locks; after it, the parent releases them, and the
//! child releases them and forgets the parent's steps.

use std::sync::Once;

use super::{claims, pool};

extern "C" fn prepare() {
    claims::before_fork();
    pool::before_fork();
}

extern "C" fn parent() {
    pool::after_fork();
    claims::after_fork_in_parent();
}

extern "C" fn child() {
    pool::after_fork();
    claims::after_fork_in_child();
}

/// Installs the handlers (once; later calls do nothing).
pub fn install_fork_handlers() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        #[cfg(unix)]
        // SAFETY: the three handlers are `extern "C"` functions with no arguments that live for
        // the whole process, as pthread_atfork requires; they never unwind (nothing in them
        // panics: a poisoned lock is used as it is, and the guards held across the fork sit in
        // `Cell`s, which cannot fail).
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(parent), Some(child));
        }
    });
}
