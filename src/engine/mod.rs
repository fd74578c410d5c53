//! The step engine: typed plans of which memory a step reads and writes, checked once and run on
//! the thread pool.
//!
//! It knows nothing of Python: front ends read their arrays into [`memory::ArrayMemory`]
//! snapshots, and everything here works on those.
//! - [`memory`]: arrays as plain descriptions (address, element type, shape, strides);
//! - [`step`]: checking a tensor's arrays, gathering a step, and turning it into jobs;
//! - [`claims`]: exclusive access to memory, within a step and across threads;
//! - [`counter`]: a step count kept in memory (torch's `state["step"]`), written by the step;
//! - [`job`]: the supported precisions and the typed work on one tensor;
//! - [`schedule`]: splitting a step's jobs across the pool; [`prefetch`]: hiding the memory
//!   latency of many small tensors;
//! - [`pool`]: the thread pool; [`fork`]: what `fork()` must not break;
//! - [`buffers`]: what a step keeps for the next one.

pub mod buffers;
pub mod claims;
pub mod counter;
pub mod fork;
pub mod job;
pub mod memory;
pub mod pool;
pub mod prefetch;
pub mod schedule;
pub mod step;
