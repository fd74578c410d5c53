//! Property tests: every build of the kernel, and the threaded scheduler, against a scalar
//! reference written here from the formula, over random lengths, hyperparameters and
//! special values.

use adamax_rs::dispatch::{self, Isa};
use adamax_rs::{run_jobs, Hyperparameters, Job, TensorSlices};
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
        let new_u = if a.is_nan() || b.is_nan() {
            f32::NAN
        } else if a >= b {
            a
        } else {
            b
        };
        let denominator = if h.eps_inside_max { new_u } else { new_u + eps };
        p[i] = param - step_size * new_m / denominator;
        m[i] = new_m;
        u[i] = new_u;
    }
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
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(lr, beta1, beta2, eps, weight_decay, [maximize, eps_inside_max, decoupled])| {
                Hyperparameters {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    maximize,
                    eps_inside_max,
                    decoupled_weight_decay: decoupled,
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
        for isa in dispatch::available() {
            let (mut ap, mut am, mut au) = (p.clone(), m.clone(), u.clone());
            dispatch::run(isa, TensorSlices::new(&mut ap, &g, &mut am, &mut au).unwrap(), &c);
            prop_assert!(same(&ap, &ep), "param differs with {isa:?}");
            prop_assert!(same(&am, &em), "exp_avg differs with {isa:?}");
            prop_assert!(same(&au, &eu), "exp_inf differs with {isa:?}");
        }
        prop_assert!(dispatch::available().contains(&Isa::Baseline));
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
        let jobs = tensors
            .iter_mut()
            .enumerate()
            .map(|(t, [p, g, m, u])| {
                Job::F32(TensorSlices::new(p, g, m, u).unwrap(), h.coefficients(t as u64 + 1))
            })
            .collect();
        run_jobs(jobs);
        for (got, want) in tensors.iter().zip(&expected) {
            for k in [0, 2, 3] {
                prop_assert!(same(&got[k], &want[k]));
            }
        }
    }
}
