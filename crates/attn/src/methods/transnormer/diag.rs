//! DiagAttention (transNormer's local token mixer): block-diagonal attention inside
//! non-overlapping blocks of `w` positions, causal inside the block. Row `i` (position
//! `p_i = q_offset + i`) reads the keys `j` with `⌊j/w⌋ = ⌊p_i/w⌋` and `j ≤ p_i` (and `j < S_kv`);
//! scores `a_ij = scale · q_i·k_j`. Two kernels:
//! - softmax: `o_i = Σ_j softmax(a_i)_j v_j`, `lse_i = ln Σ_j e^{a_ij}`;
//! - relu: `o_i = Σ_j max(a_ij, 0) v_j` (no normaliser; the method normalises the output after),
//!   `lse_i = 0`.
//!
//! A row that reads no key (`p_i < 0`, or `p_i ≥ S_kv` in a block past the last key) gets `o = 0`,
//! `lse = −∞`. The three forms compute the same function: [`reference()`] (every score against every
//! key, the block rule as a mask, f64), [`recurrent()`] (one key at a time, the state is the current
//! block's keys: at most `w`; decode cost per token `O(w·(D + D_v))`, independent of the
//! position), [`chunked()`] (block by block: the rows of a block against that block's keys).

use crate::linear::dot;

/// The kernel applied to the in-block scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Causal softmax inside the block (transNormer T2).
    Softmax,
    /// `max(a, 0)`, no normaliser (transNormer T1).
    Relu,
}

/// What one call computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// The kernel.
    pub kernel: Kernel,
    /// Block length `w`.
    pub block: usize,
    /// Score scale.
    pub scale: f32,
    /// Absolute position of query row 0.
    pub q_offset: i64,
}

/// One head, rows contiguous: `q: [S_q, D]`, `k: [S_kv, D]`, `v: [S_kv, D_v]`.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// `D`.
    pub dk: usize,
    /// `D_v`.
    pub dv: usize,
}

/// The keys row `i` reads: `lo..hi` (empty when none).
fn keys_of(cfg: &Config, i: usize, s_kv: usize) -> (usize, usize) {
    let p = cfg.q_offset + i as i64;
    if p < 0 {
        return (0, 0);
    }
    let w = cfg.block.max(1) as i64;
    let lo = p / w * w;
    let hi = (p + 1).min(s_kv as i64);
    if lo >= hi {
        (0, 0)
    } else {
        (lo as usize, hi as usize)
    }
}

/// The naive form in f64: for every row, every key's score, the block rule applied as a mask.
/// Returns the number of scores kept.
pub fn reference(cfg: &Config, h: &Head, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv) = (h.dk, h.dv);
    let (s_q, s_kv) = (h.q.len() / dk, h.k.len() / dk);
    let w = cfg.block.max(1) as i64;
    let mut pairs = 0;
    for i in 0..s_q {
        let p = cfg.q_offset + i as i64;
        let q = &h.q[i * dk..(i + 1) * dk];
        // (key, score) for the keys the block rule allows.
        let mut kept: Vec<(usize, f64)> = Vec::new();
        for j in 0..s_kv {
            let allowed = p >= 0 && j as i64 <= p && (j as i64) / w == p / w;
            if allowed {
                let k = &h.k[j * dk..(j + 1) * dk];
                let s: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                kept.push((j, cfg.scale as f64 * s));
            }
        }
        pairs += kept.len() as u64;
        let dst = &mut o[i * dv..(i + 1) * dv];
        if kept.is_empty() {
            dst.fill(0.0);
            lse[i] = f32::NEG_INFINITY;
            continue;
        }
        let mut acc = vec![0.0f64; dv];
        match cfg.kernel {
            Kernel::Softmax => {
                let m = kept.iter().fold(f64::NEG_INFINITY, |m, &(_, s)| m.max(s));
                let mut sum = 0.0;
                for &(j, s) in &kept {
                    let e = (s - m).exp();
                    sum += e;
                    for (a, &x) in acc.iter_mut().zip(&h.v[j * dv..(j + 1) * dv]) {
                        *a += e * x as f64;
                    }
                }
                for (d, a) in dst.iter_mut().zip(&acc) {
                    *d = (a / sum) as f32;
                }
                lse[i] = (m + sum.ln()) as f32;
            }
            Kernel::Relu => {
                for &(j, s) in &kept {
                    for (a, &x) in acc.iter_mut().zip(&h.v[j * dv..(j + 1) * dv]) {
                        *a += s.max(0.0) * x as f64;
                    }
                }
                for (d, a) in dst.iter_mut().zip(&acc) {
                    *d = *a as f32;
                }
                lse[i] = 0.0;
            }
        }
    }
    pairs
}

