//! Reformer LSH attention (spec §1.5): shared-QK angular hashing, tokens sorted by
//! `(bucket, position)`, chunks attending to themselves and the previous chunk, several hash
//! rounds merged by log-sum-exp; see `README.md` in this folder.
//!
//! - [`Reformer::rounds`]: the hashing and sorting, shared by both implementations (f32 with a
//!   fixed summation order, so the support is bitwise the same at every SIMD level and thread
//!   count).
//! - [`reference`](mod@reference): softmax over the union of the rounds' supports, pair by pair
//!   in f64.
//! - fast path ([`Reformer`] under [`crate::methods::pattern::Fast`]): per round and chunk, one
//!   score tile (chunk rows × the two chunks' keys) with the duplicate correction, a tile
//!   softmax, and an LSE merge into the running result ([`merge_weights`]); heads in parallel.

pub mod reference;

use crate::dispatch::{parse_param, Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskKind};
use crate::methods::pattern::{dot_fixed, positive, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::merge::merge_weights;
use crate::primitives::rng::{purpose, Key, Stream};
use crate::problem::Problem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// `reformer`: `n_hashes` rounds of angular LSH into `buckets` buckets, chunks of `chunk` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reformer {
    /// Hash rounds `R` (spec default 8).
    pub n_hashes: usize,
    /// Chunk length `c` in sorted order (spec default 64).
    pub chunk: usize,
    /// Buckets per round: 1 (no hashing) or even; 0 means `N / chunk` rounded up to even (one
    /// bucket when `N ≤ chunk`).
    pub buckets: usize,
    /// Seed of the rotations (keyed with the query head, spec §0.4.5).
    pub seed: u64,
}

/// The hashing of one `(batch, query head)`: per round, the tokens in sorted order and the
/// chunk of each token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rounds {
    /// Tokens `N`.
    pub n: usize,
    /// Chunk length.
    pub chunk: usize,
    /// Chunks per round, `⌈N / chunk⌉`.
    pub chunks: usize,
    /// `R × N`: round `r`'s tokens sorted by `(bucket, position)`.
    pub order: Vec<u32>,
    /// `R × N`: the chunk of token `t` in round `r` (`rank / chunk`).
    pub chunk_of: Vec<u32>,
}

impl Rounds {
    /// Number of rounds.
    pub fn rounds(&self) -> usize {
        self.order.len().checked_div(self.n).unwrap_or(0)
    }

    /// The chunk before `c` (cyclic).
    #[inline]
    pub fn prev(&self, c: usize) -> usize {
        if c == 0 {
            self.chunks - 1
        } else {
            c - 1
        }
    }

    /// Tokens of chunk `c` of round `r`, in sorted order.
    #[inline]
    pub fn chunk_tokens(&self, r: usize, c: usize) -> &[u32] {
        let lo = c * self.chunk;
        let hi = ((c + 1) * self.chunk).min(self.n);
        &self.order[r * self.n + lo..r * self.n + hi]
    }

    /// True when key `j` lies in the chunk of `i` or the one before it in round `r`.
    #[inline]
    pub fn neighbours(&self, r: usize, i: usize, j: usize) -> bool {
        let ci = self.chunk_of[r * self.n + i] as usize;
        let cj = self.chunk_of[r * self.n + j] as usize;
        cj == ci || cj == self.prev(ci)
    }

    /// `c_ij`: the rounds in which `j` lies in the neighbourhood of `i`.
    #[inline]
    pub fn count(&self, i: usize, j: usize) -> u32 {
        (0..self.rounds()).map(|r| self.neighbours(r, i, j) as u32).sum()
    }
}

impl Reformer {
    /// Spec §0.6 defaults: 8 rounds, chunks of 64, `N / 64` buckets, seed 0.
    pub const DEFAULT: Reformer = Reformer { n_hashes: 8, chunk: 64, buckets: 0, seed: 0 };

    /// Buckets used for `n` tokens.
    pub fn buckets_for(&self, n: usize) -> usize {
        if self.buckets > 0 {
            self.buckets
        } else if n <= self.chunk {
            1
        } else {
            2 * n.div_ceil(2 * self.chunk)
        }
    }

