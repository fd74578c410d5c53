//! Property tests: every build of the kernel, and the threaded scheduler, against a scalar
//! reference written here from the formula, over random lengths, hyperparameters and
//! special values.

use adamax_rs::engine::job::{Job, Work};
use adamax_rs::engine::schedule::run_jobs;
use adamax_rs::kernel::blockwise::{QuantizedSlices, BLOCK};
use adamax_rs::kernel::{
    Adamax, Hyperparameters, StridedArray, StridedTensor, TensorSlices, Update,
};
use adamax_rs::simd::{self, Blocks, Isa};
use half::bf16;
use proptest::prelude::*;

/// The formula, one element at a time, with numpy's rounding of Python floats; with
/// `eps_inside_max`, torch's order (ATen's fused lerp and weight decay).
fn reference(h: &Hyperparameters, t: u64, p: &mut [f32], g: &[f32], m: &mut [f32], u: &mut [f32]) {
    let torch = h.eps_inside_max;
    let lerp_weight = (1.0 - h.beta1) as f32;
    let beta1 = h.beta1 as f32;
    let one_minus_beta1 = (1.0 - h.beta1) as f32;
    let beta2 = h.beta2 as f32;
    let eps = h.eps as f32;
    let wd = h.weight_decay as f32;
    let step_size = (h.lr / (1.0 - h.beta1.powf(t as f64))) as f32;
    let decay = (1.0 - h.lr * h.weight_decay) as f32;
    for i in 0..p.len() {
        let mut grad = if h.maximize { -g[i] } else { g[i] };
        if h.weight_decay != 0.0 && !h.decoupled_weight_decay {
            grad = if torch {
                wd.mul_add(p[i], grad)
            } else {
                grad + wd * p[i]
            };
        }
        let mut param = p[i];
        if h.weight_decay != 0.0 && h.decoupled_weight_decay {
            param *= decay;
        }
        let new_m = if !torch {
            beta1 * m[i] + one_minus_beta1 * grad
        } else if lerp_weight.abs() < 0.5 {
            lerp_weight.mul_add(grad - m[i], m[i])
        } else {
            (-(1.0 - lerp_weight)).mul_add(grad - m[i], grad)
        };
        let a = beta2 * u[i];
        let b = if h.eps_inside_max {
            grad.abs() + eps
        } else {
            grad.abs()
        };
        // NaN wins, with its own bits (stochastic rounding hashes them).
        let new_u = if b.is_nan() || b > a { b } else { a };
        let denominator = if h.eps_inside_max { new_u } else { new_u + eps };
        p[i] = param - step_size * new_m / denominator;
        m[i] = new_m;
        u[i] = new_u;
    }
}

/// Stochastic rounding of an element's two moments to bfloat16 bits, written here from
/// docs/compressed_state.md: MurmurHash3's finaliser over exp_avg's bits, exp_inf's bits rotated
/// by 16, the gradient's rotated by 8 and the step's salt; the hash's high 16 bits added to
/// exp_avg's 16 dropped bits, its low 16 bits to exp_inf's.
fn stochastic_bf16(exp_avg: f32, exp_inf: f32, grad: f32, step: u64) -> (f32, f32) {
    fn fmix(mut x: u32) -> u32 {
        x = (x ^ (x >> 16)).wrapping_mul(0x85EB_CA6B);
        x = (x ^ (x >> 13)).wrapping_mul(0xC2B2_AE35);
        x ^ (x >> 16)
    }
    fn round(value: f32, noise: u32) -> f32 {
        if value.is_nan() {
            return value;
        }
        f32::from_bits((value.to_bits().wrapping_add(noise) >> 16) << 16)
    }
    let salt = fmix(step as u32 ^ fmix((step >> 32) as u32 ^ 0x9E37_79B9));
    let h = fmix(
        exp_avg.to_bits()
            ^ exp_inf.to_bits().rotate_left(16)
            ^ grad.to_bits().rotate_left(8)
            ^ salt,
    );
    (round(exp_avg, h >> 16), round(exp_inf, h & 0xFFFF))
}

