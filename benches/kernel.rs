//! `cargo bench`: the kernel by size, dtype and thread count, against the bandwidth probe.
//!
//! Throughput is reported in bytes moved (7 arrays' worth per element), so the GB/s of the
//! Adamax rows can be read directly against the `probe` rows of the same size: the probe has the
//! same reads, writes, chunking and threading, with trivial arithmetic.

use std::hint::black_box;

use adamax_rs::engine::job::{bytes_per_element, quantized_bytes, Job, Work};
use adamax_rs::engine::{pool, schedule::run_jobs};
use adamax_rs::kernel::blockwise::{QuantizedSlices, BLOCK};
use adamax_rs::kernel::{Adamax, Float, Hyperparameters, Storage, TensorSlices, Update};
use adamax_rs::probe::BandwidthProbe;
use adamax_rs::simd::{self, Blocks, Isa};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use half::{bf16, f16};

const K: usize = 1 << 10;
const M: usize = 1 << 20;

fn hyperparameters() -> Hyperparameters {
    Hyperparameters {
        lr: 1e-3,
        ..Hyperparameters::default()
    }
}

/// The arrays of one tensor, parameters stored as `P` and state as `S`, arithmetic in `C`.
struct Tensor<P, S> {
    param: Vec<P>,
    grad: Vec<P>,
    exp_avg: Vec<S>,
    exp_inf: Vec<S>,
    master: Option<Vec<S>>,
}

impl<P: Copy, S: Copy> Tensor<P, S> {
    fn new<C: Float>(n: usize, master: bool) -> Self
    where
        P: Storage<C>,
        S: Storage<C>,
    {
        let value = |i: usize| ((i * 7919) % 1000) as f64 / 500.0 - 1.0;
        let make = |f: &dyn Fn(usize) -> f64| -> Vec<P> {
            (0..n).map(|i| P::store(C::from_f64(f(i)))).collect()
        };
        let zeros = || vec![S::store(C::from_f64(0.0)); n];
        Tensor {
            param: make(&value),
            grad: make(&|i| value(i + 1)),
            exp_avg: zeros(),
            exp_inf: zeros(),
            master: master.then(|| (0..n).map(|i| S::store(C::from_f64(value(i)))).collect()),
        }
    }

    fn slices(&mut self) -> TensorSlices<'_, P, S> {
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
        (self.param.len() * bytes_per_element::<P, S>(self.master.is_some())) as u64
    }
}

/// One step over `tensors` with `rule`, through the engine's scheduler.
fn step<P, S, C, U>(tensors: &mut [Tensor<P, S>], rule: U)
where
    P: Copy,
    S: Copy,
    C: Float,
    U: Update,
    for<'a> Work<'a, P, S, S, C>: Into<Job<'a>>,
{
    let coefficients = hyperparameters().coefficients::<C>(10);
    let mut jobs: Vec<Job<'_>> = tensors
        .iter_mut()
        .map(|t| Work::Flat(t.slices(), &coefficients).into())
        .collect();
    run_jobs(black_box(&mut jobs), &mut Vec::new(), rule);
}

fn label(n: usize) -> String {
    if n >= M {
        format!("{}M", n / M)
    } else {
        format!("{}K", n / K)
    }
}

/// One tensor of each size, Adamax and probe, on every thread count up to the machine's.
fn by_size<P, S, C>(c: &mut Criterion, name: &str, master: bool, sizes: &[usize])
where
    P: Storage<C>,
    S: Storage<C>,
    C: Float,
    for<'a> Work<'a, P, S, S, C>: Into<Job<'a>>,
{
    let max_threads = pool::default_num_threads();
    let mut group = c.benchmark_group(format!("one_tensor_{name}"));
    for &n in sizes {
        let mut tensors = vec![Tensor::<P, S>::new::<C>(n, master)];
        group.throughput(Throughput::Bytes(tensors[0].bytes()));
        if n >= 16 * M {
            group.sample_size(10);
        }
        for threads in 1..=max_threads {
            pool::set_num_threads(threads).expect("a small thread count");
            let id = BenchmarkId::new(format!("adamax/{threads}t"), label(n));
            group.bench_function(id, |b| b.iter(|| step::<P, S, C, _>(&mut tensors, Adamax)));
            let id = BenchmarkId::new(format!("probe/{threads}t"), label(n));
            group.bench_function(id, |b| {
                b.iter(|| step::<P, S, C, _>(&mut tensors, BandwidthProbe))
            });
        }
    }
    pool::set_num_threads(0).expect("0 is the default");
    group.finish();
}

fn sizes_f32(c: &mut Criterion) {
    by_size::<f32, f32, f32>(c, "f32", false, &[K, 64 * K, M, 16 * M, 64 * M]);
}

fn sizes_f64(c: &mut Criterion) {
    by_size::<f64, f64, f64>(c, "f64", false, &[K, 64 * K, M, 16 * M]);
}

fn sizes_f16(c: &mut Criterion) {
    by_size::<f16, f32, f32>(c, "f16_f32_state", false, &[K, M, 16 * M]);
    by_size::<f16, f32, f32>(c, "f16_master", true, &[16 * M]);
}

