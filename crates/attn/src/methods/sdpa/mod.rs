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

use crate::dispatch::Capabilities;
use crate::mask::MaskKind;
use crate::tensor::DType;

/// What every sdpa implementation accepts (all dtypes, masks, GQA, softcap, ALiBi), with its own
/// head-dim bound and shape limits.
pub(crate) fn capabilities(
    max_head_dim: usize,
    max_query_rows: Option<usize>,
    min_kv: usize,
) -> Capabilities {
    Capabilities {
        dtypes: &[DType::F32, DType::F16, DType::BF16],
        masks: &MaskKind::ALL,
        max_head_dim,
        gqa: true,
        softcap: true,
        alibi: true,
        max_query_rows,
        min_kv,
    }
}
pub(crate) mod tile;
