//! Splitting one optimizer step (many tensors, mixed sizes and dtypes) across threads.
//!
//! A step is a list of jobs, one per tensor. Their total cost (bytes moved) decides where
//! they run: below [`SERIAL_BELOW_BYTES`] on the calling thread, because waking the pool
//! costs more than the work; above it the jobs are cut into tasks of about equal cost, where
//! a task may hold many small tensors and a large tensor may be spread over many tasks, and
//! the tasks go to the thread pool.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::dispatch::{self, Isa, Op};
use crate::kernel::{Coefficients, Float, TensorSlices};
use crate::pool;
use crate::precision::Storage;
use crate::strided::{adamax_update_strided, TensorViews};

/// Bytes one element moves with parameters stored as `P` and state as `S`: without master
/// weights param, grad, exp_avg and exp_inf are read and param, exp_avg and exp_inf written.
pub fn bytes_per_element<P, S>(master: bool) -> usize {
    let (p, s) = (std::mem::size_of::<P>(), std::mem::size_of::<S>());
    if master {
        // grad, master, exp_avg, exp_inf read; param, master, exp_avg, exp_inf written.
        2 * p + 6 * s
    } else {
        3 * p + 4 * s
    }
}

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

/// A combination of parameter storage, state storage and compute type the kernel supports.
pub trait Precision: 'static {
    type Param: Storage<Self::Compute>;
    type State: Storage<Self::Compute>;
    type Compute: Float;
    /// The job updating `slices`.
    fn job(
        slices: TensorSlices<'_, Self::Param, Self::State>,
        coefficients: Coefficients<Self::Compute>,
    ) -> Job<'_>;
    /// The job updating `views` (any layout).
    fn strided_job(
        views: TensorViews<'_, Self::Param, Self::State>,
        coefficients: Coefficients<Self::Compute>,
    ) -> StridedJob<'_>;
}

macro_rules! define_jobs {
    ($($variant:ident($p:ty, $s:ty, $c:ty)),* $(,)?) => {
        /// The update of one tensor (or a piece of one), with its storage and compute types.
        pub enum Job<'a> {
            $($variant(TensorSlices<'a, $p, $s>, Coefficients<$c>),)*
        }

        /// The update of one tensor whose arrays do not share one memory order.
        pub enum StridedJob<'a> {
            $($variant(TensorViews<'a, $p, $s>, Coefficients<$c>),)*
        }

        impl<'a> Job<'a> {
            fn len(&self) -> usize {
                match self {
                    $(Job::$variant(s, _) => s.len(),)*
                }
            }

            fn bytes_per_element(&self) -> usize {
                match self {
                    $(Job::$variant(s, _) => bytes_per_element::<$p, $s>(s.has_master()),)*
                }
            }

            fn split_at(self, mid: usize) -> (Self, Self) {
                match self {
                    $(Job::$variant(s, c) => {
                        let (a, b) = s.split_at(mid);
                        (Job::$variant(a, c), Job::$variant(b, c))
                    })*
                }
            }

            fn run(self, isa: Isa, op: Op) {
                match self {
                    $(Job::$variant(s, c) => dispatch::run_with(isa, op, s, &c),)*
                }
            }
        }

        impl StridedJob<'_> {
            /// Bytes this job moves through memory.
            pub fn cost(&self) -> usize {
                match self {
                    $(StridedJob::$variant(v, _) => v.len() * bytes_per_element::<$p, $s>(v.has_master()),)*
                }
            }

            /// Runs the update (on the calling thread).
            pub fn run(self) {
                match self {
                    $(StridedJob::$variant(v, c) => adamax_update_strided(v, &c),)*
                }
            }
        }

        $(
            impl Precision for ($p, $s) {
                type Param = $p;
                type State = $s;
                type Compute = $c;
                fn job(s: TensorSlices<'_, $p, $s>, c: Coefficients<$c>) -> Job<'_> {
                    Job::$variant(s, c)
                }
                fn strided_job(v: TensorViews<'_, $p, $s>, c: Coefficients<$c>) -> StridedJob<'_> {
                    StridedJob::$variant(v, c)
                }
            }
        )*
    };
}

/// Calls `$m!` with every supported precision: `Variant(param, state, compute)`.
macro_rules! for_each_precision {
    ($m:ident) => {
        $m! {
            F32(f32, f32, f32),
            F64(f64, f64, f64),
            F32WithF64State(f32, f64, f64),
            F64WithF32State(f64, f32, f64),
            F16(f16, f32, f32),
            BF16(bf16, f32, f32),
            F16WithF64State(f16, f64, f64),
            BF16WithF64State(bf16, f64, f64),
        }
    };
}
#[allow(unused_imports)] // used by the bindings, which are behind a feature
pub(crate) use for_each_precision;

for_each_precision!(define_jobs);

impl Job<'_> {
    /// Bytes this job moves through memory.
    pub fn cost(&self) -> usize {
        self.len() * self.bytes_per_element()
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
            let bytes_per_element = job.bytes_per_element();
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
            beta2: 0.99,
            weight_decay: 0.01,
            ..Hyperparameters::default()
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
