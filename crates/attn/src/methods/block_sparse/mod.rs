//! MInference's Block-Sparse pattern (spec §2.2): mean-pooled query and key blocks, and per
//! query block the `top_k` key blocks of highest pooled score; see `README.md` in this folder.
//!
//! - [`reference`](mod@reference): the pooled scores in plain f64 loops (tests hold the
//!   selection code to them); the registered reference runs the f64 executor over the pattern.
//! - fast path: the pattern through the tiled sparse kernel.

pub mod reference;

use crate::dispatch::{Inputs, OutputMut, ParamInfo, Stats};
use crate::error::Result;
use crate::mask::MaskKind;
use crate::methods::pattern::{dot_fixed, positive, top_k, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::sparse::{
    kernel, reference as exec_ref, union_interval, BlockList, HeadList,
};
use crate::problem::Problem;

/// `block-sparse` configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSparse {
    /// Key blocks kept per query block (MInference 100).
    pub top_k: usize,
    /// Query and key block size (MInference 64).
    pub block: usize,
}

impl BlockSparse {
    /// MInference's defaults: `top_k = 100` blocks of 64.
    pub const DEFAULT: BlockSparse = BlockSparse { top_k: 100, block: 64 };

    /// Mean of rows `[s0, s1)` of head `(b, h)` of `t` (true mean over the real rows: the
    /// original also averages in zero padding of the last block [library choice]).
    fn pooled(
        t: &crate::tensor::TensorRef,
        b: usize,
        h: usize,
        s0: usize,
        s1: usize,
        out: &mut [f32],
        row: &mut [f32],
    ) {
        out.fill(0.0);
        for s in s0..s1 {
            t.read_row(b, h, s, 1.0, row);
            for (o, x) in out.iter_mut().zip(row.iter()) {
                *o += *x;
            }
        }
        let inv = 1.0 / (s1 - s0) as f32;
        out.iter_mut().for_each(|o| *o *= inv);
    }

    /// Per query head the selected key blocks, and the pooled pairs scored.
    ///
    /// # Errors
    /// Only if the pattern fails validation (a bug).
    pub fn pattern(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
    ) -> Result<(BlockList, u64)> {
        let bs = self.block;
        let (nqb, nkb, d) = (p.s_q.div_ceil(bs), p.s_kv.div_ceil(bs), p.d);
        let mut row = vec![0.0f32; d];
        let mut heads = Vec::with_capacity(p.b * p.h);
        let mut pairs = 0u64;
        let mut kbar = vec![0.0f32; nkb * d]; // [nkb, D] pooled keys of one kv head
        let mut qbar = vec![0.0f32; d];
        let mut sigma = Vec::with_capacity(nkb);
        for b in 0..p.b {
            for hk in 0..p.h_kv {
                for c in 0..nkb {
                    Self::pooled(
                        &inputs.k,
                        b,
                        hk,
                        c * bs,
                        (c * bs + bs).min(p.s_kv),
                        &mut kbar[c * d..(c + 1) * d],
                        &mut row,
                    );
                }
                for h in hk * p.group()..(hk + 1) * p.group() {
                    let mut hl = HeadList::new();
                    for qb in 0..nqb {
                        let (i0, i1) = (qb * bs, (qb * bs + bs).min(p.s_q));
                        Self::pooled(&inputs.q, b, h, i0, i1, &mut qbar, &mut row);
                        // Key blocks some row of the block may see under the mask.
                        let (lo, hi) = union_interval(&params.mask, params, b, i0, i1 - i0);
                        sigma.clear();
                        let (c0, c1) = if lo < hi { (lo / bs, hi.div_ceil(bs)) } else { (0, 0) };
                        sigma.extend((c0..c1).map(|c| dot_fixed(&qbar, &kbar[c * d..(c + 1) * d])));
                        pairs += sigma.len() as u64;
                        let chosen = top_k(&sigma, self.top_k);
                        hl.push_iter(
                            chosen.into_iter().map(|c| ((c as usize + c0) * bs) as u32),
                            [],
                        );
                    }
                    heads.push(hl);
                }
            }
        }
        Ok((BlockList::new(bs, bs, p.s_q, p.s_kv, heads)?, pairs))
    }
}

impl Default for BlockSparse {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl SparseConfig for BlockSparse {
    const NAME: &'static str = "block-sparse";
    const REFERENCE_NAME: &'static str = "block-sparse-reference";
    const FAMILY: &'static str = "block_sparse";
    const DESCRIPTION: &'static str =
        "MInference Block-Sparse: top-k key blocks per query block by mean-pooled scores (sparse kernel)";
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "top_k",
                value: self.top_k.to_string(),
                doc: "key blocks kept per query block (100)",
            },
            ParamInfo {
                name: "block",
                value: self.block.to_string(),
                doc: "query and key block size (64)",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "top_k" => self.top_k = positive(Self::NAME, key, value)?,
            "block" => self.block = positive(Self::NAME, key, value)?,
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn forward(
        &self,
        exec: Exec,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        let (pattern, est) = self.pattern(p, inputs, params)?;
        let pairs = match exec {
            Exec::Reference => exec_ref::forward(p, inputs, params, &pattern, out),
            Exec::Fast => kernel::forward(p, inputs, params, &pattern, par, out),
        };
        Ok(Stats::pairs(pairs + est))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let pooled = 4 * (p.s_kv.div_ceil(self.block) * (p.d + 1) + 2 * p.d);
        match exec {
            Exec::Reference => pooled + 8 * p.s_kv,
            Exec::Fast => pooled + kernel::scratch_bytes(p, self.block, par),
        }
    }
}
