//! One tensor whose arrays do not share a memory order (a column slice of a larger matrix, a
//! C-ordered gradient for a Fortran-ordered parameter, a broadcast gradient).
//!
//! The flat loop needs every array of a tensor to hold its elements in the same order. When they
//! don't, [`StridedTensor::for_each`] walks them together by logical index: an odometer over the
//! outer dimensions and a plain loop over the innermost one, which is the parameter's fastest
//! dimension. Any number of dimensions works (nothing here is limited to numpy's 32 or 64).

use std::marker::PhantomData;

/// Where one array's element `[0, 0, ...]` is, and its stride in bytes along each dimension.
#[derive(Clone, Copy, Debug)]
pub struct StridedArray<'s> {
    /// The address of the element with index `[0, 0, ...]`.
    pub address: usize,
    /// Bytes between neighbours along each dimension (negative for reversed views).
    pub strides: &'s [isize],
}

/// The arrays written and read per element, in this order: param, grad, exp_avg, exp_inf,
/// master.
const ARRAYS: usize = 5;

#[derive(Clone, Debug)]
struct Dimension {
    len: usize,
    steps: [isize; ARRAYS],
}

/// The arrays of one tensor, in any layout, ready to update element by element.
#[derive(Debug)]
pub struct StridedTensor<'a, P, S, M = S> {
    starts: [usize; ARRAYS],
    has_master: bool,
    /// Outermost first; the last is the innermost loop. Dimensions of length 1 are dropped.
    dims: Vec<Dimension>,
    len: usize,
    _arrays: PhantomData<(&'a mut [P], &'a mut [S], &'a mut [M])>,
}

// SAFETY: a `StridedTensor` is an exclusive borrow of the memory its constructor's contract
// describes (like `&mut [P]` and `&mut [S]`, which are `Send` for `Send` element types), so it
// may be moved to the thread that runs it.
unsafe impl<P: Send, S: Send, M: Send> Send for StridedTensor<'_, P, S, M> {}

