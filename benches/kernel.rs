//! `cargo bench`: the kernel by size, dtype and thread count, against the bandwidth probe.
//!
//! Throughput is reported in bytes moved (7 arrays' worth per element), so the GB/s of the
//! Adamax rows can be read directly against the `probe` rows of the same size: the probe has
//! the same reads, writes, chunking and threading, with trivial arithmetic.

use std::hint::black_box;

use adamax_rs::schedule::STREAMS_PER_ELEMENT;
use adamax_rs::{pool, run_jobs_with, Float, Hyperparameters, Job, Op, TensorSlices};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const K: usize = 1 << 10;
const M: usize = 1 << 20;

fn hyperparameters() -> Hyperparameters {
    Hyperparameters {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        maximize: false,
        eps_inside_max: false,
        decoupled_weight_decay: false,
    }
}

struct Tensor<T> {
    param: Vec<T>,
    grad: Vec<T>,
    exp_avg: Vec<T>,
    exp_inf: Vec<T>,
}

impl<T: Float> Tensor<T> {
    fn new(n: usize) -> Self {
        let value = |i: usize| T::from_f64(((i * 7919) % 1000) as f64 / 500.0 - 1.0);
        Tensor {
            param: (0..n).map(value).collect(),
            grad: (0..n).map(|i| value(i + 1)).collect(),
            exp_avg: vec![T::from_f64(0.0); n],
            exp_inf: vec![T::from_f64(0.0); n],
        }
    }

    fn slices(&mut self) -> TensorSlices<'_, T> {
        TensorSlices::new(
            &mut self.param,
            &self.grad,
            &mut self.exp_avg,
            &mut self.exp_inf,
        )
        .expect("equal lengths")
    }
}

trait Element: Float {
    const NAME: &'static str;
    fn job(s: TensorSlices<'_, Self>) -> Job<'_>;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn job(s: TensorSlices<'_, f32>) -> Job<'_> {
        Job::F32(s, hyperparameters().coefficients(10))
    }
}

impl Element for f64 {
    const NAME: &'static str = "f64";
    fn job(s: TensorSlices<'_, f64>) -> Job<'_> {
        Job::F64(s, hyperparameters().coefficients(10))
    }
}

fn step<T: Element>(tensors: &mut [Tensor<T>], op: Op) {
    let jobs = tensors.iter_mut().map(|t| T::job(t.slices())).collect();
    run_jobs_with(black_box(jobs), op);
}

fn label(n: usize) -> String {
    if n >= M {
        format!("{}M", n / M)
    } else {
        format!("{}K", n / K)
    }
}

/// One tensor of each size, Adamax and probe, on every thread count up to the machine's.
fn by_size<T: Element>(c: &mut Criterion) {
    let max_threads = pool::default_num_threads();
    let mut group = c.benchmark_group(format!("one_tensor_{}", T::NAME));
    for &n in &[K, 64 * K, M, 16 * M, 64 * M] {
        if T::NAME == "f64" && n > 16 * M {
            continue;
        }
        let mut tensors = vec![Tensor::<T>::new(n)];
        group.throughput(Throughput::Bytes(
            (n * std::mem::size_of::<T>() * STREAMS_PER_ELEMENT) as u64,
        ));
        if n >= 16 * M {
            group.sample_size(10);
        }
        for threads in 1..=max_threads {
            pool::set_num_threads(threads);
            for (name, op) in [("adamax", Op::Adamax), ("probe", Op::BandwidthProbe)] {
                let id = BenchmarkId::new(format!("{name}/{threads}t"), label(n));
                group.bench_function(id, |b| b.iter(|| step(&mut tensors, op)));
            }
        }
    }
    pool::set_num_threads(0);
    group.finish();
}

/// Many small tensors in one step, as a model's parameter list is.
fn many_tensors(c: &mut Criterion) {
    let mut group = c.benchmark_group("many_tensors_f32");
    for &(count, n) in &[(1000usize, 1000usize), (10_000, 16)] {
        let mut tensors: Vec<Tensor<f32>> = (0..count).map(|_| Tensor::new(n)).collect();
        group.throughput(Throughput::Bytes(
            (count * n * 4 * STREAMS_PER_ELEMENT) as u64,
        ));
        for (name, op) in [("adamax", Op::Adamax), ("probe", Op::BandwidthProbe)] {
            let id = BenchmarkId::new(name, format!("{count}x{n}"));
            group.bench_function(id, |b| b.iter(|| step(&mut tensors, op)));
        }
    }
    group.finish();
}

/// Where the pool starts to pay: one thread against all, around `SERIAL_BELOW_BYTES`.
/// Runs `run_jobs_with` with the threshold bypassed by timing each side explicitly.
fn threshold(c: &mut Criterion) {
    let mut group = c.benchmark_group("threshold_f32");
    for &n in &[2 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K] {
        let mut tensors = [Tensor::<f32>::new(n)];
        group.throughput(Throughput::Bytes((n * 4 * STREAMS_PER_ELEMENT) as u64));
        group.bench_function(BenchmarkId::new("calling_thread", label(n)), |b| {
            b.iter(|| {
                let t = &mut tensors[0];
                adamax_rs::adamax_update(t.slices(), &hyperparameters().coefficients(10))
            })
        });
        let pool = pool::pool().expect("a thread pool");
        let threads = pool.current_num_threads();
        group.bench_function(
            BenchmarkId::new(format!("pool_{threads}t"), label(n)),
            |b| {
                b.iter(|| {
                    let t = &mut tensors[0];
                    let half = (t.param.len() / 2) / 64 * 64;
                    let (left, right) = t.slices().split_at(half);
                    let c = hyperparameters().coefficients(10);
                    pool.install(|| {
                        rayon::join(
                            || adamax_rs::adamax_update(left, &c),
                            || adamax_rs::adamax_update(right, &c),
                        )
                    });
                })
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    by_size::<f32>,
    by_size::<f64>,
    many_tensors,
    threshold
);
criterion_main!(benches);
