//! Exact softmax attention (scaled dot-product attention); see `README.md` in this folder.
//!
//! - [`reference`](mod@reference): the specification — plain loops, f64 accumulation, one row at a time.
//! - [`flash`]: tiled online softmax over packed key panels, SIMD at run time, threads over
//!   query tiles; every shape and mask.
//! - [`decode`]: few query rows over many keys: the keys are split across threads and the
//!   partial results merged by log-sum-exp.

pub mod decode;
pub mod flash;
pub mod reference;

use crate::mask::MaskKind;
use crate::tensor::DType;

/// Input dtypes every sdpa implementation accepts.
pub(crate) const DTYPES: &[DType] = &[DType::F32, DType::F16, DType::BF16];
/// Mask kinds every sdpa implementation accepts.
pub(crate) const MASKS: &[MaskKind] = &MaskKind::ALL;
pub(crate) mod tile;
