//! Exclusive access to memory for the duration of a step.
//!
//! Before a step turns numpy buffers into `&mut [T]`, it must know that (1) no two arrays it
//! writes overlap, (2) no array it reads overlaps one it writes, and (3) no other step running
//! on another thread touches the bytes it writes, or writes the bytes it reads. This module
//! checks all three on byte extents (the lowest to the highest byte an array can touch,
//! whatever its strides), which is conservative: two interleaved views of one buffer count
//! as overlapping.
//!
//! rust-numpy's borrow table gives the same guarantees per array, but it costs about 0.45 us
//! per array (a hash map per base object, allocated and freed on every borrow), which was half
//! of the whole per-parameter cost of a step over many small tensors. Here a step's claims are
//! sorted once, and registering them with other running steps takes one short lock.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The bytes `[start, end)` an array can touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub start: usize,
    pub end: usize,
}

impl Extent {
    /// The extent of an array whose first element is at `data`, with `shape` and byte
    /// `strides` (negative strides allowed). `None` for an array with no elements, which
    /// touches no memory.
    pub fn of_array(
        data: usize,
        shape: &[usize],
        strides: &[isize],
        item_size: usize,
    ) -> Option<Self> {
        if shape.contains(&0) {
            return None;
        }
        let (mut low, mut high) = (0isize, 0isize);
        for (&n, &stride) in shape.iter().zip(strides) {
            let span = (n as isize - 1).checked_mul(stride)?;
            if span < 0 {
                low = low.checked_add(span)?;
            } else {
                high = high.checked_add(span)?;
            }
        }
        let start = data.checked_add_signed(low)?;
        let end = data.checked_add_signed(high)?.checked_add(item_size)?;
        Some(Extent { start, end })
    }
}

/// Extents sorted by start, with the largest end so far, for overlap queries in O(log n).
#[derive(Debug, Default)]
struct ExtentSet {
    items: Vec<(Extent, usize)>,
    max_end: Vec<(usize, usize)>,
}

impl ExtentSet {
    fn push(&mut self, extent: Extent, tag: usize) {
        self.items.push((extent, tag));
    }

    fn seal(&mut self) {
        self.items.sort_unstable_by_key(|(e, _)| e.start);
        self.max_end.clear();
        let mut best = (0usize, usize::MAX);
        for &(e, tag) in &self.items {
            if e.end > best.0 {
                best = (e.end, tag);
            }
            self.max_end.push(best);
        }
    }

    /// The tag of an extent in the set that overlaps `e`, if any (after `seal`).
    fn overlapping(&self, e: &Extent) -> Option<usize> {
        let before = self.items.partition_point(|(x, _)| x.start < e.end);
        let (end, tag) = *self.max_end.get(before.checked_sub(1)?)?;
        (end > e.start).then_some(tag)
    }

    /// Two members that overlap each other, if any (after `seal`).
    fn first_overlap(&self) -> Option<(usize, usize)> {
        (1..self.items.len()).find_map(|i| {
            let (end, tag) = self.max_end[i - 1];
            (end > self.items[i].0.start).then_some((tag, self.items[i].1))
        })
    }
}

/// What a step reads and writes. Tags are the caller's names for arrays.
#[derive(Debug, Default)]
pub struct Claims {
    writes: ExtentSet,
    reads: ExtentSet,
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

impl Claims {
    /// An empty set of claims, with room for `arrays` extents.
    pub fn with_capacity(arrays: usize) -> Self {
        Claims {
            writes: ExtentSet {
                items: Vec::with_capacity(arrays),
                max_end: Vec::new(),
            },
            reads: ExtentSet::default(),
        }
    }

    /// The step writes (and reads) `extent`.
    pub fn write(&mut self, extent: Extent, tag: usize) {
        self.writes.push(extent, tag);
    }

    /// The step only reads `extent`.
    pub fn read(&mut self, extent: Extent, tag: usize) {
        self.reads.push(extent, tag);
    }

