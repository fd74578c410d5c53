//! Exclusive access to memory for the duration of a step.
//!
//! Before a step turns memory into `&mut [T]`, it must know that (1) no two arrays it writes
//! overlap, (2) no array it reads overlaps one it writes, and (3) no other step running on another
//! thread touches the bytes it writes, or writes the bytes it reads. This module checks all three
//! on byte extents (the lowest to the highest byte an array can touch, whatever its strides),
//! which is conservative: two interleaved views of one buffer count as overlapping.
//!
//! A step's written arrays (parameters, state) rarely change between steps, so their sorted set
//! is kept and reused while it is equal to the step's; only the gradients, which are new arrays
//! every step, are looked up in it (O(log n) each). Registering a step with the steps running on
//! other threads takes one short lock.

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::memory::Extent;

/// Extents sorted by start, with the largest end so far, for overlap queries in O(log n).
#[derive(Debug, Default)]
pub struct ExtentSet {
    items: Vec<(Extent, usize)>,
    max_end: Vec<(usize, usize)>,
}

impl ExtentSet {
    /// Sorts `items` (extent, tag) for queries.
    pub fn new(mut items: Vec<(Extent, usize)>) -> Self {
        items.sort_unstable_by_key(|(e, _)| e.start);
        let mut max_end = Vec::with_capacity(items.len());
        let mut best = (0usize, usize::MAX);
        for &(e, tag) in &items {
            if e.end > best.0 {
                best = (e.end, tag);
            }
            max_end.push(best);
        }
        ExtentSet { items, max_end }
    }

    /// The tag of a member that overlaps `e`, if any.
    pub fn overlapping(&self, e: &Extent) -> Option<usize> {
        let before = self.items.partition_point(|(x, _)| x.start < e.end);
        let (end, tag) = *self.max_end.get(before.checked_sub(1)?)?;
        (end > e.start).then_some(tag)
    }

    /// Two members that overlap each other, if any.
    pub fn first_overlap(&self) -> Option<(usize, usize)> {
        (1..self.items.len()).find_map(|i| {
            let (end, tag) = self.max_end[i - 1];
            (end > self.items[i].0.start).then_some((tag, self.items[i].1))
        })
    }

    fn iter(&self) -> impl Iterator<Item = &(Extent, usize)> {
        self.items.iter()
    }
}

/// Why a step may not go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// Two arrays of this step overlap and at least one of them is written.
    WithinStep { first: usize, second: usize },
    /// The array with this tag overlaps memory that a step on another thread is using.
    OtherStep { tag: usize },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::WithinStep { first, second } => {
                write!(f, "arrays {first} and {second} of this step overlap")
            }
            Conflict::OtherStep { tag } => {
                write!(f, "array {tag} is in use by a step on another thread")
            }
        }
    }
}

/// The written extents of the last step, kept while the next step writes the same arrays.
#[derive(Debug, Default)]
pub struct WriteSetCache {
    /// What the written set was built from: ids that identify it (see [`StepClaims::check`]).
    ids: Vec<u64>,
    sorted: Option<Arc<ExtentSet>>,
    /// The read extents last found clear of `sorted`, by position: a gradient that is where it
    /// was (kept and accumulated in place, or allocated again at the same address) is not looked
    /// up again while the written set is the same.
    clear_reads: Vec<(Extent, usize)>,
}

/// What one step writes and reads, checked for overlaps within the step.
#[derive(Debug)]
pub struct StepClaims {
    writes: Arc<ExtentSet>,
    reads: Vec<(Extent, usize)>,
}

