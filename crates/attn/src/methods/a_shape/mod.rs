//! MInference's A-shape pattern at block granularity: sink key blocks plus the local key blocks
//! of each query block (spec §2.2); see `README.md` in this folder.
//!
//! - [`reference`](mod@reference): the element-wise definition of the block pattern, plain loops
//!   in f64.
//! - fast path ([`AShape`] under [`crate::methods::pattern::Fast`]): the pattern as a
//!   [`BlockList`] through the tiled sparse kernel.

pub mod reference;

use crate::dispatch::{Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::Result;
use crate::mask::MaskKind;
use crate::methods::pattern::{is_causal, positive, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::sparse::{kernel, BlockList, HeadList};
use crate::problem::Problem;

/// `a-shape`: per block of `block` query rows, the key blocks holding the first `sink` keys and
/// the key blocks from the one holding `p_first − local + 1` to the one holding `p_last`; the
/// causal mask applies inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AShape {
    /// Initial keys every query block sees, rounded up to whole blocks (MInference `n_init`).
    pub sink: usize,
    /// Local keys before the first row of a query block, rounded out to whole blocks
    /// (MInference `n_local`).
    pub local: usize,
    /// Query and key block size.
    pub block: usize,
}

impl AShape {
    /// MInference's standalone A-shape baseline: `n_init = 128`, `n_local = 3968`, blocks of 64.
    pub const DEFAULT: AShape = AShape { sink: 128, local: 3968, block: 64 };

    /// Key blocks `[lo_blk, hi_blk]` of the local part and the sink block count, for the query
    /// block whose rows sit at positions `first..=last`.
    pub fn blocks_of(&self, first: i64, last: i64) -> (usize, Option<(usize, usize)>) {
        let nsink = self.sink.div_ceil(self.block);
        if last < 0 {
            return (nsink, None);
        }
        let lo = (first - self.local as i64 + 1).max(0) as usize / self.block;
        (nsink, Some((lo, last as usize / self.block)))
    }

    /// The pattern of the problem.
    ///
    /// # Errors
    /// Only if the pattern fails validation (a bug).
    pub fn pattern(&self, p: &Problem, params: &Resolved) -> Result<BlockList> {
        let bs = self.block;
        let nkb = p.s_kv.div_ceil(bs);
        let mut hl = HeadList::new();
        for qb in 0..p.s_q.div_ceil(bs) {
            let first = params.position(qb * bs);
            let last = params.position((qb * bs + bs).min(p.s_q) - 1);
            let (nsink, local) = self.blocks_of(first, last);
            let mut blocks: Vec<u32> = (0..nsink.min(nkb)).map(|c| (c * bs) as u32).collect();
            if let Some((lo, hi)) = local {
                blocks.extend(
                    (lo.max(nsink)..=hi.min(nkb.saturating_sub(1))).map(|c| (c * bs) as u32),
                );
            }
            hl.push(&blocks, &[]);
        }
        // The pattern depends on positions only: every head shares it.
        BlockList::new(bs, bs, p.s_q, p.s_kv, vec![hl; p.b * p.h])
    }
}

impl Default for AShape {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl SparseConfig for AShape {
    const NAME: &'static str = "a-shape";
    const REFERENCE_NAME: &'static str = "a-shape-reference";
    const FAMILY: &'static str = "a_shape";
    const DESCRIPTION: &'static str =
        "MInference A-shape at block granularity: sink blocks + local blocks per query block (sparse kernel)";
    // Causal only; non-causal calls also get a Reason below that says why.
    const MASKS: &'static [MaskKind] = &[MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "sink",
                value: self.sink.to_string(),
                doc: "initial keys, rounded up to blocks (MInference baseline n_init = 128)",
            },
            ParamInfo {
                name: "local",
                value: self.local.to_string(),
                doc: "local keys before a query block, rounded out to blocks (baseline n_local = 3968)",
            },
            ParamInfo { name: "block", value: self.block.to_string(), doc: "block size (64)" },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "sink" => self.sink = crate::dispatch::parse_param(Self::NAME, key, value)?,
            "local" => self.local = positive(Self::NAME, key, value)?,
            "block" => self.block = positive(Self::NAME, key, value)?,
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, _: &Problem, params: &Params) -> Vec<Reason> {
        if is_causal(&params.mask) {
            Vec::new()
        } else {
            vec![Reason::Other("a-shape is defined for causal prefill only (spec §2.5)".into())]
        }
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
        let pairs = match exec {
            Exec::Reference => reference::forward(self, p, inputs, params, out),
            Exec::Fast => kernel::forward(p, inputs, params, &self.pattern(p, params)?, par, out),
        };
        Ok(Stats::pairs(pairs))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        match exec {
            Exec::Reference => 8 * (p.s_kv + p.d_v),
            Exec::Fast => kernel::scratch_bytes(p, self.block, par),
        }
    }
}