    /// The random rotations of query head `h` for `b` buckets: `R × (b/2) × D` f32, element
    /// `(r, u, d)` being normal `(r·(b/2) + u)·D + d` of the [`purpose::LSH_PROJECTION`] stream
    /// of `(seed, layer 0, head h)`. Empty for one bucket.
    pub fn rotations(&self, d: usize, h: usize, b: usize) -> Vec<f32> {
        let half = if b >= 2 { b / 2 } else { 0 };
        let s = Stream::new(Key {
            seed: self.seed,
            layer: 0,
            head: h as u64,
            purpose: purpose::LSH_PROJECTION,
        });
        (0..(self.n_hashes * half * d) as u64).map(|i| s.gaussian_at(i) as f32).collect()
    }

    /// Hashes and sorts the tokens of `(b, h)`: token `t` goes to
    /// `argmax([q_t A_r ; −q_t A_r])` (first maximum on ties; projections by [`dot_fixed`] of
    /// the unscaled f32 query), then round `r`'s tokens are stably sorted by bucket.
    pub fn rounds(&self, p: &Problem, inputs: &Inputs, rot: &[f32], b: usize, h: usize) -> Rounds {
        let n = p.s_q;
        let nb = self.buckets_for(n);
        let half = if nb >= 2 { nb / 2 } else { 0 };
        let rounds = self.n_hashes;
        let mut bucket = vec![0u32; rounds * n];
        let mut x = vec![0.0f32; p.d];
        let mut y = vec![0.0f32; half];
        for t in 0..n {
            if half == 0 {
                break;
            }
            inputs.q.read_row(b, h, t, 1.0, &mut x);
            for r in 0..rounds {
                let a = &rot[r * half * p.d..(r + 1) * half * p.d];
                for (u, yu) in y.iter_mut().enumerate() {
                    *yu = dot_fixed(&a[u * p.d..(u + 1) * p.d], &x);
                }
                let (mut best, mut arg) = (f32::NEG_INFINITY, 0usize);
                for (u, &v) in y.iter().enumerate() {
                    if v > best {
                        (best, arg) = (v, u);
                    }
                }
                for (u, &v) in y.iter().enumerate() {
                    if -v > best {
                        (best, arg) = (-v, half + u);
                    }
                }
                bucket[r * n + t] = arg as u32;
            }
        }
        let chunk = self.chunk.min(n.max(1));
        let mut order = vec![0u32; rounds * n];
        let mut chunk_of = vec![0u32; rounds * n];
        let mut start = vec![0usize; nb + 1];
        for r in 0..rounds {
            // Counting sort by bucket; positions ascend inside a bucket.
            start.fill(0);
            for t in 0..n {
                start[bucket[r * n + t] as usize + 1] += 1;
            }
            for u in 0..nb {
                start[u + 1] += start[u];
            }
            for t in 0..n {
                let u = bucket[r * n + t] as usize;
                let rank = start[u];
                start[u] += 1;
                order[r * n + rank] = t as u32;
                chunk_of[r * n + t] = (rank / chunk) as u32;
            }
        }
        Rounds { n, chunk, chunks: n.div_ceil(chunk), order, chunk_of }
    }
}