fn widen_bf16(h: &[bf16]) -> Vec<f32> {
    h.iter().map(|x| x.to_f32()).collect()
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits())
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -10.0f32..10.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(f32::from_bits(1)),        // the smallest subnormal
        1 => Just(-f32::MIN_POSITIVE / 3.0), // a negative subnormal
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(1e30f32),
        1 => Just(-3e38f32),
    ]
}

fn hyperparameters() -> impl Strategy<Value = Hyperparameters> {
    (
        0.0f64..1.0,
        prop_oneof![Just(0.0f64), 0.0f64..0.999_999],
        prop_oneof![Just(0.0f64), 0.0f64..0.999_999],
        prop_oneof![Just(0.0f64), 0.0f64..1e-3],
        prop_oneof![Just(0.0f64), 0.0f64..1.0],
        // The fourth: stochastic rounding, which only bfloat16 and 8-bit state read.
        any::<[bool; 4]>(),
    )
        .prop_map(
            |(lr, beta1, beta2, eps, weight_decay, [maximize, eps_inside_max, decoupled, sr])| {
                Hyperparameters {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    maximize,
                    eps_inside_max,
                    decoupled_weight_decay: decoupled,
                    stochastic_rounding: sr,
                    step_size_type: Default::default(),
                }
            },
        )
}

