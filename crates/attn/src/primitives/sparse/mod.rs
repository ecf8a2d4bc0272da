//! Sparse attention executors (spec §0.4 items 3 and 4): exact softmax attention restricted to
//! a per-query-block support given as a [`BlockList`].
//!
//! A [`BlockList`] gives, for each query head `(b, h)` and each block of `bm` consecutive query
//! rows, a sorted list of **key blocks** (runs of `bn` keys starting at any key index) and a sorted
//! list of single **key columns**. The support of row `i` of the block is
//!
//! ```text
//! support(i) = ( ∪ blocks [start, start + bn)  ∪  columns ) ∩ [0, S_kv) ∩ interval_of_mask(i)
//! ```
//!
//! where `interval_of_mask(i)` is the key interval the call's structured mask allows
//! ([`crate::Mask::interval`]; for a causal mask `j ≤ p_i`): a listed key after the query is never
//! used. Pieces must be disjoint (no key listed twice), so the result is exact softmax over the
//! support; an empty support gives `o = 0`, `lse = −∞`. An *index list* is a block list with no
//! blocks ([`HeadList::push`] with only columns).
//!
//! Cost ([`BlockList::scored_pairs`]): both executors score key blocks in chunks of [`CHUNK`]
//! keys for all rows of a query block at once, and columns in gathered chunks. A chunk that no row
//! of the block can see (outside the union of the rows' mask intervals) is skipped; every other
//! chunk costs `rows × keys` pairs, including the pairs then masked inside it. Columns outside
//! the union are dropped; the rest cost `rows` pairs each.
//!
//! - [`reference`](mod@reference): plain loops in f64 over the support (the specification);
//! - [`kernel`]: tiled online softmax with SIMD at run time, threads over (head, query block).

pub mod diagonal;
pub mod kernel;
pub mod reference;

use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::params::Resolved;

/// Keys scored together: block ranges are cut into chunks of this many keys, columns are
/// gathered this many at a time (the width of one score tile; a multiple of every SIMD panel).
pub const CHUNK: usize = 64;

/// The sparse support of one query head: per query block, key block starts and key columns
/// (compressed rows: block `qb` owns `blocks[block_ptr[qb]..block_ptr[qb + 1]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadList {
    block_ptr: Vec<usize>,
    blocks: Vec<u32>,
    col_ptr: Vec<usize>,
    cols: Vec<u32>,
}

impl Default for HeadList {
    fn default() -> Self {
        Self::new()
    }
}

impl HeadList {
    /// An empty list (no query block yet).
    pub fn new() -> Self {
        Self { block_ptr: vec![0], blocks: Vec::new(), col_ptr: vec![0], cols: Vec::new() }
    }

    /// Appends the next query block: its key block starts and its columns, both ascending.
    /// Validation happens in [`BlockList::new`].
    pub fn push(&mut self, blocks: &[u32], cols: &[u32]) {
        self.blocks.extend_from_slice(blocks);
        self.cols.extend_from_slice(cols);
        self.block_ptr.push(self.blocks.len());
        self.col_ptr.push(self.cols.len());
    }

    /// Appends the next query block from iterators (see [`HeadList::push`]).
    pub fn push_iter(
        &mut self,
        blocks: impl IntoIterator<Item = u32>,
        cols: impl IntoIterator<Item = u32>,
    ) {
        self.blocks.extend(blocks);
        self.cols.extend(cols);
        self.block_ptr.push(self.blocks.len());
        self.col_ptr.push(self.cols.len());
    }

    /// Query blocks pushed so far.
    pub fn len(&self) -> usize {
        self.block_ptr.len() - 1
    }

    /// True when no query block was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key block starts of query block `qb`.
    #[inline]
    pub fn blocks(&self, qb: usize) -> &[u32] {
        &self.blocks[self.block_ptr[qb]..self.block_ptr[qb + 1]]
    }

    /// Key columns of query block `qb`.
    #[inline]
    pub fn cols(&self, qb: usize) -> &[u32] {
        &self.cols[self.col_ptr[qb]..self.col_ptr[qb + 1]]
    }

