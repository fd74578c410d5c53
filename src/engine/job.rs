//! One tensor's update (or a piece of one), typed by how its arrays are stored.
//!
//! The engine supports a fixed list of (parameter, state, compute) types, [`for_each_precision`].
//! Each becomes a variant of [`Precision`] (chosen from the element types of a tensor's arrays)
//! and of [`Job`] (which carries the typed slices, or the strided arrays, and the coefficients).

use crate::kernel::{Coefficients, StridedTensor, TensorSlices, Update};
use crate::simd::{self, Isa};

use super::memory::Element;

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

/// The work on one tensor with parameters stored as `P`, state as `S`, arithmetic in `C`.
pub enum Work<'a, P, S, C> {
    /// Every array stores its elements in the same order: one flat loop, splittable.
    Flat(TensorSlices<'a, P, S>, &'a Coefficients<C>),
    /// Arrays in different layouts: walked by index, in one piece.
    Strided(StridedTensor<'a, P, S>, &'a Coefficients<C>),
}

/// Calls `$m!` with every supported precision: `Variant(param, state, compute, param element,
/// state element)`.
macro_rules! for_each_precision {
    ($m:ident) => {
        $m! {
            F32(f32, f32, f32, Float32, Float32),
            F64(f64, f64, f64, Float64, Float64),
            F32WithF64State(f32, f64, f64, Float32, Float64),
            F64WithF32State(f64, f32, f64, Float64, Float32),
            F16(::half::f16, f32, f32, Float16, Float32),
            BF16(::half::bf16, f32, f32, BFloat16, Float32),
            F16WithF64State(::half::f16, f64, f64, Float16, Float64),
            BF16WithF64State(::half::bf16, f64, f64, BFloat16, Float64),
        }
    };
}

macro_rules! define_jobs {
    ($($variant:ident($p:ty, $s:ty, $c:ty, $pe:ident, $se:ident)),* $(,)?) => {
        /// A supported combination of parameter and state storage.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Precision {
            $($variant,)*
        }

        impl Precision {
            /// The precision of a tensor whose parameter is stored as `param` and state as
            /// `state` (complex types as pairs of their real parts); `None` if unsupported.
            pub fn of(param: Element, state: Element) -> Option<Precision> {
                let param = param.real_part().unwrap_or(param);
                let state = state.real_part().unwrap_or(state);
                match (param, state) {
                    $((Element::$pe, Element::$se) => Some(Precision::$variant),)*
                    _ => None,
                }
            }

            /// Bytes one element moves.
            pub fn bytes_per_element(self, master: bool) -> usize {
                match self {
                    $(Precision::$variant => bytes_per_element::<$p, $s>(master),)*
                }
            }
        }

        /// The update of one tensor (or a piece of one), with its storage and compute types.
        pub enum Job<'a> {
            $($variant(Work<'a, $p, $s, $c>),)*
        }

        impl<'a> Job<'a> {
            /// Number of elements.
            pub fn len(&self) -> usize {
                match self {
                    $(Job::$variant(Work::Flat(s, _)) => s.len(),
                      Job::$variant(Work::Strided(t, _)) => t.len(),)*
                }
            }

            /// `true` when there is nothing to do.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            fn bytes_per_element(&self) -> usize {
                match self {
                    $(Job::$variant(Work::Flat(s, _)) => bytes_per_element::<$p, $s>(s.has_master()),
                      Job::$variant(Work::Strided(t, _)) => bytes_per_element::<$p, $s>(t.has_master()),)*
                }
            }

            /// Splits a flat job into `[0, mid)` and the rest; a strided job is not split.
            pub(super) fn split_at(self, mid: usize) -> Result<(Self, Self), Self> {
                match self {
                    $(Job::$variant(Work::Flat(s, c)) => {
                        let (a, b) = s.split_at(mid);
                        Ok((Job::$variant(Work::Flat(a, c)), Job::$variant(Work::Flat(b, c))))
                    })*
                    strided => Err(strided),
                }
            }

            /// Runs `rule` over this job on the calling thread, with the build for `isa`. (A job is
            /// run once; it is taken by reference so that the vector holding it can be reused.)
            pub fn run<U: Update>(&mut self, isa: Isa, rule: U) {
                match self {
                    $(Job::$variant(Work::Flat(s, c)) => simd::run_flat(isa, rule, s.reborrow(), c),
                      Job::$variant(Work::Strided(t, c)) => rule.strided(t, c),)*
                }
            }
        }

        $(
            impl<'a> From<Work<'a, $p, $s, $c>> for Job<'a> {
                fn from(work: Work<'a, $p, $s, $c>) -> Self {
                    Job::$variant(work)
                }
            }
        )*

        /// Calls `$body` with `$P`, `$S`, `$C` bound to the storage and compute types of
        /// `$precision`, as a generic function would.
        #[allow(unused_macros)]
        macro_rules! with_precision_types {
            ($precision:expr, |$P:ident, $S:ident, $C:ident| $body:expr) => {
                match $precision {
                    $(Precision::$variant => {
                        type $P = $p;
                        type $S = $s;
                        type $C = $c;
                        $body
                    })*
                }
            };
        }
    };
}

for_each_precision!(define_jobs);
#[allow(unused_imports)]
pub(crate) use with_precision_types;

impl Job<'_> {
    /// Bytes this job moves through memory.
    pub fn cost(&self) -> usize {
        self.len() * self.bytes_per_element()
    }
}
