//! A step count kept in memory, as torch keeps it: `state["step"]` is a one-element float32 or
//! float64 tensor that each step reads and then writes with the new count.
//!
//! The count is memory the step writes, so it is claimed with the step's other written arrays:
//! a count that shares memory with a parameter, a state array or another count is refused, and a
//! step on another thread that uses it is waited for. It is written when the update has run,
//! while the step's memory is still claimed. Reads and writes are atomic: a count is read before
//! its step is registered (the step number decides the coefficients), when a step on another
//! thread that shares the state could be writing it.

use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::memory::{Element, Extent};

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
    pub fn read(self) -> f64 {
        // SAFETY: `new`'s contract: an aligned live element of this type for `'o`. Other steps
        // write a count atomically, under their claims. The torch front end reads a count before
        // its step is registered; that read could meet plain stores only if the count lay inside
        // an array another thread's step writes, which takes a state built by hand to share an
        // optimizer's memory (docs/guarantees.md, "Not promised").
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

    /// Stores `count`, rounded to the counter's type.
    pub fn write(self, count: u64) {
        // SAFETY: as in `read`.
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
        assert_eq!(a.read(), 7.0);
        assert_eq!(b.read(), 3.0);
        // A float32 count rounds as torch's float32 `step += 1` does past 2**24.
        a.write((1 << 24) + 1);
        b.write((1 << 53) - 1);
        assert_eq!(single, [0.0, 16_777_216.0, 0.0]);
        assert_eq!(double, [9_007_199_254_740_991.0]);
        assert_eq!(a.extent().end - a.extent().start, 4);
        assert_eq!(b.extent().end - b.extent().start, 8);
        assert_ne!(a.id(), b.id());
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
