//! Buffers a step keeps for the next one.
//!
//! A step over 10,000 tensors builds several vectors of some megabytes in all. Allocated and
//! freed every step, they went back to the kernel (glibc trims the heap) and came back as fresh
//! pages: a third of the step was page faults. The caller keeps a [`StepBuffers`] and each step
//! reuses its allocations.

use super::claims::WriteSetCache;
use super::counter::StepCounter;
use super::job::Job;
use super::memory::Extent;
use super::step::CheckedTensor;

/// Moves an emptied vector's allocation into a vector of another element type with the same
/// layout (in practice the same type with other lifetimes, which a vector kept between steps
/// cannot name). Safe code: std's in-place `collect` reuses the allocation when the layouts match
/// (`recycling_keeps_the_allocation` checks it does); otherwise it allocates, which is only slower.
pub fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

/// What a step reuses of the previous one's memory.
#[derive(Default)]
pub struct StepBuffers {
    /// The sorted written set and what it was built from.
    pub(super) writes: WriteSetCache,
    pub(super) reads: Vec<(Extent, usize)>,
    pub(super) coefficient_of: Vec<u32>,
    pub(super) jobs: Vec<Job<'static>>,
    pub(super) split: Vec<Job<'static>>,
    pub(super) counters: Vec<(StepCounter<'static>, u64)>,
    tensors: Vec<CheckedTensor<'static>>,
}

impl StepBuffers {
    /// An empty vector for the checked tensors of a step.
    pub fn tensors<'o>(&mut self) -> Vec<CheckedTensor<'o>> {
        recycle(std::mem::take(&mut self.tensors))
    }

    pub(super) fn keep_tensors(&mut self, tensors: Vec<CheckedTensor<'_>>) {
        self.tensors = recycle(tensors);
    }

    /// Forgets the written set (when the arrays it came from may have changed under it).
    pub fn forget_writes(&mut self) {
        self.writes = WriteSetCache::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycling_keeps_the_allocation() {
        let value = 5u64;
        let mut v: Vec<&u64> = Vec::with_capacity(1000);
        v.push(&value);
        let address = v.as_ptr() as usize;
        let recycled: Vec<&'static u64> = recycle(v);
        assert!(recycled.is_empty());
        assert_eq!(recycled.capacity(), 1000);
        assert_eq!(recycled.as_ptr() as usize, address);
    }
}
