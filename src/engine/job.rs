//! One tensor's update (or a piece of one), typed by how its arrays are stored.
//!
//! The engine supports a fixed list of (parameter, state, compute) types, [`for_each_precision`]:
//! float state of several widths, and 8-bit block state. Each becomes a variant of [`Precision`]
//! (chosen from the element types of a tensor's arrays) and of [`Job`] (which carries the typed
//! slices, or the strided arrays, and the coefficients).

use crate::kernel::blockwise::{QuantizedSlices, BLOCK};
use crate::kernel::{Coefficients, StridedTensor, TensorSlices, Update};
use crate::simd::{self, Blocks, Isa};

use super::memory::Element;
use super::prefetch;

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

/// As [`bytes_per_element`], with the master copy stored as `M`.
pub fn master_aware_bytes<P, S, M>(master: bool) -> usize {
    let (p, s, m) = (
        std::mem::size_of::<P>(),
        std::mem::size_of::<S>(),
        std::mem::size_of::<M>(),
    );
    if master {
        2 * p + 4 * s + 2 * m
    } else {
        3 * p + 4 * s
    }
}

/// Bytes an update with 8-bit state moves for `len` elements of `P` in `blocks` blocks: the
/// parameter (read and written), the gradient, both codes (read and written), a float32 master
/// copy (read and written) if any, and both scales of each block (read and written).
pub fn quantized_bytes<P>(len: usize, blocks: usize, master: bool) -> usize {
    let p = std::mem::size_of::<P>();
    let master_bytes = if master { 8 } else { 0 };
    len * (if master { 2 * p } else { 3 * p } + 4 + master_bytes) + blocks * 16
}

/// The work on one tensor with parameters stored as `P`, state as `S`, the master copy as `M`,
/// arithmetic in `C`.
pub enum Work<'a, P, S, M, C> {
    /// Every array stores its elements in the same order: one flat loop, splittable.
    Flat(TensorSlices<'a, P, S, M>, &'a Coefficients<C>),
    /// Arrays in different layouts: walked by index, in one piece.
    Strided(StridedTensor<'a, P, S, M>, &'a Coefficients<C>),
}

/// Calls `$m!` with every supported precision: float state as `Variant(param, state, master,
/// compute, param element, state element)`, then 8-bit state as `Variant(param, compute, param
/// element)` (its master copy is float32).
macro_rules! for_each_precision {
    ($m:ident) => {
        $m! {
            float {
                F32(f32, f32, f32, f32, Float32, Float32),
                F64(f64, f64, f64, f64, Float64, Float64),
                F32WithF64State(f32, f64, f64, f64, Float32, Float64),
                F64WithF32State(f64, f32, f32, f64, Float64, Float32),
                F16(::half::f16, f32, f32, f32, Float16, Float32),
                BF16(::half::bf16, f32, f32, f32, BFloat16, Float32),
                F16WithF64State(::half::f16, f64, f64, f64, Float16, Float64),
                BF16WithF64State(::half::bf16, f64, f64, f64, BFloat16, Float64),
                F32WithBF16State(f32, ::half::bf16, f32, f32, Float32, BFloat16),
                F64WithBF16State(f64, ::half::bf16, f64, f64, Float64, BFloat16),
                F16WithBF16State(::half::f16, ::half::bf16, f32, f32, Float16, BFloat16),
                BF16WithBF16State(::half::bf16, ::half::bf16, f32, f32, BFloat16, BFloat16),
            }
            blockwise {
                F32With8BitState(f32, f32, Float32),
                F64With8BitState(f64, f64, Float64),
                F16With8BitState(::half::f16, f32, Float16),
                BF16With8BitState(::half::bf16, f32, BFloat16),
            }
        }
    };
}

