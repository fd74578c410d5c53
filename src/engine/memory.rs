//! What a front end tells the engine about an array: where its memory is and how it is laid out.
//!
//! Front ends (numpy arrays, torch tensors through DLPack) read an array's header into a
//! [`RawArray`], a plain description with no ownership that can be cached and compared.
//! Everything a step checks is one of these snapshots, and everything it uses is the same
//! snapshot: nothing is read from the owner again.

use std::fmt;

use smallvec::SmallVec;

/// Dimensions of an array.
pub type Dims = SmallVec<[usize; 4]>;
/// Strides of an array, in bytes (negative for reversed views).
pub type Strides = SmallVec<[isize; 4]>;

/// The type of an array's elements, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Element {
    Float16,
    BFloat16,
    Float32,
    Float64,
    /// Pairs of float32 (numpy's complex64).
    Complex64,
    /// Pairs of float64 (numpy's complex128).
    Complex128,
    /// Bytes: the codes of 8-bit optimizer state (never a parameter).
    UInt8,
}

impl Element {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Element::UInt8 => 1,
            Element::Float16 | Element::BFloat16 => 2,
            Element::Float32 => 4,
            Element::Float64 | Element::Complex64 => 8,
            Element::Complex128 => 16,
        }
    }

    /// The name numpy and torch users know it by.
    pub fn name(self) -> &'static str {
        match self {
            Element::Float16 => "float16",
            Element::BFloat16 => "bfloat16",
            Element::Float32 => "float32",
            Element::Float64 => "float64",
            Element::Complex64 => "complex64",
            Element::Complex128 => "complex128",
            Element::UInt8 => "uint8",
        }
    }

    /// The real type of a complex element's parts (`None` for real types).
    pub fn real_part(self) -> Option<Element> {
        match self {
            Element::Complex64 => Some(Element::Float32),
            Element::Complex128 => Some(Element::Float64),
            _ => None,
        }
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes `[start, end)` an array can touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Extent {
    pub start: usize,
    pub end: usize,
}

/// An array's memory and layout, read from its owner. Plain data: comparing two snapshots of the
/// same object tells whether anything about it changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawArray {
    /// Address of the element with index `[0, 0, ...]`.
    pub address: usize,
    pub element: Element,
    pub shape: Dims,
    /// Bytes between neighbours along each axis; as many as `shape` has.
    pub strides: Strides,
    /// Whether the owner allows writing through this array.
    pub writeable: bool,
}

/// Why an array's description cannot be used at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// `strides` and `shape` have different lengths.
    StridesDoNotMatchShape,
    /// The number of elements or the bytes spanned do not fit in the address space.
    TooLarge,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::StridesDoNotMatchShape => {
                f.write_str("its strides do not match its shape")
            }
            LayoutError::TooLarge => f.write_str("its size does not fit in the address space"),
        }
    }
}

