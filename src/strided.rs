//! The update over arrays of any layout (views with strides, mixed C/Fortran order).
//!
//! The flat kernel needs the four arrays to hold their elements in the same memory order.
//! When they don't (a column slice of a larger matrix, a C-ordered gradient for a Fortran-
//! ordered parameter), ndarray's `Zip` walks them together by logical index instead. It is
//! the same element update, so the results are the same bits; it is only slower.

use std::fmt;

use ndarray::{ArrayViewD, ArrayViewMutD, Zip};

use crate::kernel::{update_element, Coefficients, Float};

/// The four views of one tensor, in any layout.
pub struct TensorViews<'a, T> {
    param: ArrayViewMutD<'a, T>,
    grad: ArrayViewD<'a, T>,
    exp_avg: ArrayViewMutD<'a, T>,
    exp_inf: ArrayViewMutD<'a, T>,
}

/// The four views given to [`TensorViews::new`] differ in shape.
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

impl<'a, T> TensorViews<'a, T> {
    /// Groups the four views of one tensor; they must have the same shape.
    pub fn new(
        param: ArrayViewMutD<'a, T>,
        grad: ArrayViewD<'a, T>,
        exp_avg: ArrayViewMutD<'a, T>,
        exp_inf: ArrayViewMutD<'a, T>,
    ) -> Result<Self, ShapeMismatch> {
        for other in [grad.shape(), exp_avg.shape(), exp_inf.shape()] {
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
}

fn zip_run<T: Float, const MAXIMIZE: bool, const COUPLED: bool, const EPS_IN: bool>(
    v: TensorViews<'_, T>,
    c: &Coefficients<T>,
) {
    Zip::from(v.param)
        .and(&v.grad)
        .and(v.exp_avg)
        .and(v.exp_inf)
        .for_each(|p, &g, m, u| update_element::<T, MAXIMIZE, COUPLED, EPS_IN>(p, g, m, u, c));
}

/// Updates one tensor in place whatever its layout.
pub fn adamax_update_strided<T: Float>(views: TensorViews<'_, T>, coefficients: &Coefficients<T>) {
    crate::dispatch::with_flags!(zip_run, views, coefficients)
}
