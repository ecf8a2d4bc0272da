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
use crate::methods::pattern::{dot_fixed, for_each_head, positive, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::merge::merge_weights;
use crate::primitives::online_softmax::{RowState, LOG2_E};
use crate::primitives::rng::{purpose, Key, Stream};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;

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

    /// The random rotations of query head `h` for `b` buckets: `R × D × (b/2)` f32 (stored
    /// transposed, so one token's `b/2` projections are one pass over `D` contiguous rows), the
    /// entry `A_r[d, u]` being normal `(r·(b/2) + u)·D + d` of the [`purpose::LSH_PROJECTION`]
    /// stream of `(seed, layer 0, head h)`. Empty for one bucket.
    pub fn rotations(&self, d: usize, h: usize, b: usize) -> Vec<f32> {
        let half = if b >= 2 { b / 2 } else { 0 };
        let s = Stream::new(Key {
            seed: self.seed,
            layer: 0,
            head: h as u64,
            purpose: purpose::LSH_PROJECTION,
        });
        let mut a = vec![0.0f32; self.n_hashes * half * d];
        for r in 0..self.n_hashes {
            for u in 0..half {
                for e in 0..d {
                    let i = ((r * half + u) * d + e) as u64;
                    a[(r * d + e) * half + u] = s.gaussian_at(i) as f32;
                }
            }
        }
        a
    }

    /// Hashes and sorts the tokens of `(b, h)`: token `t` goes to
    /// `argmax([q_t A_r ; −q_t A_r])` (first maximum on ties; each projection of the unscaled
    /// f32 query is an f32 sum over `d = 0..D` in order, without fused multiply-add, so it is
    /// bitwise the same at every SIMD level), then round `r`'s tokens are stably sorted by
    /// bucket.
    pub fn rounds(&self, p: &Problem, inputs: &Inputs, rot: &[f32], b: usize, h: usize) -> Rounds {
        self.rounds_inline(p, inputs, rot, b, h)
    }

    /// [`Reformer::rounds`], inlined into the SIMD kernel (same operations, so the same bits).
    #[inline(always)]
    fn rounds_inline(
        &self,
        p: &Problem,
        inputs: &Inputs,
        rot: &[f32],
        b: usize,
        h: usize,
    ) -> Rounds {
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
                y.fill(0.0);
                for (e, &xe) in x.iter().enumerate() {
                    let row = &a[e * half..(e + 1) * half];
                    y.iter_mut().zip(row).for_each(|(yu, w)| *yu += xe * w);
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

/// The fast path of one `(b, h)` as a SIMD kernel (the body is compiled per level).
struct HeadKernel<'a> {
    cfg: &'a Reformer,
    rot: &'a [f32],
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    params: &'a Resolved,
    b: usize,
    h: usize,
    o: &'a mut [f32],
    lse: &'a mut [f32],
}

/// `s[..w] = Σ_e q_e · tile[e·w..(e+1)·w]` (`tile`: D × w, `w` a multiple of `S::LANES`): four
/// registers of columns at a time, kept in registers over the `D` rows. Each column is one fused
/// multiply-add chain in the order of `e`, so the scores are the same bits at every level.
#[inline(always)]
unsafe fn tile_scores<S: Simd>(q: &[f32], tile: &[f32], w: usize, s: &mut [f32]) {
    // SAFETY: the caller runs this at level S (`dispatch`); every pointer stays in its slice.
    unsafe {
        let (l, tp) = (S::LANES, tile.as_ptr());
        let mut c = 0;
        while c + 4 * l <= w {
            let (mut a0, mut a1, mut a2, mut a3) =
                (S::splat(0.0), S::splat(0.0), S::splat(0.0), S::splat(0.0));
            for (e, &qe) in q.iter().enumerate() {
                let (x, p) = (S::splat(qe), tp.add(e * w + c));
                a0 = S::fma(x, S::load(p), a0);
                a1 = S::fma(x, S::load(p.add(l)), a1);
                a2 = S::fma(x, S::load(p.add(2 * l)), a2);
                a3 = S::fma(x, S::load(p.add(3 * l)), a3);
            }
            let o = s.as_mut_ptr().add(c);
            S::store(o, a0);
            S::store(o.add(l), a1);
            S::store(o.add(2 * l), a2);
            S::store(o.add(3 * l), a3);
            c += 4 * l;
        }
        while c < w {
            let mut a = S::splat(0.0);
            for (e, &qe) in q.iter().enumerate() {
                a = S::fma(S::splat(qe), S::load(tp.add(e * w + c)), a);
            }
            S::store(s.as_mut_ptr().add(c), a);
            c += l;
        }
    }
}

/// `acc = Σ_j p_j · rows_j` over the rows (`D_v` each) with `p_j ≠ 0`: blocks of up to four
/// registers of `acc` kept in registers over the rows, the tail of `D_v` in scalars.
#[inline(always)]
unsafe fn weighted_rows<S: Simd>(p: &[f32], rows: &[f32], dv: usize, acc: &mut [f32]) {
    // SAFETY: the caller runs this at level S (`dispatch`); every pointer stays in its slice.
    unsafe {
        let (l, rp) = (S::LANES, rows.as_ptr());
        let mut c = 0;
        while c + 4 * l <= dv {
            let (mut a0, mut a1, mut a2, mut a3) =
                (S::splat(0.0), S::splat(0.0), S::splat(0.0), S::splat(0.0));
            for (j, &pj) in p.iter().enumerate() {
                if pj != 0.0 {
                    let (x, r) = (S::splat(pj), rp.add(j * dv + c));
                    a0 = S::fma(x, S::load(r), a0);
                    a1 = S::fma(x, S::load(r.add(l)), a1);
                    a2 = S::fma(x, S::load(r.add(2 * l)), a2);
                    a3 = S::fma(x, S::load(r.add(3 * l)), a3);
                }
            }
            let o = acc.as_mut_ptr().add(c);
            S::store(o, a0);
            S::store(o.add(l), a1);
            S::store(o.add(2 * l), a2);
            S::store(o.add(3 * l), a3);
            c += 4 * l;
        }
        while c + l <= dv {
            let mut a = S::splat(0.0);
            for (j, &pj) in p.iter().enumerate() {
                if pj != 0.0 {
                    a = S::fma(S::splat(pj), S::load(rp.add(j * dv + c)), a);
                }
            }
            S::store(acc.as_mut_ptr().add(c), a);
            c += l;
        }
        for (e, a) in acc.iter_mut().enumerate().skip(c) {
            *a = p
                .iter()
                .enumerate()
                .filter(|(_, &pj)| pj != 0.0)
                .map(|(j, &pj)| pj * rows[j * dv + e])
                .fold(0.0, |s, x| s + x);
        }
    }
}

impl Kernel for HeadKernel<'_> {
    /// Pairs scored.
    type Output = u64;

    #[inline(always)]
    fn run<S: Simd>(self) -> u64 {
        let HeadKernel { cfg, rot, p, inputs, params, b, h, o, lse } = self;
        let (n, d, dv) = (p.s_q, p.d, p.d_v);
        let hk = h / p.group();
        let rounds = cfg.rounds_inline(p, inputs, rot, b, h);
        let nr = rounds.rounds();
        let cs = rounds.chunk;
        // Key tile width: both chunks, padded to whole registers.
        let wmax = (2 * cs).div_ceil(S::LANES) * S::LANES;
        // Original order: q·scale (N × D), unit keys (N × D), values (N × D_v).
        let mut q = vec![0.0f32; n * d];
        let mut k = vec![0.0f32; n * d];
        let mut v = vec![0.0f32; n * dv];
        // N × R: the chunk of each token in every round (token-major, for c_ij).
        let mut cid = vec![0u32; n * nr];
        // N × R: the chunk before it (a key in either is a neighbour of the token).
        let mut pid = vec![0u32; n * nr];
        for t in 0..n {
            inputs.q.read_row(b, h, t, params.scale, &mut q[t * d..(t + 1) * d]);
            let kt = &mut k[t * d..(t + 1) * d];
            inputs.k.read_row(b, hk, t, 1.0, kt);
            let norm = dot_fixed(kt, kt).sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            kt.iter_mut().for_each(|x| *x *= inv);
            inputs.v.read_row(b, hk, t, 1.0, &mut v[t * dv..(t + 1) * dv]);
            for r in 0..nr {
                cid[t * nr + r] = rounds.chunk_of[r * n + t];
                pid[t * nr + r] = rounds.prev(rounds.chunk_of[r * n + t] as usize) as u32;
            }
        }
        // ln c for the duplicate correction, c = 1..=R.
        let ln_count: Vec<f32> = (0..=nr).map(|c| (c.max(1) as f32).ln()).collect();
        let mut tile = vec![0.0f32; d * wmax]; // D × W: the two chunks' unit keys, transposed
        let mut vt = vec![0.0f32; wmax * dv]; // W × D_v: their values
        let mut cols = vec![0usize; wmax]; // token of each tile column
        let mut sc = vec![0.0f32; wmax];
        let mut acc = vec![0.0f32; dv];
        o.fill(0.0);
        lse.fill(f32::NEG_INFINITY);
        let mut pairs = 0u64;
        for r in 0..nr {
            let order = &rounds.order[r * n..(r + 1) * n];
            for c in 0..rounds.chunks {
                let own = c * cs..((c + 1) * cs).min(n);
                let pc = rounds.prev(c);
                let prev = if rounds.chunks > 1 { pc * cs..((pc + 1) * cs).min(n) } else { 0..0 };
                let width = prev.len() + own.len();
                let w = width.div_ceil(S::LANES) * S::LANES;
                for (col, rank) in prev.clone().chain(own.clone()).enumerate() {
                    let t = order[rank] as usize;
                    cols[col] = t;
                    for e in 0..d {
                        tile[e * w + col] = k[t * d + e];
                    }
                    vt[col * dv..(col + 1) * dv].copy_from_slice(&v[t * dv..(t + 1) * dv]);
                }
                for e in 0..d {
                    tile[e * w + width..(e + 1) * w].fill(0.0);
                }
                for &i in &order[own.clone()] {
                    let i = i as usize;
                    let s = &mut sc[..w];
                    // SAFETY: dispatched at level S; `tile` is D × w, w a multiple of S::LANES.
                    unsafe { tile_scores::<S>(&q[i * d..(i + 1) * d], &tile[..d * w], w, s) };
                    let (ci, pi) = (&cid[i * nr..(i + 1) * nr], &pid[i * nr..(i + 1) * nr]);
                    let mut any = false;
                    for (x, &j) in s.iter_mut().zip(&cols[..width]) {
                        if j == i || !allowed(params, i, j) {
                            *x = f32::NEG_INFINITY;
                            continue;
                        }
                        any = true;
                        pairs += 1;
                        if nr > 1 {
                            let cj = &cid[j * nr..(j + 1) * nr];
                            let count: usize = ci
                                .iter()
                                .zip(pi)
                                .zip(cj)
                                .map(|((&a, &pa), &b)| ((b == a) | (b == pa)) as usize)
                                .sum();
                            *x -= ln_count[count];
                        }
                    }
                    if !any {
                        continue;
                    }
                    s[width..].fill(f32::NEG_INFINITY);
                    let mut st = RowState::EMPTY;
                    // SAFETY: dispatched at level S; w is a multiple of S::LANES.
                    unsafe { st.update::<S>(s, LOG2_E) };
                    // SAFETY: dispatched at level S; `vt` holds `width` rows of D_v.
                    unsafe { weighted_rows::<S>(&s[..width], &vt[..width * dv], dv, &mut acc) };
                    let (inv_l, lse_r) = st.finish();
                    let (wa, wb, merged) = merge_weights(lse[i], lse_r);
                    let wb = wb * inv_l;
                    o[i * dv..(i + 1) * dv]
                        .iter_mut()
                        .zip(&acc)
                        .for_each(|(x, a)| *x = wa * *x + wb * a);
                    lse[i] = merged;
                }
            }
        }
        // A token with no other target attends to itself (spec §1.5).
        for i in 0..n {
            if lse[i] == f32::NEG_INFINITY && allowed(params, i, i) {
                pairs += 1;
                lse[i] = dot_fixed(&q[i * d..(i + 1) * d], &k[i * d..(i + 1) * d]);
                o[i * dv..(i + 1) * dv].copy_from_slice(&v[i * dv..(i + 1) * dv]);
            }
        }
        pairs
    }
}

impl Reformer {
    fn fast(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<u64> {
        if p.b * p.h == 0 || p.s_q == 0 {
            return Ok(0);
        }
        let nb = self.buckets_for(p.s_q);
        let rots: Vec<Vec<f32>> = (0..p.h).map(|h| self.rotations(p.d, h, nb)).collect();
        // Workers run at the caller's level (a thread-local setting).
        let level = Level::current();
        Ok(for_each_head(
            p,
            par,
            out,
            || (),
            |_, b, h, o, lse| {
                dispatch(
                    level,
                    HeadKernel { cfg: self, rot: &rots[h], p, inputs, params, b, h, o, lse },
                )
            },
        ))
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
        // Buckets, sorted order and chunk of every token per round, bucket starts.
        let rounds = 12 * self.n_hashes * n + 8 * (self.buckets_for(n) + 1);
        // Two chunks of keys at most.
        let w = 2 * self.chunk.min(n.max(1));
        match exec {
            Exec::Reference => rot + rounds + 8 * (2 * n + p.d + p.d_v),
            Exec::Fast => {
                // q, unit keys, values, chunk ids; key tile, value tile, columns, scores, row.
                rot + par.threads().min(p.b * p.h).max(1)
                    * (rounds
                        + 4 * (n * (2 * p.d + p.d_v + self.n_hashes)
                            + w * (p.d + p.d_v + 3)
                            + p.d_v))
            }
        }
    }
}
