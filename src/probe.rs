//! The bandwidth probe, a benchmark tool: the reads and writes of an Adamax step with trivial
//! arithmetic.
//!
//! Run through the same engine (same chunking, threads and instruction-set builds), its time over
//! a large tensor is the practical floor for any one-pass optimizer on the machine; the benchmarks
//! report the Adamax update against it.

use crate::kernel::blockwise::QuantizedSlices;
use crate::kernel::{Coefficients, Float, Storage, StridedTensor, TensorSlices, Update};

/// Adds the gradient to the parameter and to both moments.
#[derive(Clone, Copy, Debug, Default)]
pub struct BandwidthProbe;

impl Update for BandwidthProbe {
    #[inline(always)]
    fn flat<P, S, M, C>(self, slices: TensorSlices<'_, P, S, M>, _c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
        M: Storage<C>,
    {
        crate::kernel::for_each_element!(
            slices,
            |p, g, m, u| {
                let g: C = g.load();
                *p = P::store(p.load() + g);
                *m = S::store(m.load() + g);
                *u = S::store(u.load() + g);
            },
            |w| {
                let g: C = g.load();
                let new: C = w.load() + g;
                *w = M::store(new);
                *p = P::store(new);
                *m = S::store(m.load() + g);
                *u = S::store(u.load() + g);
            }
        );
    }

    #[inline(always)]
    fn strided<P, S, M, C>(self, tensor: &mut StridedTensor<'_, P, S, M>, _c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
        M: Storage<C>,
    {
        tensor.for_each(|p, w, g, m, u| {
            let g: C = g.load();
            let new = match w {
                Some(w) => {
                    let new = w.load() + g;
                    *w = M::store(new);
                    new
                }
                None => p.load() + g,
            };
            *p = P::store(new);
            *m = S::store(m.load() + g);
            *u = S::store(u.load() + g);
        });
    }

    #[inline(always)]
    fn quantized<P, C>(self, slices: QuantizedSlices<'_, P>, _c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        f32: Storage<C>,
    {
        // The same bytes as the 8-bit update: codes and scales read and written once.
        let QuantizedSlices {
            param,
            grad,
            exp_avg,
            exp_inf,
            exp_avg_scale,
            exp_inf_scale,
            master,
        } = slices;
        let elements = param
            .iter_mut()
            .zip(grad)
            .zip(exp_avg.iter_mut())
            .zip(exp_inf.iter_mut());
        match master {
            None => {
                for (((p, &g), m), u) in elements {
                    let g: C = g.load();
                    *p = P::store(p.load() + g);
                    *m = m.wrapping_add(1);
                    *u = u.wrapping_add(1);
                }
            }
            Some(master) => {
                for ((((p, &g), m), u), w) in elements.zip(master.iter_mut()) {
                    let new: C = w.load() + g.load();
                    *w = f32::store(new);
                    *p = P::store(new);
                    *m = m.wrapping_add(1);
                    *u = u.wrapping_add(1);
                }
            }
        }
        for (a, b) in exp_avg_scale.iter_mut().zip(exp_inf_scale.iter_mut()) {
            *a += 1.0;
            *b += 1.0;
        }
    }
}