/// Row `i` against keys `lo..hi` in f32 (`scores`: scratch of at least `hi − lo`).
fn read_row(
    cfg: &Config,
    h: &Head,
    q: &[f32],
    (lo, hi): (usize, usize),
    scores: &mut [f32],
    o: &mut [f32],
) -> f32 {
    let (dk, dv) = (h.dk, h.dv);
    o.fill(0.0);
    if lo >= hi {
        return f32::NEG_INFINITY;
    }
    let sc = &mut scores[..hi - lo];
    for (s, j) in sc.iter_mut().zip(lo..hi) {
        *s = cfg.scale * dot(q, &h.k[j * dk..(j + 1) * dk]);
    }
    match cfg.kernel {
        Kernel::Softmax => {
            let m = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0.0f32;
            for (s, j) in sc.iter().zip(lo..hi) {
                let e = (s - m).exp();
                sum += e;
                crate::linear::axpy(o, e, &h.v[j * dv..(j + 1) * dv]);
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
            m + sum.ln()
        }
        Kernel::Relu => {
            for (s, j) in sc.iter().zip(lo..hi) {
                crate::linear::axpy(o, s.max(0.0), &h.v[j * dv..(j + 1) * dv]);
            }
            0.0
        }
    }
}

/// The recurrent form: keys arrive one at a time; the state is the current block (the index of its
/// first key; a decoder keeps that block's K/V, at most `w` rows). Each row is read right after its
/// last key, against the keys of the current block when the row lies in it. Returns the scores
/// computed.
pub fn recurrent(cfg: &Config, h: &Head, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv) = (h.dk, h.dv);
    let (s_q, s_kv) = (h.q.len() / dk, h.k.len() / dk);
    let w = cfg.block.max(1);
    let mut scores = vec![0.0f32; w];
    let mut pairs = 0u64;
    let mut i = 0;
    let seen = |i: usize| crate::linear::keys_seen(cfg.q_offset, i, s_kv);
    while i < s_q && seen(i) == 0 {
        o[i * dv..(i + 1) * dv].fill(0.0);
        lse[i] = f32::NEG_INFINITY;
        i += 1;
    }
    let mut start = 0; // first key of the current block
    for j in 0..s_kv {
        if j % w == 0 {
            start = j; // a new block: the state is emptied
        }
        while i < s_q && seen(i) == j + 1 {
            let p = cfg.q_offset + i as i64;
            // The row lies in the current block unless it was clamped past the last key.
            let range = if p as usize / w == j / w { (start, j + 1) } else { (0, 0) };
            pairs += (range.1 - range.0) as u64;
            let q = &h.q[i * dk..(i + 1) * dk];
            lse[i] = read_row(cfg, h, q, range, &mut scores, &mut o[i * dv..(i + 1) * dv]);
            i += 1;
        }
    }
    pairs
}

/// The block form: block by block, the rows whose position lies in the block against the block's
/// keys (causal inside). Returns the scores computed.
pub fn chunked(cfg: &Config, h: &Head, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv) = (h.dk, h.dv);
    let (s_q, s_kv) = (h.q.len() / dk, h.k.len() / dk);
    let mut scores = vec![0.0f32; cfg.block.max(1)];
    let mut pairs = 0u64;
    for i in 0..s_q {
        let range = keys_of(cfg, i, s_kv);
        pairs += (range.1 - range.0) as u64;
        let q = &h.q[i * dk..(i + 1) * dk];
        lse[i] = read_row(cfg, h, q, range, &mut scores, &mut o[i * dv..(i + 1) * dv]);
    }
    pairs
}