impl Default for Reformer {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// True when query `i` may see key `j` under the call's mask (none or causal).
#[inline]
pub fn allowed(params: &Resolved, i: usize, j: usize) -> bool {
    !matches!(params.mask, Mask::Causal) || (j as i64) <= params.position(i)
}

/// The per-head inputs of the fast path, in original token order.
struct Head {
    /// `N × D`: `q_i · scale`.
    q: Vec<f32>,
    /// `N × D`: `k_j / |k_j|` (0 for a zero key).
    k: Vec<f32>,
    /// `N × D_v`.
    v: Vec<f32>,
    /// One row's scores over its two chunks (natural-log units).
    s: Vec<f32>,
    /// One row's output of the current round.
    acc: Vec<f32>,
}

impl Reformer {
    /// The fast path for one `(b, h)`, writing `o` (`N × D_v`) and `lse` (`N`); returns the
    /// pairs scored.
    #[allow(clippy::too_many_arguments)]
    fn head(
        &self,
        rot: &[f32],
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        b: usize,
        h: usize,
        o: &mut [f32],
        lse: &mut [f32],
    ) -> u64 {
        let (n, d, dv) = (p.s_q, p.d, p.d_v);
        let hk = h / p.group();
        let rounds = self.rounds(p, inputs, rot, b, h);
        let mut w = Head {
            q: vec![0.0; n * d],
            k: vec![0.0; n * d],
            v: vec![0.0; n * dv],
            s: vec![0.0; 2 * rounds.chunk],
            acc: vec![0.0; dv],
        };
        for t in 0..n {
            inputs.q.read_row(b, h, t, params.scale, &mut w.q[t * d..(t + 1) * d]);
            let kt = &mut w.k[t * d..(t + 1) * d];
            inputs.k.read_row(b, hk, t, 1.0, kt);
            let norm = dot_fixed(kt, kt).sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            kt.iter_mut().for_each(|x| *x *= inv);
            inputs.v.read_row(b, hk, t, 1.0, &mut w.v[t * dv..(t + 1) * dv]);
        }
        o.fill(0.0);
        lse.fill(f32::NEG_INFINITY);
        let mut pairs = 0u64;
        let multi = rounds.rounds() > 1;
        for r in 0..rounds.rounds() {
            for c in 0..rounds.chunks {
                let own = rounds.chunk_tokens(r, c);
                let prev =
                    if rounds.chunks > 1 { rounds.chunk_tokens(r, rounds.prev(c)) } else { &[] };
                for &i in own {
                    let i = i as usize;
                    let qi = &w.q[i * d..(i + 1) * d];
                    // Scores of the row over prev ++ own (−∞ where masked or self).
                    let mut mx = f32::NEG_INFINITY;
                    for (slot, &j) in w.s.iter_mut().zip(prev.iter().chain(own)) {
                        let j = j as usize;
                        *slot = if j == i || !allowed(params, i, j) {
                            f32::NEG_INFINITY
                        } else {
                            pairs += 1;
                            let z = dot_fixed(qi, &w.k[j * d..(j + 1) * d]);
                            if multi {
                                z - (rounds.count(i, j) as f32).ln()
                            } else {
                                z
                            }
                        };
                        mx = mx.max(*slot);
                    }
                    if mx == f32::NEG_INFINITY {
                        continue;
                    }
                    let width = prev.len() + own.len();
                    let mut l = 0.0f32;
                    w.acc.fill(0.0);
                    for (&z, &j) in w.s[..width].iter().zip(prev.iter().chain(own)) {
                        if z == f32::NEG_INFINITY {
                            continue;
                        }
                        let e = (z - mx).exp();
                        l += e;
                        let vj = &w.v[j as usize * dv..(j as usize + 1) * dv];
                        w.acc.iter_mut().zip(vj).for_each(|(a, v)| *a += e * v);
                    }
                    let lse_r = mx + l.ln();
                    let (wa, wb, merged) = merge_weights(lse[i], lse_r);
                    let inv = 1.0 / l;
                    o[i * dv..(i + 1) * dv]
                        .iter_mut()
                        .zip(&w.acc)
                        .for_each(|(x, a)| *x = wa * *x + wb * (a * inv));
                    lse[i] = merged;
                }
            }
        }
        // A token with no other target attends to itself (spec §1.5).
        for i in 0..n {
            if lse[i] == f32::NEG_INFINITY && allowed(params, i, i) {
                pairs += 1;
                lse[i] = dot_fixed(&w.q[i * d..(i + 1) * d], &w.k[i * d..(i + 1) * d]);
                o[i * dv..(i + 1) * dv].copy_from_slice(&w.v[i * dv..(i + 1) * dv]);
            }
        }
        pairs
    }

