//! Borrowed, strided views of 4-D attention tensors (`[B, H, S, D]`).
//!
//! Inputs are never copied to be accepted: a view is a slice plus a shape and strides in elements,
//! so `[B, S, H, D]` buffers (what models produce) are passed as `[B, H, S, D]` views by permuting the
//! strides. Kernels read through the view and pack what they need into scratch.

use crate::error::{Error, Result};
use half::{bf16, f16};

/// Element type of an input tensor. Accumulation is always f32 (fast paths) or f64 (references).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Lower-case name (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The borrowed storage of a view.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

impl Data<'_> {
    /// Number of elements in the slice.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(s) => s.len(),
            Data::F16(s) => s.len(),
            Data::BF16(s) => s.len(),
        }
    }

    /// True when the slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
        }
    }
}

impl<'a> From<&'a [f32]> for Data<'a> {
    fn from(s: &'a [f32]) -> Self {
        Data::F32(s)
    }
}
impl<'a> From<&'a [f16]> for Data<'a> {
    fn from(s: &'a [f16]) -> Self {
        Data::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for Data<'a> {
    fn from(s: &'a [bf16]) -> Self {
        Data::BF16(s)
    }
}
impl<'a> From<&'a Vec<f32>> for Data<'a> {
    fn from(s: &'a Vec<f32>) -> Self {
        Data::F32(s)
    }
}

/// A read-only view `[B, H, S, D]` with element strides.
///
/// Invariant (checked by the constructors): every index inside `shape` addresses an element of the
/// slice.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    data: Data<'a>,
    shape: [usize; 4],
    strides: [usize; 4],
}

impl<'a> TensorRef<'a> {
    /// A row-major (contiguous) view of `shape = [B, H, S, D]`.
    ///
    /// # Errors
    /// [`Error::Shape`] when the slice length is not the product of the shape.
    pub fn new(data: impl Into<Data<'a>>, shape: [usize; 4]) -> Result<Self> {
        Self::with_strides(data, shape, contiguous_strides(shape))
    }

    /// A view of a `[B, S, H, D]` buffer (the layout most models produce) as `[B, H, S, D]`.
    ///
    /// # Errors
    /// [`Error::Shape`] when the slice length is not the product of the shape.
    pub fn from_bshd(data: impl Into<Data<'a>>, bshd: [usize; 4]) -> Result<Self> {
        let [b, s, h, d] = bshd;
        let data = data.into();
        let n = bshd.iter().try_fold(1usize, |a, &x| a.checked_mul(x));
        if n != Some(data.len()) {
            return Err(Error::Shape {
                op: "TensorRef::from_bshd",
                detail: format!("buffer holds {} elements, shape {bshd:?} needs {n:?}", data.len()),
            });
        }
        Self::with_strides(data, [b, h, s, d], [s * h * d, d, h * d, 1])
    }

    /// A view with explicit strides (in elements) for `[B, H, S, D]`.
    ///
    /// # Errors
    /// [`Error::Shape`] when the largest addressed element lies outside the slice, or when a
    /// contiguous layout was expected and the length differs.
    pub fn with_strides(
        data: impl Into<Data<'a>>,
        shape: [usize; 4],
        strides: [usize; 4],
    ) -> Result<Self> {
        let data = data.into();
        let overflow = || Error::Shape {
            op: "TensorRef",
            detail: format!("shape {shape:?} with strides {strides:?} overflows the address space"),
        };
        let n = shape.iter().try_fold(1usize, |a, &x| a.checked_mul(x)).ok_or_else(overflow)?;
        if n > 0 {
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(0usize, |a, (&s, &st)| {
                    (s - 1).checked_mul(st).and_then(|x| a.checked_add(x))
                })
                .ok_or_else(overflow)?;
            if last >= data.len() {
                return Err(Error::Shape {
                    op: "TensorRef",
                    detail: format!(
                        "shape {shape:?} with strides {strides:?} reaches element {last} but the buffer holds {}",
                        data.len()
                    ),
                });
            }
        }
        if strides == contiguous_strides(shape) && data.len() != n {
            return Err(Error::Shape {
                op: "TensorRef",
                detail: format!("buffer holds {} elements, shape {shape:?} needs {n}", data.len()),
            });
        }
        Ok(Self { data, shape, strides })
    }