/// Many small tensors in one step, as a model's parameter list is.
fn many_tensors(c: &mut Criterion) {
    let mut group = c.benchmark_group("many_tensors_f32");
    for &(count, n) in &[(1000usize, 1000usize), (10_000, 16)] {
        let mut tensors: Vec<Tensor<f32, f32>> =
            (0..count).map(|_| Tensor::new::<f32>(n, false)).collect();
        group.throughput(Throughput::Bytes(tensors.iter().map(Tensor::bytes).sum()));
        let id = BenchmarkId::new("adamax", format!("{count}x{n}"));
        group.bench_function(id, |b| {
            b.iter(|| step::<f32, f32, f32, _>(&mut tensors, Adamax))
        });
        let id = BenchmarkId::new("probe", format!("{count}x{n}"));
        group.bench_function(id, |b| {
            b.iter(|| step::<f32, f32, f32, _>(&mut tensors, BandwidthProbe))
        });
    }
    group.finish();
}

/// Where the pool starts to pay: one thread against the pool, around `SERIAL_BELOW_BYTES`.
fn threshold(c: &mut Criterion) {
    let mut group = c.benchmark_group("threshold_f32");
    let isa = simd::detected();
    for &n in &[2 * K, 8 * K, 16 * K, 32 * K, 64 * K, 128 * K] {
        let mut tensor = Tensor::<f32, f32>::new::<f32>(n, false);
        group.throughput(Throughput::Bytes(tensor.bytes()));
        let coefficients = hyperparameters().coefficients::<f32>(10);
        group.bench_function(BenchmarkId::new("calling_thread", label(n)), |b| {
            b.iter(|| simd::run_flat(isa, Adamax, tensor.slices(), &coefficients))
        });
        let pool = pool::pool().expect("a thread pool");
        let threads = pool.current_num_threads();
        group.bench_function(
            BenchmarkId::new(format!("pool_{threads}t"), label(n)),
            |b| {
                b.iter(|| {
                    let half = (n / 2) / 64 * 64;
                    let (left, right) = tensor.slices().split_at(half);
                    pool.install(|| {
                        rayon::join(
                            || simd::run_flat(isa, Adamax, left, &coefficients),
                            || simd::run_flat(isa, Adamax, right, &coefficients),
                        )
                    });
                })
            },
        );
    }
    group.finish();
}

/// One case of [`isa_builds`]: `n` float32 parameters with state stored as `S`, stepped by the
/// `isa` build with hyperparameters `h`.
fn flat_isa_case<S: Storage<f32> + Copy>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    isa: Isa,
    name: &str,
    n: usize,
    h: &Hyperparameters,
) {
    let mut tensor = Tensor::<f32, S>::new::<f32>(n, false);
    group.throughput(Throughput::Bytes(tensor.bytes()));
    let coefficients = h.coefficients::<f32>(10);
    group.bench_function(BenchmarkId::new(name, label(n)), |b| {
        b.iter(|| simd::run_flat(isa, Adamax, tensor.slices(), &coefficients))
    });
}

/// Every instruction-set build this CPU has, on one thread, over 64K float32 elements (their
/// arrays fit in L2, so the arithmetic shows, not the memory): float state with each `eps`
/// placement, and bfloat16 and 8-bit state, each rounded as by default and stochastically.
/// The AVX2 build is the one most CPUs run.
fn isa_builds(c: &mut Criterion) {
    let mut group = c.benchmark_group("isa_f32_64K");
    let n = 64 * K;
    for isa in simd::available() {
        for eps_inside_max in [false, true] {
            let h = Hyperparameters {
                eps_inside_max,
                ..hyperparameters()
            };
            let name = format!("{}_float_state_eps_inside_max_{eps_inside_max}", isa.name());
            flat_isa_case::<f32>(&mut group, isa, &name, n, &h);
        }
        for (stochastic_rounding, rounding) in [(false, "nearest"), (true, "stochastic")] {
            let h = Hyperparameters {
                stochastic_rounding,
                ..hyperparameters()
            };
            let name = format!("{}_bfloat16_state_{rounding}", isa.name());
            flat_isa_case::<bf16>(&mut group, isa, &name, n, &h);
        }
        let mut tensor = Tensor::<f32, f32>::new::<f32>(n, false);
        let (mut m, mut u) = (vec![0u8; n], vec![0u8; n]);
        let blocks = n.div_ceil(BLOCK);
        let (mut m_scales, mut u_scales) = (vec![0f32; blocks], vec![0f32; blocks]);
        group.throughput(Throughput::Bytes(
            quantized_bytes::<f32>(n, blocks, false) as u64
        ));
        for (stochastic_rounding, rounding) in [(false, ""), (true, "_stochastic")] {
            let h = Hyperparameters {
                stochastic_rounding,
                ..hyperparameters()
            };
            let coefficients = h.coefficients::<f32>(10);
            group.bench_function(
                BenchmarkId::new(format!("{}_8bit_state{rounding}", isa.name()), label(n)),
                |b| {
                    b.iter(|| {
                        let slices = QuantizedSlices::new(
                            &mut tensor.param,
                            &tensor.grad,
                            &mut m,
                            &mut u,
                            &mut m_scales,
                            &mut u_scales,
                            None,
                        )
                        .expect("fitting slices");
                        simd::run(isa, Adamax, Blocks(slices, &coefficients))
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    isa_builds,
    sizes_f32,
    sizes_f64,
    sizes_f16,
    many_tensors,
    threshold
);
criterion_main!(benches);
