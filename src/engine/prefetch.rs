//! Asking the CPU to start loading memory that a step will soon touch.
//!
//! A step over thousands of small tensors is bound by memory latency, not bandwidth: each tensor's
//! arrays are separate allocations, so the hardware prefetcher, which follows sequential streams,
//! cannot guess where the next tensor lives, and every tensor starts with a cache miss on each of
//! its arrays. Running jobs in order while hinting the arrays of a job a few places ahead overlaps
//! those misses with useful work. A hint never faults and never changes a value, so it is safe on
//! any address.

/// How many jobs ahead of the one running the memory is requested: enough to cover a miss (about
/// a hundred nanoseconds) with the work of a few small tensors, few enough that the lines are
/// still in cache when their turn comes.
pub const AHEAD: usize = 8;

/// Hints the cache lines holding the first and the last of `bytes` bytes at `address` (both lines
/// of a small array that straddles a line boundary; the start of a large one, whose sequential
/// stream the hardware then follows).
#[inline(always)]
pub fn prefetch_range(address: usize, bytes: usize) {
    if bytes == 0 {
        return;
    }
    hint(address);
    hint(address.wrapping_add(bytes - 1));
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hint(address: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: PREFETCHT0 (SSE, part of every x86_64) is only a hint: it does not fault on any
    // address, mapped or not, and reads or writes nothing visible to the program.
    #[allow(unused_unsafe)]
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(address as *const i8)
    };
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn hint(_address: usize) {}