fn arrays() -> impl Strategy<Value = [Vec<f32>; 4]> {
    // Lengths around the vector widths and the scheduler's split sizes are in range.
    (0usize..10_000).prop_flat_map(|n| {
        let v = || prop::collection::vec(value(), n);
        (v(), v(), v(), v()).prop_map(|(p, g, m, u)| {
            // exp_inf is never negative in a real run.
            [p, g, m, u.into_iter().map(f32::abs).collect()]
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_isa_build_matches_the_reference(
        h in hyperparameters(),
        t in 1u64..1000,
        [p, g, m, u] in arrays(),
    ) {
        let (mut ep, mut em, mut eu) = (p.clone(), m.clone(), u.clone());
        reference(&h, t, &mut ep, &g, &mut em, &mut eu);
        let c = h.coefficients::<f32>(t);
        for isa in simd::available() {
            let (mut ap, mut am, mut au) = (p.clone(), m.clone(), u.clone());
            simd::run_flat(isa, Adamax, TensorSlices::new(&mut ap, &g, &mut am, &mut au).unwrap(), &c);
            prop_assert!(same(&ap, &ep), "param differs with {isa:?}");
            prop_assert!(same(&am, &em), "exp_avg differs with {isa:?}");
            prop_assert!(same(&au, &eu), "exp_inf differs with {isa:?}");
        }
        prop_assert!(simd::available().contains(&Isa::Baseline));
    }

    /// 8-bit state has no formula here: `tests/test_state_compressed.py` checks the step of
    /// the build this CPU runs against the numpy reference codec. This checks that every other
    /// build gives the very same bytes, with any codes and scales, including NaN and infinite
    /// gradients (the encoding's float-to-integer steps differ most between vector widths).
    #[test]
    fn every_isa_build_gives_the_same_8bit_step(
        h in hyperparameters(),
        t in 1u64..1000,
        [p, g, _, _] in arrays(),
        seed in any::<u64>(),
    ) {
        let n = p.len();
        let blocks = n.div_ceil(BLOCK);
        // Any byte is a code; scales from 0 to 1e3, spread over many orders of magnitude.
        let byte = |i: usize, k: u64| ((i as u64).wrapping_mul(0x9E37_79B9).wrapping_add(seed ^ k) >> 7) as u8;
        let m: Vec<u8> = (0..n).map(|i| byte(i, 1)).collect();
        let u: Vec<u8> = (0..n).map(|i| byte(i, 2)).collect();
        let scale = |b: usize, k: u64| f32::from(byte(b, k)) * 10f32.powi(i32::from(byte(b, k + 1) % 12) - 8);
        let ms: Vec<f32> = (0..blocks).map(|b| scale(b, 3)).collect();
        let us: Vec<f32> = (0..blocks).map(|b| scale(b, 5)).collect();
        let c = h.coefficients::<f32>(t);
        let mut results = Vec::new();
        for isa in simd::available() {
            let (mut ap, mut am, mut au, mut ams, mut aus) =
                (p.clone(), m.clone(), u.clone(), ms.clone(), us.clone());
            let slices = QuantizedSlices::new(&mut ap, &g, &mut am, &mut au, &mut ams, &mut aus, None)
                .unwrap();
            simd::run(isa, Adamax, Blocks(slices, &c));
            results.push((isa, ap, am, au, ams, aus));
        }
        let (_, bp, bm, bu, bms, bus) = &results[0];
        for (isa, ap, am, au, ams, aus) in &results[1..] {
            prop_assert!(same(ap, bp), "param differs with {isa:?}");
            prop_assert!(am == bm, "exp_avg codes differ with {isa:?}");
            prop_assert!(au == bu, "exp_inf codes differ with {isa:?}");
            prop_assert!(same(ams, bms), "exp_avg scales differ with {isa:?}");
            prop_assert!(same(aus, bus), "exp_inf scales differ with {isa:?}");
        }
    }

    /// bfloat16 state rounded stochastically: every build gives the reference's bits (the
    /// arithmetic in float32 as above, then each moment rounded with the hash written here).
    #[test]
    fn every_isa_build_rounds_bfloat16_state_stochastically_like_the_reference(
        h in hyperparameters(),
        // Past 2^32 too: the salt hashes the step's high half.
        t in prop_oneof![1u64..1000, Just(1 << 32), Just((1 << 32) + 1), Just(1 << 53)],
        [p, g, m, u] in arrays(),
    ) {
        let h = Hyperparameters { stochastic_rounding: true, ..h };
        let (m, u): (Vec<bf16>, Vec<bf16>) =
            (m.iter().map(|&x| bf16::from_f32(x)).collect(), u.iter().map(|&x| bf16::from_f32(x)).collect());
        let (mut ep, mut em, mut eu) = (p.clone(), widen_bf16(&m), widen_bf16(&u));
        reference(&h, t, &mut ep, &g, &mut em, &mut eu);
        let (em, eu): (Vec<f32>, Vec<f32>) =
            em.iter().zip(&eu).zip(&g).map(|((&a, &b), &gr)| stochastic_bf16(a, b, gr, t)).unzip();
        let c = h.coefficients::<f32>(t);
        for isa in simd::available() {
            let (mut ap, mut am, mut au) = (p.clone(), m.clone(), u.clone());
            simd::run_flat(isa, Adamax, TensorSlices::new(&mut ap, &g, &mut am, &mut au).unwrap(), &c);
            prop_assert!(same(&ap, &ep), "param differs with {isa:?}");
            prop_assert!(same(&widen_bf16(&am), &em), "exp_avg differs with {isa:?}");
            prop_assert!(same(&widen_bf16(&au), &eu), "exp_inf differs with {isa:?}");
        }
    }

    #[test]
    fn the_threaded_scheduler_matches_the_reference(
        h in hyperparameters(),
        sizes in prop::collection::vec(0usize..70_000, 1..6),
    ) {
        let make = |n: usize, k: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 31 + k * 7) % 97) as f32 - 48.0) / 16.0).collect()
        };
        let mut tensors: Vec<[Vec<f32>; 4]> = sizes
            .iter()
            .map(|&n| [make(n, 0), make(n, 1), make(n, 2), make(n, 3).into_iter().map(f32::abs).collect()])
            .collect();
        let mut expected = tensors.clone();
        for (t, [p, g, m, u]) in expected.iter_mut().enumerate() {
            reference(&h, t as u64 + 1, p, g, m, u);
        }
        let coefficients: Vec<_> = (0..tensors.len()).map(|t| h.coefficients::<f32>(t as u64 + 1)).collect();
        let mut jobs: Vec<Job<'_>> = tensors
            .iter_mut()
            .zip(&coefficients)
            .map(|([p, g, m, u], c)| Job::from(Work::Flat(TensorSlices::new(p, g, m, u).unwrap(), c)))
            .collect();
        run_jobs(&mut jobs, &mut Vec::new(), Adamax);
        drop(jobs);
        for (got, want) in tensors.iter().zip(&expected) {
            for k in [0, 2, 3] {
                prop_assert!(same(&got[k], &want[k]));
            }
        }
    }

    #[test]
    fn the_strided_walk_matches_the_reference_in_any_layout(
        h in hyperparameters(),
        t in 1u64..100,
        rows in 1usize..9,
        cols in 1usize..9,
        layouts in any::<[u8; 4]>(),
        seed in any::<u32>(),
    ) {
        // Each array in one of four layouts of a rows x cols matrix inside a buffer twice as
        // large: C order, Fortran order, reversed C order, or every other element of C order.
        let n = rows * cols;
        let make = |k: u32| -> Vec<f32> {
            (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed ^ (k * 97)) % 200) as f32 / 32.0 - 3.0).collect()
        };
        let logical = [make(0), make(1), make(2), make(3).into_iter().map(f32::abs).collect()];
        let place = |layout: u8| -> (Vec<isize>, usize) {
            // (strides in elements, offset in elements of index [0, 0])
            match layout % 4 {
                0 => (vec![cols as isize, 1], 0),
                1 => (vec![1, rows as isize], 0),
                2 => (vec![-(cols as isize), -1], n - 1),
                _ => (vec![2 * cols as isize, 2], 0),
            }
        };
        let mut buffers: Vec<Vec<f32>> = Vec::new();
        let mut placements = Vec::new();
        for (k, values) in logical.iter().enumerate() {
            let (strides, offset) = place(layouts[k]);
            let mut buffer = vec![f32::NAN; 2 * n];
            for i in 0..rows {
                for j in 0..cols {
                    let at = offset as isize + i as isize * strides[0] + j as isize * strides[1];
                    buffer[at as usize] = values[i * cols + j];
                }
            }
            buffers.push(buffer);
            placements.push((strides.iter().map(|s| s * 4).collect::<Vec<isize>>(), offset));
        }
        let arrays: Vec<StridedArray<'_>> = buffers
            .iter_mut()
            .zip(&placements)
            .map(|(b, (strides, offset))| StridedArray {
                address: b.as_mut_ptr() as usize + 4 * offset,
                strides,
            })
            .collect();
        // SAFETY: each array's indices stay inside its own buffer (2n elements), no layout
        // reaches one element twice, and the four buffers are distinct.
        let mut tensor = unsafe {
            StridedTensor::<f32, f32>::new(&[rows, cols], arrays[0], arrays[1], arrays[2], arrays[3], None)
        };
        Adamax.strided(&mut tensor, &h.coefficients::<f32>(t));
        let [mut p, g, mut m, mut u] = logical;
        reference(&h, t, &mut p, &g, &mut m, &mut u);
        let read = |k: usize| -> Vec<f32> {
            let (strides, offset) = &placements[k];
            let mut out = Vec::new();
            for i in 0..rows {
                for j in 0..cols {
                    let at = *offset as isize + (i as isize * strides[0] + j as isize * strides[1]) / 4;
                    out.push(buffers[k][at as usize]);
                }
            }
            out
        };
        prop_assert!(same(&read(0), &p));
        prop_assert!(same(&read(2), &m));
        prop_assert!(same(&read(3), &u));
    }
}
