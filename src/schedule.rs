//! Splitting one optimizer step (many tensors, mixed sizes and dtypes) across threads.
//!
//! A step is a list of jobs, one per tensor. Their total cost (bytes moved) decides where
//! they run: below [`SERIAL_BELOW_BYTES`] on the calling thread, because waking the pool
//! costs more than the work; above it the jobs are cut into tasks of about equal cost, where
//! a task may hold many small tensors and a large tensor may be spread over many tasks, and
//! the tasks go to the thread pool.

use rayon::prelude::*;

use crate::dispatch::{self, Isa, Op};
use crate::kernel::{Coefficients, Float, TensorSlices};
use crate::pool;

/// Bytes one element moves: param, grad, exp_avg and exp_inf read; param, exp_avg and
/// exp_inf written.
pub const STREAMS_PER_ELEMENT: usize = 7;

/// Below this many bytes moved, a step stays on the calling thread. Measured with
/// `cargo bench -- threshold` on the 2-core machine: handing work to the pool and waiting
/// for it costs about 14 us; one thread did 64K float32 elements (1.8 MB moved) in 18 us
/// against 29 us on the pool, and 128K (3.5 MB) in 42 us against 37-40 us.
pub const SERIAL_BELOW_BYTES: usize = 4 << 20;

/// The cost of one task handed to a worker: large enough that the per-task overhead (about a
/// microsecond) is lost in the noise, small enough to balance the work between threads.
pub const TASK_BYTES: usize = 1 << 20;

/// Split points are multiples of this many elements, so that two threads never write the
/// same cache line of a tensor whose data starts on a cache line.
const SPLIT_ALIGN: usize = 64;

/// The update of one tensor (or a piece of one), in its own dtype.
pub enum Job<'a> {
    F32(TensorSlices<'a, f32>, Coefficients<f32>),
    F64(TensorSlices<'a, f64>, Coefficients<f64>),
}

impl<'a> Job<'a> {
    fn element_size(&self) -> usize {
        match self {
            Job::F32(..) => 4,
            Job::F64(..) => 8,
        }
    }

    fn len(&self) -> usize {
        match self {
            Job::F32(s, _) => s.len(),
            Job::F64(s, _) => s.len(),
        }
    }

    /// Bytes this job moves through memory.
    pub fn cost(&self) -> usize {
        self.len() * self.element_size() * STREAMS_PER_ELEMENT
    }

    fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            Job::F32(s, c) => {
                let (a, b) = s.split_at(mid);
                (Job::F32(a, c), Job::F32(b, c))
            }
            Job::F64(s, c) => {
                let (a, b) = s.split_at(mid);
                (Job::F64(a, c), Job::F64(b, c))
            }
        }
    }

    fn run(self, isa: Isa, op: Op) {
        match self {
            Job::F32(s, c) => dispatch::run_with(isa, op, s, &c),
            Job::F64(s, c) => dispatch::run_with(isa, op, s, &c),
        }
    }
}

impl<'a> From<(TensorSlices<'a, f32>, Coefficients<f32>)> for Job<'a> {
    fn from((s, c): (TensorSlices<'a, f32>, Coefficients<f32>)) -> Self {
        Job::F32(s, c)
    }
}

impl<'a> From<(TensorSlices<'a, f64>, Coefficients<f64>)> for Job<'a> {
    fn from((s, c): (TensorSlices<'a, f64>, Coefficients<f64>)) -> Self {
        Job::F64(s, c)
    }
}

/// A generic constructor, for code that is itself generic over the element type.
pub trait IntoJob<'a>: Float {
    fn job(slices: TensorSlices<'a, Self>, coefficients: Coefficients<Self>) -> Job<'a>;
}