impl StepClaims {
    /// Checks that no written extent overlaps another written or read one. `writes` builds the
    /// (extent, tag) pairs written and `reads` lists those read; `cache` keeps the sorted writes
    /// between steps, reused when `ids` is the same sequence as last time. The caller must give
    /// ids that determine the written set: equal sequences, equal `writes()`.
    pub fn check(
        ids: impl Iterator<Item = u64>,
        writes: impl FnOnce() -> Vec<(Extent, usize)>,
        reads: Vec<(Extent, usize)>,
        cache: &mut WriteSetCache,
    ) -> Result<StepClaims, Conflict> {
        let mut same = cache.sorted.is_some();
        if !same {
            cache.ids.clear();
        }
        let mut position = 0;
        for id in ids {
            if same {
                if cache.ids.get(position) == Some(&id) {
                    position += 1;
                    continue;
                }
                same = false;
                cache.ids.truncate(position);
            }
            cache.ids.push(id);
            position += 1;
        }
        if same && position != cache.ids.len() {
            same = false;
            cache.ids.truncate(position);
        }
        let sorted = match &cache.sorted {
            Some(set) if same => Arc::clone(set),
            _ => {
                cache.sorted = None;
                cache.clear_reads.clear();
                let set = ExtentSet::new(writes());
                if let Some((first, second)) = set.first_overlap() {
                    cache.ids.clear();
                    return Err(Conflict::WithinStep { first, second });
                }
                let set = Arc::new(set);
                cache.sorted = Some(Arc::clone(&set));
                set
            }
        };
        for (position, &(read, tag)) in reads.iter().enumerate() {
            if cache.clear_reads.get(position) == Some(&(read, tag)) {
                continue;
            }
            if let Some(written) = sorted.overlapping(&read) {
                cache.clear_reads.clear();
                return Err(Conflict::WithinStep {
                    first: written,
                    second: tag,
                });
            }
        }
        cache.clear_reads.clear();
        cache.clear_reads.extend_from_slice(&reads);
        Ok(StepClaims {
            writes: sorted,
            reads,
        })
    }
}

impl StepClaims {
    /// The read list, for reuse.
    pub fn into_reads(self) -> Vec<(Extent, usize)> {
        let mut reads = self.reads;
        reads.clear();
        reads
    }
}

/// The tag of one of `mine`'s arrays that conflicts with `other`, a step running on another
/// thread: a write of either touching anything of the other.
fn conflict_between(mine: &StepClaims, other: &StepClaims) -> Option<usize> {
    for &(w, tag) in mine.writes.iter() {
        if other.writes.overlapping(&w).is_some() {
            return Some(tag);
        }
    }
    for &(r, tag) in &mine.reads {
        if other.writes.overlapping(&r).is_some() {
            return Some(tag);
        }
    }
    other
        .reads
        .iter()
        .find_map(|(r, _)| mine.writes.overlapping(r))
}

/// The claims of the steps running now, process-wide.
///
/// std's mutex and condition variable, not parking_lot's: parking_lot parks waiting threads in a
/// process-wide table, and a child process inherits that table with the entries (and perhaps the
/// locks) of threads that do not exist in it, so unlocking in the child after `fork()` could hand
/// the lock to a dead thread and hang. std's are a futex word each on Linux (a mutex of the
/// platform elsewhere), which the forking thread can hold across `fork()` and release in both
/// processes. No code panics while holding it; a poisoned lock is used as it is.
static ACTIVE: Mutex<Vec<Arc<StepClaims>>> = Mutex::new(Vec::new());
/// Notified whenever a step releases its claims.
static RELEASED: Condvar = Condvar::new();

fn running() -> MutexGuard<'static, Vec<Arc<StepClaims>>> {
    ACTIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// The lock of `ACTIVE`, held by the forking thread from before `fork()` to after it.
    static HELD_ACROSS_FORK: Cell<Option<MutexGuard<'static, Vec<Arc<StepClaims>>>>> =
        const { Cell::new(None) };
}

fn conflict_with_running(mine: &StepClaims, running: &[Arc<StepClaims>]) -> Option<usize> {
    running
        .iter()
        .find_map(|other| conflict_between(mine, other))
}

/// Held while a step runs; dropping it releases the step's memory.
#[derive(Debug)]
pub struct Registration(Arc<StepClaims>);

impl Registration {
    /// Registers `claims`, unless they conflict with a step running on another thread.
    pub fn try_new(claims: &Arc<StepClaims>) -> Result<Registration, Conflict> {
        let mut running = running();
        if let Some(tag) = conflict_with_running(claims, &running) {
            return Err(Conflict::OtherStep { tag });
        }
        running.push(Arc::clone(claims));
        Ok(Registration(Arc::clone(claims)))
    }

