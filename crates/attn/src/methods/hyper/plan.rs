//! The support of HyperAttention for one `(batch, query head)`: which keys each query row sees
//! and with which weight, as a list of [`Piece`]s. Shared by the fast path and the reference (the
//! selection is deterministic: hash codes from fixed-order f32 dot products, a stable sort, and
//! counter-based samples), so the two differ only in how attention over the support is computed.
//!
//! A row's output is softmax attention over the union of its pieces' keys, each key weighted by
//! its piece's `exp(ln_weight)`: `o_i = Σ w_j e^{s_ij} v_j / Σ w_j e^{s_ij}` (the pieces of one row
//! have disjoint keys, except that samples may repeat — each draw counts once).

use super::Hyper;
use crate::methods::pattern::dot_fixed;
use crate::primitives::rng::{mix64, purpose, Key, Stream};

/// One part of the support.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Rows `lo..hi` see keys `lo..=i` (exact causal attention on a diagonal square; positions
    /// equal indices).
    Causal {
        /// First row (and key).
        lo: usize,
        /// One past the last row (and key).
        hi: usize,
    },
    /// Rows `rows` see every key of `keys` (exact attention on a fully visible rectangle).
    Dense {
        /// First row, one past the last.
        rows: (usize, usize),
        /// First key, one past the last.
        keys: (usize, usize),
    },
    /// Query rows `rows` see keys `keys`, every key with weight `exp(ln_weight)`.
    Gather {
        /// Query row indices.
        rows: Vec<u32>,
        /// Key indices.
        keys: Vec<u32>,
        /// `ln` of each key's weight (0 for the heavy blocks, `ln(N_k/m)` for samples).
        ln_weight: f32,
    },
}

impl Piece {
    /// Scores this piece computes.
    pub fn pairs(&self) -> u64 {
        match self {
            Piece::Causal { lo, hi } => {
                let n = (hi - lo) as u64;
                n * (n + 1) / 2
            }
            Piece::Dense { rows, keys } => ((rows.1 - rows.0) * (keys.1 - keys.0)) as u64,
            Piece::Gather { rows, keys, .. } => (rows.len() * keys.len()) as u64,
        }
    }
}

/// The hash projection `W` (`r × D`, f32) shared by every head of a call (one per module in the
/// paper's code): Gaussian rows from the [`purpose::HASH_PROJECTION`] stream of `seed`.
pub fn projection(seed: u64, r: usize, d: usize) -> Vec<f32> {
    let s = Stream::new(Key { seed, layer: 0, head: 0, purpose: purpose::HASH_PROJECTION });
    (0..r * d).map(|i| s.gaussian_at(i as u64) as f32).collect()
}

/// The sort key of a row: its angular-LSH code `c = Σ_t 1[x·w_t > 0]·2^t`, mapped to its position
/// along the reflected Gray-code path (the inverse Gray code, a prefix XOR of the bits), so that
/// neighbouring buckets in sorted order differ in one hyperplane.
pub fn sort_key(w: &[f32], x: &[f32]) -> u32 {
    let d = x.len();
    let mut code = 0u32;
    for (t, wt) in w.chunks_exact(d).enumerate() {
        if dot_fixed(wt, x) > 0.0 {
            code |= 1 << t;
        }
    }
    let mut g = code;
    let mut shift = 1;
    while shift < 32 {
        g ^= g >> shift;
        shift <<= 1;
    }
    g
}

/// What the planner needs for one `(batch, query head)`.
pub struct Head<'a> {
    /// The configuration.
    pub cfg: &'a Hyper,
    /// Sort keys of the query rows.
    pub q_keys: &'a [u32],
    /// Sort keys of the key rows.
    pub k_keys: &'a [u32],
    /// Batch index and query head (the sample stream's key).
    pub b: usize,
    /// Query head.
    pub h: usize,
}

