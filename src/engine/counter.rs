//! A step count kept in memory, as torch keeps it: `state["step"]` is a one-element float32 or
//! float64 tensor that each step reads and then writes with the new count.
//!
//! The count is memory the step writes, so it is claimed with the step's other written arrays:
//! a count that shares memory with a parameter, a state array or another count is refused, and a
//! step on another thread that uses it is waited for. It is read only once the step's memory is
//! claimed ([`StepCounter::next_step`], in `StepMemory::jobs`), so the count a step uses is the
//! one no other step can change before it is written back, when the update has run and before
//! the claims are released. Two optimizers whose states share one count, stepped at once from
//! two threads, therefore count each step once, in the order their claims are granted.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::memory::{Element, Extent};
use crate::kernel::MAX_STEP;

/// Where a step count is, and its type, for `'o`: one word, its lowest bit set for float64 (an
/// aligned float's address has it clear), so that an `Option` of it takes no more room in a
/// step's compact per-tensor records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepCounter<'o> {
    tagged: NonZeroUsize,
    memory: PhantomData<&'o ()>,
}

impl<'o> StepCounter<'o> {
    /// The count at `address`, of type `element`; `None` unless `element` is float32 or float64,
    /// `address` is not null, and it is aligned for the type.
    ///
    /// # Safety
    /// When `Some`, `address` must be the address of a live element of type `element` that stays
    /// valid (not freed, not moved) for `'o`. Other code may use it meanwhile only as it may use
    /// an array a step writes: through steps, whose claims order their accesses, or atomically.
    pub unsafe fn new(address: usize, element: Element) -> Option<Self> {
        let double = match element {
            Element::Float32 => false,
            Element::Float64 => true,
            _ => return None,
        };
        if address % element.size() != 0 {
            return None;
        }
        Some(StepCounter {
            tagged: NonZeroUsize::new(address | usize::from(double))?,
            memory: PhantomData,
        })
    }

    fn address(self) -> usize {
        self.tagged.get() & !1
    }

    fn is_double(self) -> bool {
        self.tagged.get() & 1 == 1
    }

    /// The bytes of the count.
    pub fn extent(self) -> Extent {
        let size = if self.is_double() { 8 } else { 4 };
        Extent {
            start: self.address(),
            end: self.address() + size,
        }
    }

    /// Tells counters apart: equal ids, the same memory and type.
    pub fn id(self) -> u64 {
        self.tagged.get() as u64
    }

    /// The count now, as a float64 (a float32 count is exact in it).
    ///
    /// # Safety
    /// As for [`Self::next_step`].
    unsafe fn read(self) -> f64 {
        // SAFETY: `new`'s contract: an aligned live element of this type for `'o`, which other
        // code uses only through steps or atomically. The caller holds claims that cover the
        // count's bytes, so no other step writes them meanwhile, neither as a count (atomically)
        // nor as part of an array (with plain stores).
        unsafe {
            if self.is_double() {
                f64::from_bits(
                    (*AtomicU64::from_ptr(self.address() as *mut u64)).load(Ordering::Relaxed),
                )
            } else {
                f64::from(f32::from_bits(
                    (*AtomicU32::from_ptr(self.address() as *mut u32)).load(Ordering::Relaxed),
                ))
            }
        }
    }

    /// The number of the step that this count starts, read now: the count plus one, added in
    /// the counter's own type as torch's `step_t += 1` adds it (a float32 count stops at 2**24,
    /// and the bias correction then uses the count it stopped at). `None` unless the count is a
    /// whole number from 0 to below [`MAX_STEP`].
    ///
    /// # Safety
    /// The caller holds a registration of claims that cover the count (those of the step that
    /// counts in it), or knows that no step runs that could write it.
    pub unsafe fn next_step(self) -> Option<u64> {
        // SAFETY: this function's contract.
        let count = unsafe { self.read() };
        if !(count >= 0.0 && count.fract() == 0.0 && count < MAX_STEP as f64) {
            return None;
        }
        let next = if self.is_double() {
            count + 1.0
        } else {
            f64::from(count as f32 + 1.0)
        };
        Some(next as u64)
    }

    /// Stores `count`, rounded to the counter's type.
    ///
    /// # Safety
    /// As for [`Self::next_step`].
    pub unsafe fn write(self, count: u64) {
        // SAFETY: as in `read`, whose contract this function's is.
        unsafe {
            if self.is_double() {
                (*AtomicU64::from_ptr(self.address() as *mut u64))
                    .store((count as f64).to_bits(), Ordering::Relaxed);
            } else {
                (*AtomicU32::from_ptr(self.address() as *mut u32))
                    .store((count as f32).to_bits(), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_read_and_written_in_its_own_type() {
        let mut single = [0.0f32, 7.0, 0.0];
        let mut double = [3.0f64];
        // SAFETY: both live and aligned for the test's whole body, accessed only through these.
        let (a, b) = unsafe {
            (
                StepCounter::new(single.as_mut_ptr().add(1) as usize, Element::Float32).unwrap(),
                StepCounter::new(double.as_mut_ptr() as usize, Element::Float64).unwrap(),
            )
        };
        // SAFETY (the reads and writes below): no step runs in this test.
        unsafe {
            assert_eq!(a.read(), 7.0);
            assert_eq!(b.read(), 3.0);
            // A float32 count rounds as torch's float32 `step += 1` does past 2**24.
            a.write((1 << 24) + 1);
            b.write((1 << 53) - 1);
        }
        assert_eq!(single, [0.0, 16_777_216.0, 0.0]);
        assert_eq!(double, [9_007_199_254_740_991.0]);
        assert_eq!(a.extent().end - a.extent().start, 4);
        assert_eq!(b.extent().end - b.extent().start, 8);
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn the_next_step_is_counted_in_the_counters_type_and_only_from_a_count() {
        let mut single = [0.0f32];
        let mut double = [0.0f64];
        let (ps, pd) = (single.as_mut_ptr(), double.as_mut_ptr());
        // SAFETY: both live and aligned for the test's whole body, accessed only through these
        // pointers and counters, and no step runs in this test.
        unsafe {
            let a = StepCounter::new(ps as usize, Element::Float32).unwrap();
            let b = StepCounter::new(pd as usize, Element::Float64).unwrap();
            assert_eq!((a.next_step(), b.next_step()), (Some(1), Some(1)));
            // 2**24 + 1 is not a float32: torch's float32 count stays at 2**24, and so does
            // this one.
            ps.write(16_777_216.0);
            pd.write(16_777_216.0);
            assert_eq!(a.next_step(), Some(1 << 24));
            assert_eq!(b.next_step(), Some((1 << 24) + 1));
            for bad in [-1.0, 0.5, f64::NAN, f64::INFINITY, (1u64 << 53) as f64] {
                pd.write(bad);
                assert_eq!(b.next_step(), None, "{bad}");
            }
            ps.write(-0.0);
            assert_eq!(a.next_step(), Some(1));
        }
    }

    #[test]
    fn only_aligned_float_counts_are_made() {
        let mut value = [0.0f64; 2];
        let base = value.as_mut_ptr() as usize;
        // SAFETY: `None` is expected for each; nothing is read or written.
        unsafe {
            assert!(StepCounter::new(base + 2, Element::Float32).is_none());
            assert!(StepCounter::new(base + 4, Element::Float64).is_none());
            assert!(StepCounter::new(0, Element::Float32).is_none());
            assert!(StepCounter::new(base, Element::UInt8).is_none());
        }
    }
}