impl<'a, P, S, M> StridedTensor<'a, P, S, M> {
    /// Describes one tensor of shape `shape`: each array's strides have `shape.len()` entries.
    ///
    /// # Safety
    /// For `'a`, for every index within `shape`, each array's element at `address + sum(index *
    /// stride)` must be a valid, aligned, initialised value of its type (`P` for param and grad,
    /// `S` for the state, `M` for the master copy); the elements of param, exp_avg, exp_inf and master must be distinct
    /// from each other and from every other element any of the arrays reaches (no self-overlap,
    /// no sharing with the gradient), and nothing else may read or write them. The gradient's
    /// elements may repeat (a broadcast view) and are only read.
    pub unsafe fn new(
        shape: &[usize],
        param: StridedArray<'_>,
        grad: StridedArray<'_>,
        exp_avg: StridedArray<'_>,
        exp_inf: StridedArray<'_>,
        master: Option<StridedArray<'_>>,
    ) -> Self {
        let arrays = [param, grad, exp_avg, exp_inf, master.unwrap_or(param)];
        let len = shape.iter().product();
        let mut dims: Vec<Dimension> = shape
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n != 1)
            .map(|(axis, &n)| Dimension {
                len: n,
                steps: arrays.map(|a| a.strides[axis]),
            })
            .collect();
        // The parameter's smallest stride innermost: it is the array most often written.
        dims.sort_by_key(|d| std::cmp::Reverse(d.steps[0].unsigned_abs()));
        StridedTensor {
            starts: arrays.map(|a| a.address),
            has_master: master.is_some(),
            dims,
            len,
            _arrays: PhantomData,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when there is nothing to update.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `true` when a master copy is updated too.
    pub fn has_master(&self) -> bool {
        self.has_master
    }

    /// Calls `f(param, master, grad, exp_avg, exp_inf)` once for every element.
    #[inline(always)]
    pub fn for_each(&mut self, mut f: impl FnMut(&mut P, Option<&mut M>, P, &mut S, &mut S))
    where
        P: Copy,
    {
        if self.len == 0 {
            return;
        }
        let has_master = self.has_master;
        let mut visit = |at: &[usize; ARRAYS]| {
            // SAFETY: `at` is the address of one element of each array for an index within the
            // shape (the odometer below only produces those), so by the constructor's contract
            // each is valid and aligned, and the written ones are exclusively ours and distinct
            // from each other and from the gradient's.
            unsafe {
                let master = has_master.then(|| &mut *(at[4] as *mut M));
                f(
                    &mut *(at[0] as *mut P),
                    master,
                    *(at[1] as *const P),
                    &mut *(at[2] as *mut S),
                    &mut *(at[3] as *mut S),
                )
            }
        };
        let Some((inner, outer)) = self.dims.split_last() else {
            // Zero dimensions (or all of length 1): a single element.
            visit(&self.starts);
            return;
        };
        let mut index = vec![0usize; outer.len()];
        let mut base = self.starts;
        loop {
            let mut at = base;
            for _ in 0..inner.len {
                visit(&at);
                for (a, step) in at.iter_mut().zip(inner.steps) {
                    *a = a.wrapping_add_signed(step);
                }
            }
            // Advance the odometer over the outer dimensions, last first.
            let mut axis = outer.len();
            loop {
                if axis == 0 {
                    return;
                }
                axis -= 1;
                let dim = &outer[axis];
                index[axis] += 1;
                for (b, step) in base.iter_mut().zip(dim.steps) {
                    *b = b.wrapping_add_signed(step);
                }
                if index[axis] < dim.len {
                    break;
                }
                for (b, step) in base.iter_mut().zip(dim.steps) {
                    *b = b.wrapping_add_signed(-step * dim.len as isize);
                }
                index[axis] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Visits a 3 x 4 C-ordered parameter through a transposed (Fortran-ordered) gradient and
    /// checks that every element pairs with the gradient of the same logical index.
    #[test]
    fn walks_arrays_of_different_layouts_by_logical_index() {
        let mut param: Vec<f32> = (0..12).map(|i| i as f32).collect();
        // grad[i][j] stored at j * 3 + i (Fortran order), value 100 * i + j.
        let mut grad = vec![0.0f32; 12];
        for i in 0..3 {
            for j in 0..4 {
                grad[j * 3 + i] = (100 * i + j) as f32;
            }
        }
        let mut m = vec![0.0f32; 12];
        let mut u = vec![0.0f32; 12];
        let c_strides = [16isize, 4];
        let f_strides = [4isize, 12];
        let array = |v: &mut [f32], strides| StridedArray {
            address: v.as_mut_ptr() as usize,
            strides,
        };
        let g = array(&mut grad, &f_strides);
        let (p, a, b) = (
            array(&mut param, &c_strides),
            array(&mut m, &c_strides),
            array(&mut u, &c_strides),
        );
        // SAFETY: every array holds 12 f32 and the strides stay inside them; the four written
        // arrays are distinct vectors.
        let mut t = unsafe { StridedTensor::<f32, f32>::new(&[3, 4], p, g, a, b, None) };
        assert_eq!(t.len(), 12);
        let mut seen = Vec::new();
        t.for_each(|p, _, g, m, _| {
            seen.push((*p, g));
            *m = 1.0;
        });
        seen.sort_by(|x, y| x.0.total_cmp(&y.0));
        for (k, (p, g)) in seen.into_iter().enumerate() {
            assert_eq!(p, k as f32);
            assert_eq!(g, (100 * (k / 4) + k % 4) as f32);
        }
        assert!(m.iter().all(|&x| x == 1.0));
    }

    #[test]
    fn many_dimensions_and_zero_dimensions() {
        // 40 dimensions, two of length 2 and the rest of length 1: 4 elements.
        let mut shape = vec![1usize; 40];
        shape[3] = 2;
        shape[37] = 2;
        let mut strides = vec![0isize; 40];
        strides[3] = 8;
        strides[37] = 4;
        let mut w = [[0.0f32; 4]; 4];
        let arrays: Vec<StridedArray<'_>> = w
            .iter_mut()
            .map(|x| StridedArray {
                address: x.as_mut_ptr() as usize,
                strides: &strides,
            })
            .collect();
        // SAFETY: 4 f32 per array; strides 8 and 4 bytes over lengths 2 and 2 cover exactly them.
        let mut t = unsafe {
            StridedTensor::<f32, f32>::new(&shape, arrays[0], arrays[1], arrays[2], arrays[3], None)
        };
        let mut count = 0;
        t.for_each(|p, _, _, _, _| {
            *p += 1.0;
            count += 1;
        });
        assert_eq!(count, 4);
        assert_eq!(w[0], [1.0; 4]);

        let mut one = [5.0f32; 4];
        let scalar: Vec<StridedArray<'_>> = one
            .iter_mut()
            .map(|x| StridedArray {
                address: x as *mut f32 as usize,
                strides: &[],
            })
            .collect();
        // SAFETY: zero dimensions: one element per array, each its own f32.
        let mut t = unsafe {
            StridedTensor::<f32, f32>::new(&[], scalar[0], scalar[1], scalar[2], scalar[3], None)
        };
        assert_eq!(t.len(), 1);
        t.for_each(|p, _, g, _, _| *p += g);
        assert_eq!(one[0], 10.0);
    }
}
