//! Splitting one step's jobs (many tensors, mixed sizes and dtypes) across threads.
//!
//! Their total cost (bytes moved) decides where they run: below [`SERIAL_BELOW_BYTES`] on the
//! calling thread, because waking the pool costs more than the work; above it the jobs are cut
//! into tasks of about equal cost, where a task may hold many small tensors and a large tensor may
//! be spread over many tasks, and the tasks go to the thread pool.

use rayon::prelude::*;

use crate::kernel::Update;
use crate::simd;

use super::job::Job;
use super::pool;
use super::prefetch;

/// Below this many bytes moved, a step stays on the calling thread. Measured with
/// `cargo bench -- threshold` on the 2-core machine: handing work to the pool and waiting for it
/// costs about 14 us; one thread did 64K float32 elements (1.8 MB moved) in 18 us against 29 us
/// on the pool, and 128K (3.5 MB) in 42 us against 37-40 us.
pub const SERIAL_BELOW_BYTES: usize = 4 << 20;

/// The cost of one task handed to a worker: large enough that the per-task overhead (about a
/// microsecond) is lost in the noise, small enough to balance the work between threads.
pub const TASK_BYTES: usize = 1 << 20;

/// Split points are multiples of this many elements, so that two threads never write the same
/// cache line of a tensor whose data starts on a cache line.
const SPLIT_ALIGN: usize = 64;

/// Moves `jobs` into `out` cut into about `tasks` runs of about `total / tasks` bytes each, in
/// order, and returns where each run ends in `out`.
///
/// Run `k` ends where the running cost crosses `(k + 1) * total / tasks`; a flat tensor that
/// crosses it is split at the nearest multiple of [`SPLIT_ALIGN`] elements, a strided one is kept
/// whole.
fn partition<'a>(
    jobs: &mut Vec<Job<'a>>,
    out: &mut Vec<Job<'a>>,
    total: usize,
    tasks: usize,
) -> Vec<usize> {
    let per_task = total.div_ceil(tasks.max(1)).max(1);
    out.reserve(jobs.len() + tasks + 1);
    let mut ends: Vec<usize> = Vec::with_capacity(tasks + 1);
    let mut position = 0usize;
    let mut boundary = per_task;
    let close = |out: &Vec<Job<'a>>, ends: &mut Vec<usize>| {
        if ends.last().copied().unwrap_or(0) < out.len() {
            ends.push(out.len());
        }
    };
    for mut job in jobs.drain(..) {
        loop {
            let cost = job.cost();
            let room = boundary - position;
            let take = if cost <= room || job.is_empty() {
                job.len()
            } else {
                let bytes_per_element = cost.div_ceil(job.len());
                let unit = job.split_unit().unwrap_or(1).max(SPLIT_ALIGN);
                (room / bytes_per_element + unit / 2) / unit * unit
            };
            if take >= job.len() {
                position += cost;
                out.push(job);
                if position >= boundary {
                    close(out, &mut ends);
                    boundary = position + per_task;
                }
                break;
            }
            if take > 0 {
                match job.split_at(take) {
                    Ok((head, tail)) => {
                        position += head.cost();
                        out.push(head);
                        job = tail;
                    }
                    Err(whole) => {
                        // Not splittable: it ends this run.
                        position += whole.cost();
                        out.push(whole);
                        close(out, &mut ends);
                        boundary = position + per_task;
                        break;
                    }
                }
            }
            close(out, &mut ends);
            boundary = boundary.max(position) + per_task;
        }
    }
    close(out, &mut ends);
    ends
}