impl<'a> IntoJob<'a> for f32 {
    fn job(slices: TensorSlices<'a, f32>, coefficients: Coefficients<f32>) -> Job<'a> {
        Job::F32(slices, coefficients)
    }
}

impl<'a> IntoJob<'a> for f64 {
    fn job(slices: TensorSlices<'a, f64>, coefficients: Coefficients<f64>) -> Job<'a> {
        Job::F64(slices, coefficients)
    }
}

/// Cuts `jobs` into about `tasks` lists of about `total / tasks` bytes each, in order.
///
/// Task `k` ends where the running cost crosses `(k + 1) * total / tasks`; a tensor that
/// crosses it is split at the nearest multiple of [`SPLIT_ALIGN`] elements.
fn partition(jobs: Vec<Job<'_>>, total: usize, tasks: usize) -> Vec<Vec<Job<'_>>> {
    let per_task = total.div_ceil(tasks.max(1)).max(1);
    let mut out: Vec<Vec<Job<'_>>> = Vec::with_capacity(tasks + 1);
    let mut current: Vec<Job<'_>> = Vec::new();
    let mut position = 0usize;
    let mut boundary = per_task;
    for mut job in jobs {
        loop {
            let cost = job.cost();
            let room = boundary - position;
            let bytes_per_element = job.element_size() * STREAMS_PER_ELEMENT;
            let take = if cost <= room {
                job.len()
            } else {
                (room / bytes_per_element + SPLIT_ALIGN / 2) / SPLIT_ALIGN * SPLIT_ALIGN
            };
            if take >= job.len() {
                position += cost;
                current.push(job);
                if position >= boundary {
                    out.push(std::mem::take(&mut current));
                    boundary = position + per_task;
                }
                break;
            }
            if take > 0 {
                let (head, tail) = job.split_at(take);
                position += head.cost();
                current.push(head);
                job = tail;
            }
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            boundary = boundary.max(position) + per_task;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Runs the Adamax update of every job, on the calling thread or on the pool, and returns
/// when all are done.
pub fn run_jobs(jobs: Vec<Job<'_>>) {
    run_jobs_with(jobs, Op::Adamax)
}

/// Runs `op` over every job, scheduled exactly as [`run_jobs`] schedules the update.
pub fn run_jobs_with(jobs: Vec<Job<'_>>, op: Op) {
    let isa = dispatch::detected();
    let total: usize = jobs.iter().map(Job::cost).sum();
    let pool = if total >= SERIAL_BELOW_BYTES && pool::num_threads() > 1 {
        pool::pool()
    } else {
        None
    };
    let Some(pool) = pool else {
        jobs.into_iter().for_each(|job| job.run(isa, op));
        return;
    };
    let tasks = total.div_ceil(TASK_BYTES).max(pool.current_num_threads());
    let tasks = partition(jobs, total, tasks);
    pool.install(|| {
        tasks
            .into_par_iter()
            .for_each(|task| task.into_iter().for_each(|job| job.run(isa, op)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Hyperparameters;

    fn coefficients(step: u64) -> Coefficients<f32> {
        Hyperparameters {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            maximize: false,
            eps_inside_max: false,
            decoupled_weight_decay: false,
        }
        .coefficients(step)
    }

    /// Deterministic, varied values (no rand dependency needed for this).
    fn tensors(sizes: &[usize]) -> Vec<[Vec<f32>; 4]> {
        sizes
            .iter()
            .enumerate()
            .map(|(t, &n)| {
                let v = |k: usize| -> Vec<f32> {
                    (0..n)
                        .map(|i| {
                            (((i * 7919 + t * 104_729 + k * 31) % 1000) as f32 - 500.0) / 250.0
                        })
                        .collect()
                };
                [v(0), v(1), v(2), v(3).iter().map(|x| x.abs()).collect()]
            })
            .collect()
    }

    fn jobs(storage: &mut [[Vec<f32>; 4]]) -> Vec<Job<'_>> {
        storage
            .iter_mut()
            .enumerate()
            .map(|(t, [p, g, m, u])| {
                Job::F32(
                    TensorSlices::new(p, g, m, u).unwrap(),
                    coefficients(t as u64 + 1),
                )
            })
            .collect()
    }

    #[test]
    fn partitioned_run_equals_serial_run() {
        for sizes in [
            vec![0usize, 1, 63, 64, 65, 1000],
            vec![100_000],
            vec![16; 1000],
            vec![7, 300_000, 5, 1],
        ] {
            let mut expected = tensors(&sizes);
            jobs(&mut expected)
                .into_iter()
                .for_each(|j| j.run(Isa::Baseline, Op::Adamax));
            for tasks in [1, 2, 3, 7, 64] {
                let mut got = tensors(&sizes);
                let js = jobs(&mut got);
                let total: usize = js.iter().map(Job::cost).sum();
                let parts = partition(js, total, tasks);
                assert!(
                    parts.len() <= tasks + 1,
                    "{} tasks for {tasks}",
                    parts.len()
                );
                let part_total: usize = parts.iter().flatten().map(Job::cost).sum();
                assert_eq!(part_total, total);
                parts
                    .into_iter()
                    .flatten()
                    .for_each(|j| j.run(dispatch::detected(), Op::Adamax));
                assert_eq!(
                    got,
                    expected,
                    "sizes {:?}, {tasks} tasks",
                    &sizes[..sizes.len().min(4)]
                );
            }
        }
    }

    #[test]
    fn pieces_are_split_on_aligned_boundaries() {
        let mut storage = tensors(&[100_003]);
        let js = jobs(&mut storage);
        let total: usize = js.iter().map(Job::cost).sum();
        let parts = partition(js, total, 6);
        let pieces: Vec<usize> = parts.iter().flatten().map(Job::len).collect();
        assert!(pieces.len() >= 6);
        for len in &pieces[..pieces.len() - 1] {
            assert_eq!(len % SPLIT_ALIGN, 0, "{pieces:?}");
        }
    }

    #[test]
    fn run_jobs_on_the_pool_equals_serial() {
        let sizes = [5usize, 1 << 18, 3, 1 << 16];
        let mut expected = tensors(&sizes);
        jobs(&mut expected)
            .into_iter()
            .for_each(|j| j.run(Isa::Baseline, Op::Adamax));
        let mut got = tensors(&sizes);
        run_jobs(jobs(&mut got));
        assert_eq!(got, expected);
    }
}