    /// Checks that no written extent overlaps another written or read one.
    pub fn check(mut self) -> Result<Checked, Conflict> {
        self.writes.seal();
        self.reads.seal();
        if let Some((first, second)) = self.writes.first_overlap() {
            return Err(Conflict::WithinStep { first, second });
        }
        for &(read, tag) in &self.reads.items {
            if let Some(written) = self.writes.overlapping(&read) {
                return Err(Conflict::WithinStep {
                    first: written,
                    second: tag,
                });
            }
        }
        Ok(Checked(Arc::new(self)))
    }
}

/// Claims that passed [`Claims::check`], ready to register.
#[derive(Debug)]
pub struct Checked(Arc<Claims>);

/// The claims of the steps running now.
static ACTIVE: Mutex<Vec<Arc<Claims>>> = Mutex::new(Vec::new());
/// Notified whenever a step releases its claims.
static RELEASED: Condvar = Condvar::new();

fn active() -> MutexGuard<'static, Vec<Arc<Claims>>> {
    // The list is consistent at every point; a panic elsewhere cannot leave it half-edited.
    ACTIVE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held while a step runs; dropping it releases the step's memory.
#[derive(Debug)]
pub struct Registration(Arc<Claims>);

fn conflict_with_running(mine: &Claims, running: &[Arc<Claims>]) -> Option<Conflict> {
    for other in running {
        for &(w, tag) in &mine.writes.items {
            if other.writes.overlapping(&w).is_some() || other.reads.overlapping(&w).is_some() {
                return Some(Conflict::OtherStep { tag });
            }
        }
        for &(r, tag) in &mine.reads.items {
            if other.writes.overlapping(&r).is_some() {
                return Some(Conflict::OtherStep { tag });
            }
        }
    }
    None
}

impl Checked {
    /// Registers the claims, unless they conflict with a step running on another thread.
    pub fn register(&self) -> Result<Registration, Conflict> {
        let mut running = active();
        if let Some(conflict) = conflict_with_running(&self.0, &running) {
            return Err(conflict);
        }
        running.push(Arc::clone(&self.0));
        Ok(Registration(Arc::clone(&self.0)))
    }

    /// Registers the claims, first waiting for every conflicting step to finish: steps that
    /// share memory run one after the other. A waiting step holds no claims, so two steps
    /// can never wait for each other.
    pub fn register_waiting(&self) -> Registration {
        let mut running = active();
        while conflict_with_running(&self.0, &running).is_some() {
            running = RELEASED
                .wait(running)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        running.push(Arc::clone(&self.0));
        Registration(Arc::clone(&self.0))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut running = active();
        if let Some(i) = running.iter().position(|c| Arc::ptr_eq(c, &self.0)) {
            running.swap_remove(i);
        }
        RELEASED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: usize, end: usize) -> Extent {
        Extent { start, end }
    }

    #[test]
    fn extent_covers_negative_and_positive_strides() {
        // shape (3, 4) float32, C order, starting at 1000.
        assert_eq!(
            Extent::of_array(1000, &[3, 4], &[16, 4], 4),
            Some(e(1000, 1048))
        );
        // The same data reversed along both axes: starts at the last element.
        assert_eq!(
            Extent::of_array(1044, &[3, 4], &[-16, -4], 4),
            Some(e(1000, 1048))
        );
        // A column slice: one element every 16 bytes.
        assert_eq!(Extent::of_array(1004, &[3], &[16], 4), Some(e(1004, 1040)));
        assert_eq!(Extent::of_array(1000, &[0, 4], &[16, 4], 4), None);
        assert_eq!(Extent::of_array(1000, &[], &[], 8), Some(e(1000, 1008)));
    }

    #[test]
    fn overlapping_writes_are_found_even_when_not_adjacent() {
        let mut c = Claims::default();
        c.write(e(0, 100), 0);
        c.write(e(200, 300), 1);
        c.write(e(10, 20), 2);
        assert_eq!(
            c.check().unwrap_err(),
            Conflict::WithinStep {
                first: 0,
                second: 2
            }
        );
    }

    #[test]
    fn touching_extents_do_not_overlap() {
        let mut c = Claims::default();
        c.write(e(0, 100), 0);
        c.write(e(100, 200), 1);
        c.read(e(200, 300), 2);
        c.read(e(200, 300), 3); // two parameters may share one gradient
        assert!(c.check().is_ok());
    }

    #[test]
    fn a_read_inside_a_write_is_found() {
        let mut c = Claims::default();
        c.write(e(0, 100), 0);
        c.write(e(500, 600), 1);
        c.read(e(550, 551), 7);
        assert_eq!(
            c.check().unwrap_err(),
            Conflict::WithinStep {
                first: 1,
                second: 7
            }
        );
    }

    #[test]
    fn concurrent_steps_on_the_same_memory_conflict_until_released() {
        // Addresses far from anything real, so parallel tests cannot collide.
        let base = usize::MAX / 2;
        let mut first = Claims::default();
        first.write(e(base, base + 64), 0);
        first.read(e(base + 1000, base + 1064), 1);
        let held = first.check().unwrap().register().unwrap();

        let mut writes_read = Claims::default();
        writes_read.write(e(base + 1032, base + 1040), 5);
        assert_eq!(
            writes_read.check().unwrap().register().unwrap_err(),
            Conflict::OtherStep { tag: 5 }
        );

        let mut reads_read = Claims::default();
        reads_read.read(e(base + 1000, base + 1064), 0);
        assert!(reads_read.check().unwrap().register().is_ok());

        drop(held);
        let mut again = Claims::default();
        again.write(e(base, base + 64), 0);
        assert!(again.check().unwrap().register().is_ok());
    }

    #[test]
    fn a_conflicting_step_waits_for_the_running_one() {
        let base = usize::MAX / 4;
        let claim = move || {
            let mut c = Claims::default();
            c.write(e(base, base + 64), 0);
            c.check().unwrap()
        };
        let held = claim().register_waiting();
        let (sender, receiver) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _second = claim().register_waiting();
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