/// Runs `rule` over `jobs` one after another on this thread, hinting the memory of the job
/// [`prefetch::AHEAD`] places ahead of the one running.
fn run_in_order<U: Update>(jobs: &mut [Job<'_>], isa: simd::Isa, rule: U) {
    for job in jobs.iter().take(prefetch::AHEAD) {
        job.prefetch();
    }
    for i in 0..jobs.len() {
        if let Some(ahead) = jobs.get(i + prefetch::AHEAD) {
            ahead.prefetch();
        }
        jobs[i].run(isa, rule);
    }
}

/// Runs `rule` over every job, on the calling thread or on the pool, and returns when all are
/// done, leaving `jobs` (and `scratch`, used to split them) empty, their allocations kept.
pub fn run_jobs<'a, U: Update>(jobs: &mut Vec<Job<'a>>, scratch: &mut Vec<Job<'a>>, rule: U) {
    let isa = simd::detected();
    let total: usize = jobs.iter().map(Job::cost).sum();
    let pool = if total >= SERIAL_BELOW_BYTES && pool::num_threads() > 1 {
        pool::pool()
    } else {
        None
    };
    let Some(pool) = pool else {
        run_in_order(jobs, isa, rule);
        jobs.clear();
        return;
    };
    let tasks = total.div_ceil(TASK_BYTES).max(pool.current_num_threads());
    scratch.clear();
    // Many small jobs (none a large part of a task) are cut into runs where they lie; otherwise
    // they are moved into `scratch`, splitting the large ones.
    let (ends, source) = match ends_without_splitting(jobs, total, tasks) {
        Some(ends) => (ends, &mut **jobs),
        None => (partition(jobs, scratch, total, tasks), &mut **scratch),
    };
    let mut runs: Vec<&mut [Job<'_>]> = Vec::with_capacity(ends.len());
    let mut rest: &mut [Job<'_>] = source;
    let mut start = 0;
    for end in ends {
        let (run, tail) = rest.split_at_mut(end - start);
        runs.push(run);
        rest = tail;
        start = end;
    }
    pool.install(|| {
        runs.into_par_iter()
            .for_each(|run| run_in_order(run, isa, rule));
    });
    jobs.clear();
    scratch.clear();
}

/// Where runs of about `total / tasks` bytes end in `jobs` as they are, when no job is more than
/// a quarter of a run (splitting one would then gain little balance); `None` otherwise.
fn ends_without_splitting(jobs: &[Job<'_>], total: usize, tasks: usize) -> Option<Vec<usize>> {
    let per_task = total.div_ceil(tasks.max(1)).max(1);
    let mut ends = Vec::with_capacity(tasks + 1);
    let mut position = 0usize;
    let mut boundary = per_task;
    for (index, job) in jobs.iter().enumerate() {
        let cost = job.cost();
        if cost > per_task / 4 {
            return None;
        }
        position += cost;
        if position >= boundary {
            ends.push(index + 1);
            boundary = position + per_task;
        }
    }
    if ends.last().copied().unwrap_or(0) < jobs.len() {
        ends.push(jobs.len());
    }
    Some(ends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::job::Work;
    use crate::kernel::{Adamax, Coefficients, Hyperparameters, TensorSlices};
    use crate::simd::Isa;

    fn coefficients(step: u64) -> &'static Coefficients<f32> {
        let c = Hyperparameters {
            lr: 0.1,
            beta2: 0.99,
            weight_decay: 0.01,
            ..Hyperparameters::default()
        }
        .coefficients(step);
        Box::leak(Box::new(c))
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
                let slices = TensorSlices::new(p, g, m, u).unwrap();
                Job::from(Work::Flat(slices, coefficients(t as u64 + 1)))
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
                .iter_mut()
                .for_each(|j| j.run(Isa::Baseline, Adamax));
            for tasks in [1, 2, 3, 7, 64] {
                let mut got = tensors(&sizes);
                let mut js = jobs(&mut got);
                let total: usize = js.iter().map(Job::cost).sum();
                let mut out = Vec::new();
                let ends = partition(&mut js, &mut out, total, tasks);
                assert!(ends.len() <= tasks + 1, "{} tasks for {tasks}", ends.len());
                assert_eq!(ends.last().copied().unwrap_or(0), out.len());
                assert!(ends.windows(2).all(|w| w[0] < w[1]));
                let part_total: usize = out.iter().map(Job::cost).sum();
                assert_eq!(part_total, total);
                out.iter_mut().for_each(|j| j.run(simd::detected(), Adamax));
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
    fn small_jobs_are_cut_where_they_lie_and_large_ones_are_not() {
        let mut storage = tensors(&[16; 1000]);
        let js = jobs(&mut storage);
        let total: usize = js.iter().map(Job::cost).sum();
        for tasks in [1, 2, 5, 64] {
            let ends = ends_without_splitting(&js, total, tasks).expect("all small");
            assert_eq!(ends.last().copied(), Some(js.len()));
            assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
            assert!(
                ends.len() <= tasks + 1,
                "{} runs for {tasks} tasks",
                ends.len()
            );
        }
        let mut storage = tensors(&[16, 100_000, 16]);
        let js = jobs(&mut storage);
        let total: usize = js.iter().map(Job::cost).sum();
        assert!(ends_without_splitting(&js, total, 4).is_none());
    }

    /// `run_jobs` over tensors of `sizes` gives the serial, baseline run's results and leaves
    /// the job vector empty.
    fn assert_run_jobs_equals_serial(sizes: &[usize]) {
        let mut expected = tensors(sizes);
        jobs(&mut expected)
            .iter_mut()
            .for_each(|j| j.run(Isa::Baseline, Adamax));
        let mut got = tensors(sizes);
        let mut js = jobs(&mut got);
        run_jobs(&mut js, &mut Vec::new(), Adamax);
        assert!(js.is_empty());
        drop(js);
        assert_eq!(got, expected);
    }

    #[test]
    fn run_jobs_on_the_pool_equals_serial_for_many_small_jobs() {
        // Over SERIAL_BELOW_BYTES in all, so the pool runs them, in runs cut where they lie.
        let sizes = vec![16usize; 10_000];
        assert!(sizes.iter().sum::<usize>() * 28 >= SERIAL_BELOW_BYTES);
        assert_run_jobs_equals_serial(&sizes);
    }

    #[test]
    fn pieces_are_split_on_aligned_boundaries() {
        let mut storage = tensors(&[100_003]);
        let mut js = jobs(&mut storage);
        let total: usize = js.iter().map(Job::cost).sum();
        let mut out = Vec::new();
        partition(&mut js, &mut out, total, 6);
        let pieces: Vec<usize> = out.iter().map(Job::len).collect();
        assert!(pieces.len() >= 6);
        for len in &pieces[..pieces.len() - 1] {
            assert_eq!(len % SPLIT_ALIGN, 0, "{pieces:?}");
        }
    }

    #[test]
    fn run_jobs_on_the_pool_equals_serial() {
        assert_run_jobs_equals_serial(&[5usize, 1 << 18, 3, 1 << 16]);
    }
}
