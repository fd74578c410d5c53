//! The update over arrays of any layout (views with strides, mixed C/Fortran order).
//!
//! The flat kernel needs the arrays of a tensor to hold their elements in the same memory
//! order. When they don't (a column slice of a larger matrix, a C-ordered gradient for a
//! Fortran-ordered parameter), ndarray's `Zip` walks them together by logical index instead.
//! It is the same element update, so the results are the same bits; it is only slower.

use std::fmt;

use ndarray::{ArrayViewD, ArrayViewMutD, Zip};

use crate::kernel::{update_element, update_element_master, Coefficients, Float};
use crate::precision::Storage;

/// The views of one tensor, in any layout.
pub struct TensorViews<'a, P, S> {
    param: ArrayViewMutD<'a, P>,
    grad: ArrayViewD<'a, P>,
    exp_avg: ArrayViewMutD<'a, S>,
    exp_inf: ArrayViewMutD<'a, S>,
    master: Option<ArrayViewMutD<'a, S>>,
}

/// The views given to [`TensorViews::new`] differ in shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub param: Vec<usize>,
    pub other: Vec<usize>,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shape {:?} differs from the parameter's {:?}",
            self.other, self.param
        )
    }
}

impl std::error::Error for ShapeMismatch {}

impl<'a, P, S> TensorViews<'a, P, S> {
    /// Groups the views of one tensor; they must have the same shape.
    pub fn new(
        param: ArrayViewMutD<'a, P>,
        grad: ArrayViewD<'a, P>,
        exp_avg: ArrayViewMutD<'a, S>,
        exp_inf: ArrayViewMutD<'a, S>,
        master: Option<ArrayViewMutD<'a, S>>,
    ) -> Result<Self, ShapeMismatch> {
        let shapes = [grad.shape(), exp_avg.shape(), exp_inf.shape()];
        let master_shape = master.as_ref().map(|m| m.shape());
        for other in shapes.into_iter().chain(master_shape) {
            if other != param.shape() {
                return Err(ShapeMismatch {
                    param: param.shape().to_vec(),
                    other: other.to_vec(),
                });
            }
        }
        Ok(Self {
            param,
            grad,
            exp_avg,
            exp_inf,
            master,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.param.len()
    }

    /// `true` when there is nothing to update.
    pub fn is_empty(&self) -> bool {
        self.param.is_empty()
    }

    /// `true` when a master copy is updated too.
    pub fn has_master(&self) -> bool {
        self.master.is_some()
    }
}

fn zip_run<P, S, C, const MAXIMIZE: bool, const COUPLED: bool, const TORCH: bool>(
    v: TensorViews<'_, P, S>,
    c: &Coefficients<C>,
) where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    match v.master {
        None => Zip::from(v.param)
            .and(&v.grad)
            .and(v.exp_avg)
            .and(v.exp_inf)
            .for_each(|p, &g, m, u| {
                update_element::<P, S, C, MAXIMIZE, COUPLED, TORCH>(p, g, m, u, c)
            }),
        Some(master) => Zip::from(v.param)
            .and(master)
            .and(&v.grad)
            .and(v.exp_avg)
            .and(v.exp_inf)
            .for_each(|p, w, &g, m, u| {
                update_element_master::<P, S, C, MAXIMIZE, COUPLED, TORCH>(p, w, g, m, u, c)
            }),
    }
}

/// Updates one tensor in place whatever its layout.
pub fn adamax_update_strided<P, S, C>(views: TensorViews<'_, P, S>, coefficients: &Coefficients<C>)
where
    C: Float,
    P: Storage<C>,
    S: Storage<C>,
{
    crate::dispatch::with_flags!(zip_run, views, coefficients)
}
