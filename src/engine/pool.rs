//! The thread pool the updates run on: its own, not rayon's global one.
//!
//! An own pool lets `set_num_threads` change the count at any time (rayon's global pool is fixed
//! once started) and keeps us out of the way of other rayon users in the process. The pool
//! remembers the process that built it: after `fork()` the child has the pool's data but none of
//! its threads, so work sent to it would wait forever. A child therefore abandons the inherited
//! pool (never touching its dead threads) and builds its own.

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

/// The most threads `set_num_threads` accepts: far above any core count, far below what would
/// exhaust the process's threads or memory when the pool is built.
pub const MAX_THREADS: usize = 1024;

struct Pool {
    pool: Arc<ThreadPool>,
    owner_pid: u32,
}

struct Settings {
    /// `None`: the default count (`RAYON_NUM_THREADS`, else every core).
    requested: Option<usize>,
    built: Option<Pool>,
}

/// std's mutex, not parking_lot's, for `fork()`: see `claims::ACTIVE`.
static SETTINGS: Mutex<Settings> = Mutex::new(Settings {
    requested: None,
    built: None,
});

fn settings() -> MutexGuard<'static, Settings> {
    SETTINGS.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The lock of `SETTINGS`, held by the forking thread from before `fork()` to after it.
    static HELD_ACROSS_FORK: Cell<Option<MutexGuard<'static, Settings>>> = const { Cell::new(None) };
}

/// The count used when none was set: `RAYON_NUM_THREADS` if it is a positive integer (at most
/// [`MAX_THREADS`]), otherwise the number of cores available to this process. Read once, like
/// rayon does: finding the cores reads cgroup files, which would cost ~10 us on every step.
pub fn default_num_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(read_default_num_threads)
}

fn read_default_num_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map(|n| n.min(MAX_THREADS))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// The number of threads a step may use.
pub fn num_threads() -> usize {
    settings().requested.unwrap_or_else(default_num_threads)
}

/// A thread count outside `0..=MAX_THREADS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyThreads(pub usize);

/// Sets the number of threads; `0` goes back to the default. The pool is rebuilt lazily.
pub fn set_num_threads(n: usize) -> Result<(), TooManyThreads> {
    if n > MAX_THREADS {
        return Err(TooManyThreads(n));
    }
    let mut s = settings();
    s.requested = if n == 0 { None } else { Some(n) };
    // Dropping our handle is enough: a step still running keeps its own `Arc` and the old pool's
    // threads exit once it finishes.
    s.built = None;
    Ok(())
}

/// The pool to run on, built on first use (and again in a forked child). `None` when not even
/// one worker thread can be started; the caller then works on its own thread.
pub fn pool() -> Option<Arc<ThreadPool>> {
    let mut s = settings();
    let pid = std::process::id();
    if let Some(built) = s.built.take() {
        if built.owner_pid == pid {
            let pool = Arc::clone(&built.pool);
            s.built = Some(built);
            return Some(pool);
        }
        // Inherited through fork(): its threads do not exist here. Dropping it would signal them
        // and could block, so it is deliberately leaked (a few hundred bytes).
        std::mem::forget(built);
    }
    let threads = s.requested.unwrap_or_else(default_num_threads);
    // Spawning threads can fail (resource limits): then no pool, and the work stays serial.
    let pool = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("adamax-rs-{i}"))
            .build()
            .ok()?,
    );
    s.built = Some(Pool {
        pool: Arc::clone(&pool),
        owner_pid: pid,
    });
    Some(pool)
}

/// Before `fork()`: hold the settings' lock, so the child's copy is not caught mid-change.
pub(super) fn before_fork() {
    HELD_ACROSS_FORK.set(Some(settings()));
}

/// After `fork()`, in either process: release the lock taken before it. (The child notices that
/// the pool is not its own by its process id.)
pub(super) fn after_fork() {
    drop(HELD_ACROSS_FORK.take());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_reset_thread_count() {
        set_num_threads(3).unwrap();
        assert_eq!(num_threads(), 3);
        assert_eq!(pool().unwrap().current_num_threads(), 3);
        assert_eq!(set_num_threads(1 << 31), Err(TooManyThreads(1 << 31)));
        assert_eq!(num_threads(), 3);
        set_num_threads(0).unwrap();
        assert_eq!(num_threads(), default_num_threads());
        assert_eq!(pool().unwrap().current_num_threads(), default_num_threads());
    }
}