macro_rules! define_jobs {
    (
        float { $($variant:ident($p:ty, $s:ty, $w:ty, $c:ty, $pe:ident, $se:ident)),* $(,)? }
        blockwise { $($qvariant:ident($qp:ty, $qc:ty, $qe:ident)),* $(,)? }
    ) => {
        /// A supported combination of parameter and state storage.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Precision {
            $($variant,)*
            $($qvariant,)*
        }

        impl Precision {
            /// The precision of a tensor whose parameter is stored as `param` and state as
            /// `state` (complex types as pairs of their real parts; `UInt8` state is 8-bit
            /// block state); `None` if unsupported.
            pub fn of(param: Element, state: Element) -> Option<Precision> {
                let param = param.real_part().unwrap_or(param);
                let state = state.real_part().unwrap_or(state);
                match (param, state) {
                    $((Element::$pe, Element::$se) => Some(Precision::$variant),)*
                    $((Element::$qe, Element::UInt8) => Some(Precision::$qvariant),)*
                    _ => None,
                }
            }

            /// Whether the state is 8-bit block state.
            pub fn is_blockwise(self) -> bool {
                match self {
                    $(Precision::$variant => false,)*
                    $(Precision::$qvariant => true,)*
                }
            }

            /// Bytes an update of `len` storage values moves (`blocks` blocks for 8-bit state).
            pub fn bytes(self, len: usize, blocks: usize, master: bool) -> usize {
                match self {
                    $(Precision::$variant => len * master_aware_bytes::<$p, $s, $w>(master),)*
                    $(Precision::$qvariant => quantized_bytes::<$qp>(len, blocks, master),)*
                }
            }
        }

        /// The update of one tensor (or a piece of one), with its storage and compute types.
        pub enum Job<'a> {
            $($variant(Work<'a, $p, $s, $w, $c>),)*
            $($qvariant(QuantizedSlices<'a, $qp>, &'a Coefficients<$qc>),)*
        }

        impl<'a> Job<'a> {
            /// Number of elements.
            pub fn len(&self) -> usize {
                match self {
                    $(Job::$variant(Work::Flat(s, _)) => s.len(),
                      Job::$variant(Work::Strided(t, _)) => t.len(),)*
                    $(Job::$qvariant(s, _) => s.len(),)*
                }
            }

            /// `true` when there is nothing to do.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// Bytes this job moves through memory.
            pub fn cost(&self) -> usize {
                match self {
                    $(Job::$variant(Work::Flat(s, _)) => s.len() * master_aware_bytes::<$p, $s, $w>(s.has_master()),
                      Job::$variant(Work::Strided(t, _)) => t.len() * master_aware_bytes::<$p, $s, $w>(t.has_master()),)*
                    $(Job::$qvariant(s, _) => quantized_bytes::<$qp>(s.len(), s.len().div_ceil(BLOCK), s.has_master()),)*
                }
            }

            /// Where a split may fall: a multiple of this many elements (`None`: nowhere).
            pub(super) fn split_unit(&self) -> Option<usize> {
                match self {
                    $(Job::$variant(Work::Flat(..)) => Some(1),
                      Job::$variant(Work::Strided(..)) => None,)*
                    $(Job::$qvariant(..) => Some(BLOCK),)*
                }
            }

            /// Splits a job into `[0, mid)` and the rest (`mid` a multiple of `split_unit`); a
            /// job that cannot be split is given back.
            pub(super) fn split_at(self, mid: usize) -> Result<(Self, Self), Self> {
                match self {
                    $(Job::$variant(Work::Flat(s, c)) => {
                        let (a, b) = s.split_at(mid);
                        Ok((Job::$variant(Work::Flat(a, c)), Job::$variant(Work::Flat(b, c))))
                    })*
                    $(Job::$qvariant(s, c) => {
                        let (a, b) = s.split_at_block(mid / BLOCK);
                        Ok((Job::$qvariant(a, c), Job::$qvariant(b, c)))
                    })*
                    strided => Err(strided),
                }
            }

            /// Hints the memory of this job's arrays to the CPU (see [`prefetch`]); strided jobs,
            /// which are rare and walked by index, are left to the hardware.
            #[inline]
            pub fn prefetch(&self) {
                fn range<T>(slice: &[T]) {
                    prefetch::prefetch_range(slice.as_ptr() as usize, std::mem::size_of_val(slice));
                }
                match self {
                    $(Job::$variant(Work::Flat(s, _)) => {
                        range(s.param);
                        range(s.grad);
                        range(s.exp_avg);
                        range(s.exp_inf);
                        if let Some(master) = &s.master {
                            range(master);
                        }
                    }
                    Job::$variant(Work::Strided(..)) => {})*
                    $(Job::$qvariant(s, _) => {
                        range(s.param);
                        range(s.grad);
                        range(s.exp_avg);
                        range(s.exp_inf);
                        range(s.exp_avg_scale);
                        range(s.exp_inf_scale);
                        if let Some(master) = &s.master {
                            range(master);
                        }
                    })*
                }
            }

            /// Runs `rule` over this job on the calling thread, with the build for `isa`. (A job is
            /// run once; it is taken by reference so that the vector holding it can be reused.)
            pub fn run<U: Update>(&mut self, isa: Isa, rule: U) {
                match self {
                    $(Job::$variant(Work::Flat(s, c)) => simd::run_flat(isa, rule, s.reborrow(), c),
                      Job::$variant(Work::Strided(t, c)) => rule.strided(t, c),)*
                    $(Job::$qvariant(s, c) => simd::run(isa, rule, Blocks(s.reborrow(), c)),)*
                }
            }
        }

        $(
            impl<'a> From<Work<'a, $p, $s, $w, $c>> for Job<'a> {
                fn from(work: Work<'a, $p, $s, $w, $c>) -> Self {
                    Job::$variant(work)
                }
            }
        )*
        $(
            impl<'a> From<(QuantizedSlices<'a, $qp>, &'a Coefficients<$qc>)> for Job<'a> {
                fn from((slices, c): (QuantizedSlices<'a, $qp>, &'a Coefficients<$qc>)) -> Self {
                    Job::$qvariant(slices, c)
                }
            }
        )*

        /// Calls `$float` with `$P`, `$S`, `$C` bound to the storage and compute types of a
        /// float-state `$precision`, or `$blockwise` with `$P`, `$C` for 8-bit state.
        #[allow(unused_macros)]
        macro_rules! with_precision_types {
            ($precision:expr, float |$P:ident, $S:ident, $M:ident, $C:ident| $float:expr,
             blockwise |$QP:ident, $QC:ident| $blockwise:expr) => {
                match $precision {
                    $(Precision::$variant => {
                        type $P = $p;
                        type $S = $s;
                        type $M = $w;
                        type $C = $c;
                        $float
                    })*
                    $(Precision::$qvariant => {
                        type $QP = $qp;
                        type $QC = $qc;
                        $blockwise
                    })*
                }
            };
        }
    };
}

for_each_precision!(define_jobs);
#[allow(unused_imports)]
pub(crate) use with_precision_types;