    /// Every column some query block lists, ascending and once each (keys below `s_kv`).
    pub fn distinct_cols(&self, s_kv: usize) -> Vec<u32> {
        if self.cols.is_empty() {
            return Vec::new();
        }
        let mut seen = vec![0u64; s_kv.div_ceil(64)];
        for &c in &self.cols {
            seen[c as usize / 64] |= 1 << (c % 64);
        }
        let mut out = Vec::new();
        for (w, &bits) in seen.iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                out.push((w * 64) as u32 + b.trailing_zeros());
                b &= b - 1;
            }
        }
        out
    }

    /// One past the largest key any query block lists (blocks `bn` keys wide), 0 when none.
    pub fn key_end(&self, bn: usize) -> usize {
        let blocks = self.blocks.iter().max().map_or(0, |&s| s as usize + bn);
        let cols = self.cols.iter().max().map_or(0, |&c| c as usize + 1);
        blocks.max(cols)
    }
}

/// Per query head `(b, h)` (index `b·H + h`) a [`HeadList`] over blocks of `bm` query rows; key
/// blocks are `bn` keys wide. See the module doc for the meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockList {
    bm: usize,
    bn: usize,
    s_q: usize,
    s_kv: usize,
    heads: Vec<HeadList>,
}

impl BlockList {
    /// Validates and wraps per-head lists (`B·H` of them, batch-major).
    ///
    /// # Errors
    /// [`Error::InvalidParam`] (`name = "pattern"`) when `bm` or `bn` is 0, a head does not have
    /// `⌈S_q / bm⌉` query blocks, an index is out of range, a list is not strictly ascending, two
    /// key blocks overlap, or a column lies inside a listed key block.
    pub fn new(
        bm: usize,
        bn: usize,
        s_q: usize,
        s_kv: usize,
        heads: Vec<HeadList>,
    ) -> Result<Self> {
        let err =
            |detail: String| Error::InvalidParam { op: "BlockList::new", name: "pattern", detail };
        if bm == 0 || bn == 0 {
            return Err(err(format!("block sizes bm = {bm}, bn = {bn} must be positive")));
        }
        if s_kv > u32::MAX as usize {
            return Err(err(format!("S_kv = {s_kv} does not fit u32 key indices")));
        }
        let nqb = s_q.div_ceil(bm);
        for (hi, hl) in heads.iter().enumerate() {
            if hl.len() != nqb {
                return Err(err(format!(
                    "head {hi} has {} query blocks, S_q / bm needs {nqb}",
                    hl.len()
                )));
            }
            for qb in 0..nqb {
                let (blocks, cols) = (hl.blocks(qb), hl.cols(qb));
                let at = |what: &str| format!("head {hi}, query block {qb}: {what}");
                if blocks.windows(2).any(|w| (w[1] as usize) < w[0] as usize + bn) {
                    return Err(err(at("key blocks not ascending or overlapping")));
                }
                if cols.windows(2).any(|w| w[1] <= w[0]) {
                    return Err(err(at("columns not strictly ascending")));
                }
                if blocks.last().is_some_and(|&s| s as usize >= s_kv)
                    || cols.last().is_some_and(|&c| c as usize >= s_kv)
                {
                    return Err(err(at(&format!("index beyond S_kv = {s_kv}"))));
                }
                // Columns inside a block would count twice: walk both sorted lists.
                let mut bi = 0;
                for &c in cols {
                    while bi < blocks.len() && (blocks[bi] as usize + bn) <= c as usize {
                        bi += 1;
                    }
                    if bi < blocks.len() && blocks[bi] <= c {
                        return Err(err(at(&format!(
                            "column {c} inside key block {}",
                            blocks[bi]
                        ))));
                    }
                }
            }
        }
        Ok(Self { bm, bn, s_q, s_kv, heads })
    }

    /// Query rows per query block.
    pub fn bm(&self) -> usize {
        self.bm
    }

    /// Keys per key block.
    pub fn bn(&self) -> usize {
        self.bn
    }

    /// Query rows `S_q` the pattern was built for.
    pub fn s_q(&self) -> usize {
        self.s_q
    }

