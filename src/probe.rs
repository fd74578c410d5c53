//! The bandwidth probe, a benchmark tool: the reads and writes of an Adamax step with trivial
//! arithmetic.
//!
//! Run through the same engine (same chunking, threads and instruction-set builds), its time over
//! a large tensor is the practical floor for any one-pass optimizer on the machine; the benchmarks
//! report the Adamax update against it.

use crate::kernel::{Coefficients, Float, Storage, StridedTensor, TensorSlices, Update};

/// Adds the gradient to the parameter and to both moments.
#[derive(Clone, Copy, Debug, Default)]
pub struct BandwidthProbe;

impl Update for BandwidthProbe {
    #[inline(always)]
    fn flat<P, S, C>(self, slices: TensorSlices<'_, P, S>, _c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
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
                *w = S::store(new);
                *p = P::store(new);
                *m = S::store(m.load() + g);
                *u = S::store(u.load() + g);
            }
        );
    }

    #[inline(always)]
    fn strided<P, S, C>(self, tensor: &mut StridedTensor<'_, P, S>, _c: &Coefficients<C>)
    where
        C: Float,
        P: Storage<C>,
        S: Storage<C>,
    {
        tensor.for_each(|p, w, g, m, u| {
            let g: C = g.load();
            let new = match w {
                Some(w) => {
                    let new = w.load() + g;
                    *w = S::store(new);
                    new
                }
                None => p.load() + g,
            };
            *p = P::store(new);
            *m = S::store(m.load() + g);
            *u = S::store(u.load() + g);
        });
    }
}