    /// `[B, H, S, D]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// Element strides of the four axes.
    pub fn strides(&self) -> [usize; 4] {
        self.strides
    }

    /// The storage.
    pub fn data(&self) -> Data<'a> {
        self.data
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Offset of element `[b, h, s, d]` in the slice.
    #[inline(always)]
    pub fn offset(&self, b: usize, h: usize, s: usize, d: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + s * self.strides[2] + d * self.strides[3]
    }

    /// Element `[b, h, s, d]` widened to f32.
    ///
    /// # Panics
    /// When the index is outside the shape (debug) or the slice (always).
    #[inline(always)]
    pub fn get(&self, b: usize, h: usize, s: usize, d: usize) -> f32 {
        debug_assert!(
            b < self.shape[0] && h < self.shape[1] && s < self.shape[2] && d < self.shape[3]
        );
        let o = self.offset(b, h, s, d);
        match self.data {
            Data::F32(x) => x[o],
            Data::F16(x) => x[o].to_f32(),
            Data::BF16(x) => x[o].to_f32(),
        }
    }

    /// Copies row `[b, h, s, :]` into `dst` (length D) as f32, scaled by `alpha`.
    #[inline]
    pub fn read_row(&self, b: usize, h: usize, s: usize, alpha: f32, dst: &mut [f32]) {
        let d = self.shape[3];
        debug_assert_eq!(dst.len(), d);
        let o = self.offset(b, h, s, 0);
        let st = self.strides[3];
        match self.data {
            Data::F32(x) if st == 1 => {
                for (t, &s) in dst.iter_mut().zip(&x[o..o + d]) {
                    *t = s * alpha;
                }
            }
            Data::F32(x) => {
                dst.iter_mut().enumerate().for_each(|(i, t)| *t = x[o + i * st] * alpha)
            }
            Data::F16(x) => {
                dst.iter_mut().enumerate().for_each(|(i, t)| *t = x[o + i * st].to_f32() * alpha)
            }
            Data::BF16(x) => {
                dst.iter_mut().enumerate().for_each(|(i, t)| *t = x[o + i * st].to_f32() * alpha)
            }
        }
    }

    /// The f32 slice of row `[b, h, s, :]` when the storage is f32 with unit stride along D.
    #[inline]
    pub fn row_f32(&self, b: usize, h: usize, s: usize) -> Option<&'a [f32]> {
        match self.data {
            Data::F32(x) if self.strides[3] == 1 => {
                let o = self.offset(b, h, s, 0);
                Some(&x[o..o + self.shape[3]])
            }
            _ => None,
        }
    }

    /// Index and value of the first NaN or ±Inf, if any.
    pub fn first_non_finite(&self) -> Option<([usize; 4], f32)> {
        let [nb, nh, ns, nd] = self.shape;
        for b in 0..nb {
            for h in 0..nh {
                for s in 0..ns {
                    for d in 0..nd {
                        let x = self.get(b, h, s, d);
                        if !x.is_finite() {
                            return Some(([b, h, s, d], x));
                        }
                    }
                }
            }
        }
        None
    }
}

/// Row-major strides of a 4-D shape (saturating: an overflowing shape is rejected by the
/// constructors).
pub fn contiguous_strides(shape: [usize; 4]) -> [usize; 4] {
    let [_, h, s, d] = shape;
    [h.saturating_mul(s).saturating_mul(d), s.saturating_mul(d), d, 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_shapes_are_errors() {
        let x = [0.0f32; 4];
        let big = usize::MAX / 2;
        assert!(TensorRef::new(&x[..], [big, 4, 1, 1]).is_err());
        assert!(TensorRef::with_strides(&x[..], [1, 1, 2, 2], [0, 0, big, big]).is_err());
        assert!(TensorRef::from_bshd(&x[..], [big, 2, 2, 2]).is_err());
        assert!(TensorRef::new(&x[..], [1, 1, 2, 2]).is_ok());
    }
}