    /// Registers `claims`, first waiting for every conflicting step to finish: steps that share
    /// memory run one after the other. A waiting step holds no claims, so two steps can never
    /// wait for each other. Call it with the GIL released, and run and drop the registration
    /// before taking the GIL back: `fork()` holds the GIL while it waits for running steps to
    /// finish, so a registration held by a thread waiting for the GIL would stall it.
    pub fn waiting(claims: &Arc<StepClaims>) -> Registration {
        let mut running = running();
        while conflict_with_running(claims, &running).is_some() {
            running = RELEASED
                .wait(running)
                .unwrap_or_else(PoisonError::into_inner);
        }
        running.push(Arc::clone(claims));
        Registration(Arc::clone(claims))
    }

    /// Whether this registration is for exactly these claims.
    pub fn covers(&self, claims: &Arc<StepClaims>) -> bool {
        Arc::ptr_eq(&self.0, claims)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = running();
        if let Some(i) = running.iter().position(|c| Arc::ptr_eq(c, &self.0)) {
            running.swap_remove(i);
        }
        RELEASED.notify_all();
    }
}

/// The longest `fork()` waits for steps running on other threads to finish.
const FORK_WAIT: Duration = Duration::from_secs(10);

/// Before `fork()`: wait (a bounded time) until no step is running, then hold the registry's lock
/// across the fork, so that the child's copy of it is consistent and its memory is not caught
/// half-written by a step of the parent.
pub(super) fn before_fork() {
    let deadline = Instant::now() + FORK_WAIT;
    let mut running = running();
    while !running.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        running = RELEASED
            .wait_timeout(running, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    HELD_ACROSS_FORK.set(Some(running));
}

/// After `fork()`, in the parent: release the lock taken before it.
pub(super) fn after_fork_in_parent() {
    drop(HELD_ACROSS_FORK.take());
}

/// After `fork()`, in the child: the steps the parent was running have no thread here; forget
/// their claims, or anything touching that memory would wait forever. (The forking thread is the
/// child's only thread, with its thread-locals: it still holds the lock.)
pub(super) fn after_fork_in_child() {
    if let Some(mut running) = HELD_ACROSS_FORK.take() {
        running.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: usize, end: usize) -> Extent {
        Extent { start, end }
    }

    fn tagged(v: &[(usize, usize)], base: usize) -> Vec<(Extent, usize)> {
        v.iter()
            .enumerate()
            .map(|(i, &(a, b))| (e(a, b), base + i))
            .collect()
    }

    fn claims(writes: &[(usize, usize)], reads: &[(usize, usize)]) -> Result<StepClaims, Conflict> {
        let ids = 0..writes.len() as u64;
        StepClaims::check(
            ids,
            || tagged(writes, 0),
            tagged(reads, 100),
            &mut WriteSetCache::default(),
        )
    }

    #[test]
    fn overlapping_writes_are_found_even_when_not_adjacent() {
        let err = claims(&[(0, 100), (200, 300), (10, 20)], &[]).unwrap_err();
        assert_eq!(
            err,
            Conflict::WithinStep {
                first: 0,
                second: 2
            }
        );
    }

    #[test]
    fn touching_extents_do_not_overlap() {
        // Two parameters may share one gradient (reads may overlap each other).
        assert!(claims(&[(0, 100), (100, 200)], &[(200, 300), (200, 300)]).is_ok());
    }

    #[test]
    fn a_read_inside_a_write_is_found() {
        let err = claims(&[(0, 100), (500, 600)], &[(550, 551)]).unwrap_err();
        assert_eq!(
            err,
            Conflict::WithinStep {
                first: 1,
                second: 100
            }
        );
    }

    #[test]
    fn the_write_set_is_reused_while_its_ids_are_unchanged_and_rebuilt_when_not() {
        let mut cache = WriteSetCache::default();
        let writes = || tagged(&[(0, 10), (10, 20)], 0);
        let a = StepClaims::check([7, 8].into_iter(), writes, vec![], &mut cache).unwrap();
        let never = || -> Vec<(Extent, usize)> { panic!("an unchanged set is not rebuilt") };
        let b = StepClaims::check([7, 8].into_iter(), never, vec![], &mut cache).unwrap();
        assert!(Arc::ptr_eq(&a.writes, &b.writes));
        let moved = || tagged(&[(0, 10), (5, 20)], 0);
        assert!(StepClaims::check([7, 9].into_iter(), moved, vec![], &mut cache).is_err());
        let c = StepClaims::check(
            [7].into_iter(),
            || tagged(&[(0, 10)], 0),
            tagged(&[(10, 11)], 5),
            &mut cache,
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&a.writes, &c.writes));
        // A prefix of the last sequence is a different sequence.
        let d = StepClaims::check(
            [7].into_iter(),
            || tagged(&[(0, 10)], 0),
            vec![],
            &mut cache,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&c.writes, &d.writes));
        let e2 = StepClaims::check([7, 8].into_iter(), writes, vec![], &mut cache).unwrap();
        assert!(!Arc::ptr_eq(&d.writes, &e2.writes));
    }

    #[test]
    fn a_read_found_clear_is_looked_up_again_once_it_moves_or_the_writes_change() {
        let mut cache = WriteSetCache::default();
        let writes = || tagged(&[(0, 10), (20, 30)], 0);
        let clear = tagged(&[(10, 20), (40, 50)], 100);
        assert!(StepClaims::check([1, 2].into_iter(), writes, clear.clone(), &mut cache).is_ok());
        // The second gradient now lands on the second parameter: found though the first is cached.
        let moved = tagged(&[(10, 20), (25, 26)], 100);
        let err = StepClaims::check([1, 2].into_iter(), writes, moved, &mut cache).unwrap_err();
        assert_eq!(
            err,
            Conflict::WithinStep {
                first: 1,
                second: 101
            }
        );
        // Reads once clear are checked again against a new write set that covers them.
        assert!(StepClaims::check([1, 2].into_iter(), writes, clear.clone(), &mut cache).is_ok());
        let covering = || tagged(&[(0, 10), (40, 60)], 0);
        let err = StepClaims::check([1, 3].into_iter(), covering, clear, &mut cache).unwrap_err();
        assert_eq!(
            err,
            Conflict::WithinStep {
                first: 1,
                second: 101
            }
        );
    }

    #[test]
    fn concurrent_steps_on_the_same_memory_conflict_until_released() {
        // Addresses far from anything real, so parallel tests cannot collide.
        let base = usize::MAX / 2;
        let first = Arc::new(claims(&[(base, base + 64)], &[(base + 1000, base + 1064)]).unwrap());
        let held = Registration::try_new(&first).unwrap();

        let writes_read = Arc::new(claims(&[(base + 1032, base + 1040)], &[]).unwrap());
        assert_eq!(
            Registration::try_new(&writes_read).unwrap_err(),
            Conflict::OtherStep { tag: 0 }
        );
        let reads_written = Arc::new(claims(&[], &[(base + 10, base + 11)]).unwrap());
        assert_eq!(
            Registration::try_new(&reads_written).unwrap_err(),
            Conflict::OtherStep { tag: 100 }
        );
        let reads_read = Arc::new(claims(&[], &[(base + 1000, base + 1064)]).unwrap());
        assert!(Registration::try_new(&reads_read).is_ok());

        drop(held);
        let again = Arc::new(claims(&[(base, base + 64)], &[]).unwrap());
        assert!(Registration::try_new(&again).is_ok());
    }

    #[test]
    fn a_conflicting_step_waits_for_the_running_one() {
        let base = usize::MAX / 4;
        let claim = move || Arc::new(claims(&[(base, base + 64)], &[]).unwrap());
        let held = Registration::waiting(&claim());
        let (sender, receiver) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _second = Registration::waiting(&claim());
            sender.send(()).unwrap();
        });
        assert!(receiver
            .recv_timeout(std::time::Duration::from_millis(100))
            .is_err());
        drop(held);
        receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiting step goes ahead once the first is released");
        waiter.join().unwrap();
    }
}