    fn fast(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<u64> {
        let heads = p.b * p.h;
        if heads == 0 || p.s_q == 0 {
            return Ok(0);
        }
        let nb = self.buckets_for(p.s_q);
        let rots: Vec<Vec<f32>> = (0..p.h).map(|h| self.rotations(p.d, h, nb)).collect();
        let slots: Vec<Mutex<(&mut [f32], &mut [f32])>> = out
            .o
            .chunks_mut(p.s_q * p.d_v)
            .zip(out.lse.chunks_mut(p.s_q))
            .map(Mutex::new)
            .collect();
        let pairs = AtomicU64::new(0);
        let jobs = par.threads().min(heads);
        par.run(jobs, |wk| {
            for bh in (wk..heads).step_by(jobs) {
                let mut g = slots[bh].lock().unwrap_or_else(|e| e.into_inner());
                let (o, lse) = &mut *g;
                let (b, h) = (bh / p.h, bh % p.h);
                let n = self.head(&rots[h], p, inputs, params, b, h, o, lse);
                pairs.fetch_add(n, Ordering::Relaxed);
            }
        });
        Ok(pairs.into_inner())
    }
}

impl SparseConfig for Reformer {
    const NAME: &'static str = "reformer";
    const REFERENCE_NAME: &'static str = "reformer-reference";
    const FAMILY: &'static str = "reformer";
    const DESCRIPTION: &'static str =
        "Reformer: shared-QK angular LSH, sorted chunks + previous chunk, rounds merged by LSE (self-attention, S_q = S_kv)";
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "n_hashes",
                value: self.n_hashes.to_string(),
                doc: "hash rounds R, merged by log-sum-exp (fly default 8)",
            },
            ParamInfo {
                name: "chunk",
                value: self.chunk.to_string(),
                doc: "chunk length in sorted order; each chunk also sees the previous one (64)",
            },
            ParamInfo {
                name: "buckets",
                value: self.buckets.to_string(),
                doc:
                    "buckets per round, 1 or even; 0 = N/chunk rounded up to even (1 if N ≤ chunk)",
            },
            ParamInfo {
                name: "seed",
                value: self.seed.to_string(),
                doc: "rotation seed, keyed with the query head (default 0)",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |detail: &str| Error::BadParam {
            method: Self::NAME.into(),
            key: key.into(),
            value: value.into(),
            detail: detail.into(),
        };
        match key {
            "n_hashes" => {
                self.n_hashes = positive(Self::NAME, key, value)?;
                if self.n_hashes > 64 {
                    return Err(bad("at most 64 rounds"));
                }
            }
            "chunk" => self.chunk = positive(Self::NAME, key, value)?,
            "buckets" => {
                let b: usize = parse_param(Self::NAME, key, value)?;
                if b > 1 && b % 2 == 1 {
                    return Err(bad("angular LSH needs 1 or an even number of buckets"));
                }
                if b > 1 << 16 {
                    return Err(bad("at most 65536 buckets"));
                }
                self.buckets = b;
            }
            "seed" => self.seed = parse_param(Self::NAME, key, value)?,
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, p: &Problem, _: &Params) -> Vec<Reason> {
        if p.s_q == p.s_kv {
            Vec::new()
        } else {
            vec![Reason::Other(
                "reformer is shared-QK self-attention: each token is both query and key, so S_q must equal S_kv (spec §1.5)"
                    .into(),
            )]
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
            Exec::Fast => self.fast(p, inputs, params, par, out)?,
        };
        Ok(Stats::pairs(pairs))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let n = p.s_q;
        let rot = p.h * 4 * self.n_hashes * (self.buckets_for(n) / 2) * p.d;
        let rounds = 8 * self.n_hashes * n + 4 * (self.buckets_for(n) + 1);
        match exec {
            Exec::Reference => rot + rounds + 8 * (2 * n + p.d + p.d_v),
            Exec::Fast => {
                rot + par.threads().min(p.b * p.h).max(1)
                    * (rounds + 4 * (n * (2 * p.d + p.d_v) + 2 * self.chunk + p.d_v))
            }
        }
    }
}