    /// Keys `S_kv` the pattern was built for.
    pub fn s_kv(&self) -> usize {
        self.s_kv
    }

    /// Query blocks per head, `⌈S_q / bm⌉`.
    pub fn query_blocks(&self) -> usize {
        self.s_q.div_ceil(self.bm)
    }

    /// The list of query head `bh = b·H + h`.
    pub fn head(&self, bh: usize) -> &HeadList {
        &self.heads[bh]
    }

    /// Number of query heads (`B·H`).
    pub fn heads(&self) -> usize {
        self.heads.len()
    }

    /// The support of row `i` of query head `bh = b·H + h` under `params`' mask, ascending (for
    /// references and tests; allocates).
    pub fn support(&self, params: &Resolved, bh: usize, i: usize) -> Vec<usize> {
        let b = bh / params.geometry.h;
        let (lo, hi) = params.mask.interval(&params.geometry, b, i);
        let qb = i / self.bm;
        let hl = &self.heads[bh];
        let mut keys: Vec<usize> = hl
            .blocks(qb)
            .iter()
            .flat_map(|&s| s as usize..(s as usize + self.bn).min(self.s_kv))
            .chain(hl.cols(qb).iter().map(|&c| c as usize))
            .filter(|&j| lo <= j && j < hi)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Pairs the executors score under `params`' mask (module doc), summed over heads and query
    /// blocks.
    pub fn scored_pairs(&self, params: &Resolved) -> u64 {
        let mut n = 0u64;
        for (bh, hl) in self.heads.iter().enumerate() {
            let b = bh / params.geometry.h;
            for qb in 0..self.query_blocks() {
                let rows = self.bm.min(self.s_q - qb * self.bm);
                let (ulo, uhi) = union_interval(&params.mask, params, b, qb * self.bm, rows);
                let mut keys = 0usize;
                for &s in hl.blocks(qb) {
                    let end = (s as usize + self.bn).min(self.s_kv);
                    let mut c0 = s as usize;
                    while c0 < end {
                        let c1 = (c0 + CHUNK).min(end);
                        if c1 > ulo && c0 < uhi {
                            keys += c1 - c0;
                        }
                        c0 = c1;
                    }
                }
                keys += hl
                    .cols(qb)
                    .iter()
                    .filter(|&&c| ulo <= c as usize && (c as usize) < uhi)
                    .count();
                n += (rows * keys) as u64;
            }
        }
        n
    }
}

/// The union `[lo, hi)` of the mask intervals of rows `i0..i0 + rows` of batch `b` (`lo ≥ hi`:
/// no row sees any key).
pub(crate) fn union_interval(
    mask: &Mask,
    params: &Resolved,
    b: usize,
    i0: usize,
    rows: usize,
) -> (usize, usize) {
    let (mut lo, mut hi) = (usize::MAX, 0);
    for i in i0..i0 + rows {
        let (l, h) = mask.interval(&params.geometry, b, i);
        if l < h {
            lo = lo.min(l);
            hi = hi.max(h);
        }
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(blocks: &[u32], cols: &[u32]) -> Vec<HeadList> {
        let mut h = HeadList::new();
        h.push(blocks, cols);
        vec![h]
    }

    #[test]
    fn validation() {
        assert!(BlockList::new(4, 8, 4, 64, one(&[0, 8, 40], &[20, 63])).is_ok());
        for (blocks, cols) in [
            (&[0u32, 4][..], &[][..]), // overlapping blocks
            (&[8, 0], &[]),            // not ascending
            (&[], &[3, 3]),            // duplicate column
            (&[0], &[5]),              // column inside a block
            (&[64], &[]),              // beyond S_kv
            (&[], &[64]),
        ] {
            assert!(BlockList::new(4, 8, 4, 64, one(blocks, cols)).is_err(), "{blocks:?} {cols:?}");
        }
        assert!(BlockList::new(4, 8, 5, 64, one(&[], &[])).is_err()); // 2 query blocks needed
        assert!(BlockList::new(0, 8, 4, 64, one(&[], &[])).is_err());
    }
}