impl RawArray {
    /// Checks that the description is self-consistent and that its extent is computable.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.strides.len() != self.shape.len() {
            return Err(LayoutError::StridesDoNotMatchShape);
        }
        self.len().ok_or(LayoutError::TooLarge)?;
        if !self.is_empty() {
            self.span().ok_or(LayoutError::TooLarge)?;
        }
        Ok(())
    }

    /// The number of elements (`None` on overflow).
    pub fn len(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// `true` for an array with no elements (it touches no memory).
    pub fn is_empty(&self) -> bool {
        self.shape.contains(&0)
    }

    /// The lowest and one-past-highest byte offsets from `address` (`None` on overflow).
    fn span(&self) -> Option<(isize, isize)> {
        let (mut low, mut high) = (0isize, 0isize);
        for (&n, &stride) in self.shape.iter().zip(&self.strides) {
            let reach = isize::try_from(n)
                .ok()?
                .checked_sub(1)?
                .checked_mul(stride)?;
            if reach < 0 {
                low = low.checked_add(reach)?;
            } else {
                high = high.checked_add(reach)?;
            }
        }
        let size = isize::try_from(self.element.size()).ok()?;
        Some((low, high.checked_add(size)?))
    }

    /// The bytes the array can touch, whatever its strides; `None` when it has no elements.
    pub fn extent(&self) -> Option<Extent> {
        if let ([n], [stride]) = (&self.shape[..], &self.strides[..]) {
            // The common case, without the general loop: one axis, forward.
            if *n > 0 && *stride >= 0 {
                let reach = (*n - 1)
                    .checked_mul(*stride as usize)?
                    .checked_add(self.element.size())?;
                return Some(Extent {
                    start: self.address,
                    end: self.address.checked_add(reach)?,
                });
            }
        }
        if self.is_empty() {
            return None;
        }
        let (low, high) = self.span()?;
        Some(Extent {
            start: self.address.checked_add_signed(low)?,
            end: self.address.checked_add_signed(high)?,
        })
    }

    /// Whether the start and every stride are multiples of the element's alignment (as numpy's
    /// `ALIGNED` flag; for complex types, the alignment of their parts).
    pub fn is_aligned(&self) -> bool {
        let align = self.element.real_part().unwrap_or(self.element).size();
        let stride_ok = self
            .shape
            .iter()
            .zip(&self.strides)
            .all(|(&n, &s)| n <= 1 || s.unsigned_abs() % align == 0);
        self.address % align == 0 && stride_ok
    }

    /// The axes that matter for the layout (length > 1), with their strides, smallest stride
    /// first.
    fn moving_axes(&self) -> SmallVec<[(usize, isize); 4]> {
        let mut axes: SmallVec<[(usize, isize); 4]> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&n, _)| n > 1)
            .map(|(&n, &s)| (n, s))
            .collect();
        axes.sort_by_key(|&(_, s)| s.unsigned_abs());
        axes
    }

    /// Whether two different indices can reach the same byte (a zero stride, or strides smaller
    /// than the block they step over). Conservative: some exotic interleavings that do not
    /// overlap are reported as overlapping too.
    pub fn overlaps_itself(&self) -> bool {
        if self.is_empty() {
            return false;
        }
        let mut covered = self.element.size();
        for (n, s) in self.moving_axes() {
            if s.unsigned_abs() < covered {
                return true;
            }
            covered += s.unsigned_abs() * (n - 1);
        }
        false
    }

    /// Whether the elements fill their extent exactly, with no gaps and no overlap.
    pub fn is_dense(&self) -> bool {
        match (self.extent(), self.len()) {
            (Some(e), Some(n)) => {
                !self.overlaps_itself() && e.end - e.start == n * self.element.size()
            }
            _ => true,
        }
    }

    /// The strides in elements of every axis longer than 1, in axis order: two dense arrays of
    /// one shape with equal orders store their elements in the same order, so one flat loop over
    /// both pairs every element with its own. `None` if a stride is not a whole element.
    pub fn element_order(&self) -> Option<SmallVec<[isize; 4]>> {
        let size = self.element.size() as isize;
        self.shape
            .iter()
            .zip(&self.strides)
            .filter(|(&n, _)| n > 1)
            .map(|(_, &s)| (s % size == 0).then_some(s / size))
            .collect()
    }

    /// A complex array as an array of its real parts: one more axis, of length 2 (as numpy's
    /// `view` to the real type and torch's `view_as_real`). Real arrays are returned unchanged.
    pub fn as_real_pairs(&self) -> RawArray {
        let Some(part) = self.element.real_part() else {
            return self.clone();
        };
        let mut out = self.clone();
        out.element = part;
        out.shape.push(2);
        out.strides.push(part.size() as isize);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    fn array(address: usize, shape: &[usize], strides: &[isize]) -> RawArray {
        RawArray {
            address,
            element: Element::Float32,
            shape: shape.iter().copied().collect(),
            strides: strides.iter().copied().collect(),
            writeable: true,
        }
    }

    fn e(start: usize, end: usize) -> Option<Extent> {
        Some(Extent { start, end })
    }

    #[test]
    fn extent_covers_negative_and_positive_strides() {
        assert_eq!(array(1000, &[3, 4], &[16, 4]).extent(), e(1000, 1048));
        // The same data reversed along both axes: starts at the last element.
        assert_eq!(array(1044, &[3, 4], &[-16, -4]).extent(), e(1000, 1048));
        // A column slice: one element every 16 bytes.
        assert_eq!(array(1004, &[3], &[16]).extent(), e(1004, 1040));
        assert_eq!(array(1000, &[0, 4], &[16, 4]).extent(), None);
        assert_eq!(array(1000, &[], &[]).extent(), e(1000, 1004));
    }

    #[test]
    fn overflowing_descriptions_are_refused_not_wrapped() {
        let huge = array(usize::MAX - 8, &[4], &[4]);
        assert_eq!(huge.extent(), None);
        assert_eq!(
            array(0, &[usize::MAX, 4], &[4, 1]).validate(),
            Err(LayoutError::TooLarge)
        );
        assert_eq!(
            array(0, &[4], &[]).validate(),
            Err(LayoutError::StridesDoNotMatchShape)
        );
    }

    #[test]
    fn self_overlap() {
        assert!(!array(0, &[3, 4], &[16, 4]).overlaps_itself());
        assert!(!array(0, &[3, 4], &[4, 12]).overlaps_itself());
        assert!(array(0, &[5], &[0]).overlaps_itself());
        assert!(!array(0, &[1], &[0]).overlaps_itself());
        assert!(array(0, &[3, 4], &[8, 4]).overlaps_itself());
        assert!(!array(0, &[3], &[8]).overlaps_itself());
        assert!(array(0, &[3], &[2]).overlaps_itself());
    }

    #[test]
    fn dense_arrays_and_their_order() {
        let c = array(0, &[3, 4], &[16, 4]);
        let f = array(0, &[3, 4], &[4, 12]);
        let column = array(0, &[3], &[16]);
        assert!(c.is_dense() && f.is_dense() && !column.is_dense());
        assert_eq!(c.element_order(), Some(smallvec![4, 1]));
        assert_eq!(f.element_order(), Some(smallvec![1, 3]));
        // float64 state for a float32 parameter: same order in elements.
        let mut wide = array(0, &[3, 4], &[32, 8]);
        wide.element = Element::Float64;
        assert_eq!(wide.element_order(), c.element_order());
    }

    #[test]
    fn complex_arrays_become_real_pairs() {
        let mut z = array(64, &[3], &[16]);
        z.element = Element::Complex64;
        let r = z.as_real_pairs();
        assert_eq!(r.element, Element::Float32);
        assert_eq!(&r.shape[..], &[3, 2]);
        assert_eq!(&r.strides[..], &[16, 4]);
        assert_eq!(r.extent(), z.extent());
    }
}