impl Head<'_> {
    /// The whole support: the causal recursion over `0..S` (square, offset 0) or one
    /// non-causal call over every row and key.
    pub fn plan(&self, causal: bool) -> Vec<Piece> {
        let mut out = Vec::new();
        if causal {
            self.causal(0, self.q_keys.len(), &mut out);
        } else {
            self.full((0, self.q_keys.len()), (0, self.k_keys.len()), &mut out);
        }
        out
    }

    /// `HAc` on rows and keys `lo..hi`: exact below `min_seq_len` (and for a single row), else the two diagonal halves
    /// recursively and the fully visible lower-left quarter by [`Head::full`]. The split is at
    /// `⌊n/2⌋`, so the lower half has the extra row of an odd length [library choice: the
    /// paper's code pads odd lengths with a zero row at the end, which also makes its lower half
    /// the longer one — an 8191-token prompt gets a 4096-row lower-left call, not 4095, and the
    /// default `min_seq_len = 4096` does not turn it exact].
    fn causal(&self, lo: usize, hi: usize, out: &mut Vec<Piece>) {
        let n = hi - lo;
        if n == 0 {
            return;
        }
        // One row sees one key (exact); bottoming out there also ends the recursion when
        // `min_seq_len = 0` (a split of one row would repeat itself forever).
        if n <= self.cfg.min_seq_len.max(1) {
            out.push(Piece::Causal { lo, hi });
            return;
        }
        let mid = lo + n / 2;
        self.causal(lo, mid, out);
        self.causal(mid, hi, out);
        self.full((mid, hi), (lo, mid), out);
    }

    /// `HA` on a fully visible rectangle: exact below `min_seq_len` query rows; otherwise rows
    /// and keys sorted by their hash keys (stable), keys cut into blocks of `block`, the rows
    /// into as many blocks, block `t` of rows attending to block `t` of keys; then `samples` key
    /// positions drawn uniformly with replacement (in sorted key order, shared by the rows), each
    /// row block attending to the draws outside its own key block with weight `N_k/m`.
    fn full(&self, rows: (usize, usize), keys: (usize, usize), out: &mut Vec<Piece>) {
        let (nq, nk) = (rows.1 - rows.0, keys.1 - keys.0);
        if nq == 0 || nk == 0 {
            return;
        }
        if nq < self.cfg.min_seq_len {
            out.push(Piece::Dense { rows, keys });
            return;
        }
        let sorted = |lo: usize, hi: usize, by: &[u32]| -> Vec<u32> {
            let mut idx: Vec<u32> = (lo as u32..hi as u32).collect();
            idx.sort_by_key(|&i| (by[i as usize], i));
            idx
        };
        let qs = sorted(rows.0, rows.1, self.q_keys);
        let ks = sorted(keys.0, keys.1, self.k_keys);
        let b = self.cfg.block.min(nk);
        let blocks = nk.div_ceil(b);
        let bq = nq.div_ceil(blocks);
        for t in 0..blocks {
            let r = &qs[(t * bq).min(nq)..((t + 1) * bq).min(nq)];
            if r.is_empty() {
                continue;
            }
            out.push(Piece::Gather {
                rows: r.to_vec(),
                keys: ks[t * b..((t + 1) * b).min(nk)].to_vec(),
                ln_weight: 0.0,
            });
        }
        let m = self.cfg.samples;
        if m == 0 || blocks == 1 {
            return;
        }
        // One draw per (batch, head, call): the call is named by its first query row (distinct
        // for every call of one recursion).
        let stream = Stream::new(Key {
            seed: mix64(self.cfg.seed) ^ self.b as u64,
            layer: 0,
            head: self.h as u64,
            purpose: purpose::SAMPLES,
        });
        let base = (rows.0 as u64) << 32;
        let draws: Vec<usize> = (0..m as u64)
            .map(|t| ((stream.uniform_at(base + t) * nk as f64) as usize).min(nk - 1))
            .collect();
        let ln_weight = (nk as f64 / m as f64).ln() as f32;
        for t in 0..blocks {
            let r = &qs[(t * bq).min(nq)..((t + 1) * bq).min(nq)];
            let kept: Vec<u32> = draws.iter().filter(|&&s| s / b != t).map(|&s| ks[s]).collect();
            if r.is_empty() || kept.is_empty() {
                continue;
            }
            out.push(Piece::Gather { rows: r.to_vec(), keys: kept, ln_weight });
        }
    }
}
