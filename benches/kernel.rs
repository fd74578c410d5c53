//! `cargo bench`: the kernel by size, dtype and thread count, against the bandwidth probe.
//!
//! Throughput is reported in bytes moved (7 arrays' worth per element), so the GB/s of the
//! Adamax rows can be read directly against the `probe` rows of the same size: the probe has
//! the same reads, writes, chunking and threading, with trivial arithmetic.

use std::hint::black_box;

use adamax_rs::schedule::bytes_per_element;
use adamax_rs::{
    pool, run_jobs_with, Float, Hyperparameters, Op, Precision, Storage, TensorSlices,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;

const K: usize = 1 << 10;
const M: usize = 1 << 20;

fn hyperparameters() -> Hyperparameters {
    Hyperparameters {
        lr: 1e-3,
        ..Hyperparameters::default()
    }
}

/// The arrays of one tensor, parameters stored as `Q::Param` and state as `Q::State`.
struct Tensor<Q: Precision> {
    param: Vec<Q::Param>,
    grad: Vec<Q::Param>,
    exp_avg: Vec<Q::State>,
    exp_inf: Vec<Q::State>,
    master: Option<Vec<Q::State>>,
}

impl<Q: Precision> Tensor<Q> {
    fn new(n: usize, master: bool) -> Self {
        let value = |i: usize| ((i * 7919) % 1000) as f64 / 500.0 - 1.0;
        let make = |f: &dyn Fn(usize) -> f64| -> Vec<Q::Param> {
            (0..n)
                .map(|i| Q::Param::store(Q::Compute::from_f64(f(i))))
                .collect()
        };
        let zeros = || vec![Q::State::store(Q::Compute::from_f64(0.0)); n];
        Tensor {
            param: make(&value),
            grad: make(&|i| value(i + 1)),
            exp_avg: zeros(),
            exp_inf: zeros(),
            master: master.then(|| {
                (0..n)
                    .map(|i| Q::State::store(Q::Compute::from_f64(value(i))))
                    .collect()
            }),
        }
    }

    fn slices(&mut self) -> TensorSlices<'_, Q::Param, Q::State> {
        TensorSlices::with_master(
            &mut self.param,
            &self.grad,
            &mut self.exp_avg,
            &mut self.exp_inf,
            self.master.as_deref_mut(),
        )
        .expect("equal lengths")
    }

    fn bytes(&self) -> u64 {
        (self.param.len() * bytes_per_element::<Q::Param, Q::State>(self.master.is_some())) as u64
    }
}

fn step<Q: Precision>(tensors: &mut [Tensor<Q>], op: Op) {
    let jobs = tensors
        .iter_mut()
        .map(|t| Q::job(t.slices(), hyperparameters().coefficients(10)))
        .collect();
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
fn by_size<Q: Precision>(c: &mut Criterion, name: &str, master: bool, sizes: &[usize]) {
    let max_threads = pool::default_num_threads();
    let mut group = c.benchmark_group(format!("one_tensor_{name}"));
    for &n in sizes {
        let mut tensors = vec![Tensor::<Q>::new(n, master)];
        group.throughput(Throughput::Bytes(tensors[0].bytes()));
        if n >= 16 * M {
            group.sample_size(10);
        }
        for threads in 1..=max_threads {
            pool::set_num_threads(threads);
            for (kind, op) in [("adamax", Op::Adamax), ("probe", Op::BandwidthProbe)] {
                let id = BenchmarkId::new(format!("{kind}/{threads}t"), label(n));
                group.bench_function(id, |b| b.iter(|| step(&mut tensors, op)));
            }
        }
    }
    pool::set_num_threads(0);
    group.finish();
}

fn sizes_f32(c: &mut Criterion) {
    by_size::<(f32, f32)>(c, "f32", false, &[K, 64 * K, M, 16 * M, 64 * M]);
}

fn sizes_f64(c: &mut Criterion) {
    by_size::<(f64, f64)>(c, "f64", false, &[K, 64 * K, M, 16 * M]);
}

fn sizes_f16(c: &mut Criterion) {
    by_size::<(f16, f32)>(c, "f16_f32_state", false, &[K, M, 16 * M]);
    by_size::<(f16, f32)>(c, "f16_master", true, &[16 * M]);
}

/// Many small tensors in one step, as a model's parameter list is.
fn many_tensors(c: &mut Criterion) {
    let mut group = c.benchmark_group("many_tensors_f32");
    for &(count, n) in &[(1000usize, 1000usize), (10_000, 16)] {
        let mut tensors: Vec<Tensor<(f32, f32)>> =
            (0..count).map(|_| Tensor::new(n, false)).collect();
        group.throughput(Throughput::Bytes(tensors.iter().map(Tensor::bytes).sum()));
        for (name, op) in [("adamax", Op::Adamax), ("probe", Op::BandwidthProbe)] {
            let id = BenchmarkId::new(name, format!("{count}x{n}"));
            group.bench_function(id, |b| b.iter(|| step(&mut tensors, op)));
        }
    }
    group.finish();
}

/// Where the pool starts to pay: one thread against the pool, around `SERIAL_BELOW_BYTES`.
fn threshold(c: &mut Criterion) {
    let mut group = c.benchmark_group("threshold_f32");
    for &n in &[2 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K] {
        let mut tensor = Tensor::<(f32, f32)>::new(n, false);
        group.throughput(Throughput::Bytes(tensor.bytes()));
        group.bench_function(BenchmarkId::new("calling_thread", label(n)), |b| {
            b.iter(|| {
                adamax_rs::adamax_update(
                    tensor.slices(),
                    &hyperparameters().coefficients::<f32>(10),
                )
            })
        });
        let pool = pool::pool().expect("a thread pool");
        let threads = pool.current_num_threads();
        group.bench_function(
            BenchmarkId::new(format!("pool_{threads}t"), label(n)),
            |b| {
                b.iter(|| {
                    let half = (n / 2) / 64 * 64;
                    let (left, right) = tensor.slices().split_at(half);
                    let c = hyperparameters().coefficients::<f32>(10);
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
    sizes_f32,
    sizes_f64,
    sizes_f16,
    many_tensors,
    threshold
);
criterion_main!(benches);
