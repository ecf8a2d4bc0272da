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
        dispatch(Level::current(), RoundsKernel { cfg: self, p, inputs, rot, b, h })
    }

    /// [`Reformer::rounds`] at level `S`, inlined into the SIMD kernels: the projections of a
    /// block of [`HASH_TOKENS`] tokens onto two registers of rotation columns at a time (`mul`
    /// then `add`, in the order of `d`: the same bits as a plain loop at every level).
    #[inline(always)]
    fn rounds_simd<S: Simd>(
        &self,
        p: &Problem,
        inputs: &Inputs,
        rot: &[f32],
        b: usize,
        h: usize,
    ) -> Rounds {
        let (n, d) = (p.s_q, p.d);
        let nb = self.buckets_for(n);
        let half = if nb >= 2 { nb / 2 } else { 0 };
        let rounds = self.n_hashes;
        let mut bucket = vec![0u32; rounds * n];
        if half > 0 {
            // R × D × hp: the rotations with each row padded to whole registers (zeros).
            let hp = half.div_ceil(S::LANES) * S::LANES;
            let mut a = vec![0.0f32; rounds * d * hp];
            for (dst, src) in a.chunks_exact_mut(hp).zip(rot.chunks_exact(half)) {
                dst[..half].copy_from_slice(src);
            }
            let mut x = vec![0.0f32; HASH_TOKENS * d]; // T × D: the block's queries
            let mut y = vec![0.0f32; HASH_TOKENS * hp]; // T × hp: their projections
            for t0 in (0..n).step_by(HASH_TOKENS) {
                let nt = HASH_TOKENS.min(n - t0);
                for (u, xt) in x.chunks_exact_mut(d).take(nt).enumerate() {
                    inputs.q.read_row(b, h, t0 + u, 1.0, xt);
                }
                for r in 0..rounds {
                    let ar = &a[r * d * hp..(r + 1) * d * hp];
                    // SAFETY: dispatched at level S; `ar` is D × hp and `y` is T × hp with hp
                    // a multiple of S::LANES; `x` holds T rows of D.
                    unsafe {
                        if nt == HASH_TOKENS {
                            project::<S, HASH_TOKENS>(&x, ar, d, hp, &mut y);
                        } else {
                            for u in 0..nt {
                                project::<S, 1>(
                                    &x[u * d..(u + 1) * d],
                                    ar,
                                    d,
                                    hp,
                                    &mut y[u * hp..(u + 1) * hp],
                                );
                            }
                        }
                    }
                    for u in 0..nt {
                        // SAFETY: dispatched at level S.
                        let arg = unsafe { argmax_pm::<S>(&y[u * hp..u * hp + half]) };
                        bucket[r * n + t0 + u] = arg as u32;
                    }
                }
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

/// Tokens hashed together (their projections share every load of the rotations).
const HASH_TOKENS: usize = 4;

/// [`Reformer::rounds`] as a SIMD kernel.
struct RoundsKernel<'a> {
    cfg: &'a Reformer,
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    rot: &'a [f32],
    b: usize,
    h: usize,
}

impl Kernel for RoundsKernel<'_> {
    type Output = Rounds;

    #[inline(always)]
    fn run<S: Simd>(self) -> Rounds {
        self.cfg.rounds_simd::<S>(self.p, self.inputs, self.rot, self.b, self.h)
    }
}

/// `y[t·hp + u] = Σ_e x[t·d + e] · a[e·hp + u]` for `T` tokens (`a`: D × hp, `hp` a multiple of
/// `S::LANES`): two registers of columns for all `T` tokens held over the `D` rows; each entry is
/// `((0 + x₀a₀) + x₁a₁) + …` with a separate multiply and add, the same bits at every level.
#[inline(always)]
unsafe fn project<S: Simd, const T: usize>(
    x: &[f32],
    a: &[f32],
    d: usize,
    hp: usize,
    y: &mut [f32],
) {
    // SAFETY: the caller runs this at level S (`dispatch`); every pointer stays in its slice.
    unsafe {
        let (l, ap, xp, yp) = (S::LANES, a.as_ptr(), x.as_ptr(), y.as_mut_ptr());
        let mut c = 0;
        while c + 2 * l <= hp {
            let mut acc = [[S::splat(0.0); 2]; T];
            for e in 0..d {
                let (w0, w1) = (S::load(ap.add(e * hp + c)), S::load(ap.add(e * hp + c + l)));
                for (t, at) in acc.iter_mut().enumerate() {
                    let xb = S::splat(*xp.add(t * d + e));
                    at[0] = S::add(at[0], S::mul(xb, w0));
                    at[1] = S::add(at[1], S::mul(xb, w1));
                }
            }
            for (t, at) in acc.iter().enumerate() {
                S::store(yp.add(t * hp + c), at[0]);
                S::store(yp.add(t * hp + c + l), at[1]);
            }
            c += 2 * l;
        }
        if c < hp {
            let mut acc = [S::splat(0.0); T];
            for e in 0..d {
                let w = S::load(ap.add(e * hp + c));
                for (t, at) in acc.iter_mut().enumerate() {
                    *at = S::add(*at, S::mul(S::splat(*xp.add(t * d + e)), w));
                }
            }
            for (t, at) in acc.iter().enumerate() {
                S::store(yp.add(t * hp + c), *at);
            }
        }
    }
}

/// The bucket `argmax([y ; −y])`, the first maximum on ties: the largest `y` and the largest `−y`
/// by registers, then the first entry equal to the winner (`−y` wins only when strictly larger).
/// Non-finite projections take the plain scalar scan, which skips NaN.
#[inline(always)]
unsafe fn argmax_pm<S: Simd>(y: &[f32]) -> usize {
    let half = y.len();
    let (l, full) = (S::LANES, y.len() / S::LANES * S::LANES);
    // SAFETY: the caller runs this at level S (`dispatch`); loads stay below `full`.
    let (mut hi, mut lo, mut finite) = unsafe {
        let zero = S::splat(0.0);
        let (mut hi, mut lo, mut chk) =
            (S::splat(f32::NEG_INFINITY), S::splat(f32::NEG_INFINITY), zero);
        for c in (0..full).step_by(l) {
            let v = S::load(y.as_ptr().add(c));
            hi = S::max(hi, v);
            lo = S::max(lo, S::sub(zero, v));
            // 0·v is 0 for finite v and NaN otherwise.
            chk = S::add(chk, S::mul(v, zero));
        }
        (S::reduce_max(hi), S::reduce_max(lo), S::reduce_sum(chk) == 0.0)
    };
    for &v in &y[full..] {
        finite &= v.is_finite();
        hi = hi.max(v);
        lo = lo.max(-v);
    }
    if finite && hi.is_finite() && lo.is_finite() {
        if hi >= lo {
            if let Some(u) = y.iter().position(|&v| v == hi) {
                return u;
            }
        } else if let Some(u) = y.iter().position(|&v| -v == lo) {
            return half + u;
        }
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
    arg
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

/// Hints the cache to fetch `x` (no effect on results; a no-op off x86-64).
#[inline(always)]
fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        // SAFETY: a prefetch never faults and the address lies in `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Query rows scored and weighted together (they share every load of the key and value tiles).
const QUERY_BLOCK: usize = 4;

/// `s[u·ws + c] = Σ_e q[rows_u, e] · tile[e·w + c]` for the `T` query rows `rows` of `q` (N × D)
/// and the columns `c < w` of `tile` (D × w, `w` a multiple of `S::LANES`): four registers of
/// columns with 16 lanes (else two) for all `T` rows, kept in registers over the `D` rows. Each
/// column is one fused multiply-add chain in the order of `e`, so the scores are the same bits
/// at every level and for any `T`.
#[inline(always)]
unsafe fn block_scores<S: Simd, const T: usize>(
    q: &[f32],
    d: usize,
    rows: &[u32],
    tile: &[f32],
    w: usize,
    ws: usize,
    s: &mut [f32],
) {
    // SAFETY: the caller runs this at level S; every pointer stays in its slice.
    unsafe {
        if S::LANES >= 16 {
            block_scores_n::<S, T, 4>(q, d, rows, tile, w, ws, s);
        } else {
            block_scores_n::<S, T, 2>(q, d, rows, tile, w, ws, s);
        }
    }
}

#[inline(always)]
unsafe fn block_scores_n<S: Simd, const T: usize, const V: usize>(
    q: &[f32],
    d: usize,
    rows: &[u32],
    tile: &[f32],
    w: usize,
    ws: usize,
    s: &mut [f32],
) {
    debug_assert!(rows.len() == T && s.len() >= (T - 1) * ws + w && tile.len() >= d * w);
    // SAFETY: the caller runs this at level S; every pointer stays in its slice.
    unsafe {
        let (l, tp, sp) = (S::LANES, tile.as_ptr(), s.as_mut_ptr());
        let qp: [*const f32; T] = std::array::from_fn(|u| q.as_ptr().add(rows[u] as usize * d));
        let mut c = 0;
        while c + V * l <= w {
            let mut acc = [[S::splat(0.0); V]; T];
            for e in 0..d {
                let p = tp.add(e * w + c);
                let k: [S::V; V] = std::array::from_fn(|x| S::load(p.add(x * l)));
                for (at, qt) in acc.iter_mut().zip(&qp) {
                    let x = S::splat(*qt.add(e));
                    for (a, kx) in at.iter_mut().zip(&k) {
                        *a = S::fma(x, *kx, *a);
                    }
                }
            }
            for (u, at) in acc.iter().enumerate() {
                for (x, a) in at.iter().enumerate() {
                    S::store(sp.add(u * ws + c + x * l), *a);
                }
            }
            c += V * l;
        }
        while c < w {
            let mut acc = [S::splat(0.0); T];
            for e in 0..d {
                let k = S::load(tp.add(e * w + c));
                for (a, qt) in acc.iter_mut().zip(&qp) {
                    *a = S::fma(S::splat(*qt.add(e)), k, *a);
                }
            }
            for (u, a) in acc.iter().enumerate() {
                S::store(sp.add(u * ws + c), *a);
            }
            c += l;
        }
    }
}

/// [`weighted_rows`] for `T` weight rows at once (`p`: T rows of stride `ps`, the first `width`
/// used; `acc`: T × D_v): a value row is skipped when all `T` weights are zero, otherwise every
/// row takes `fma(p, v, acc)`, which for a zero weight and a finite value leaves `acc` as it is
/// (it is never −0), so each row gets the same bits as [`weighted_rows`] alone.
#[inline(always)]
unsafe fn block_values<S: Simd, const T: usize>(
    p: &[f32],
    ps: usize,
    width: usize,
    rows: &[f32],
    dv: usize,
    acc: &mut [f32],
) {
    debug_assert!(p.len() >= (T - 1) * ps + width && rows.len() >= width * dv);
    // SAFETY: the caller runs this at level S; every pointer stays in its slice.
    unsafe {
        let (l, rp, pp, op) = (S::LANES, rows.as_ptr(), p.as_ptr(), acc.as_mut_ptr());
        let mut c = 0;
        while c + 4 * l <= dv {
            let mut a = [[S::splat(0.0); 4]; T];
            for j in 0..width {
                let pj: [f32; T] = std::array::from_fn(|u| *pp.add(u * ps + j));
                if pj.iter().all(|&x| x == 0.0) {
                    continue;
                }
                let r = rp.add(j * dv + c);
                let vv: [S::V; 4] = std::array::from_fn(|x| S::load(r.add(x * l)));
                for (at, &pu) in a.iter_mut().zip(&pj) {
                    let x = S::splat(pu);
                    for (ax, vx) in at.iter_mut().zip(&vv) {
                        *ax = S::fma(x, *vx, *ax);
                    }
                }
            }
            for (u, at) in a.iter().enumerate() {
                for (x, ax) in at.iter().enumerate() {
                    S::store(op.add(u * dv + c + x * l), *ax);
                }
            }
            c += 4 * l;
        }
        while c + l <= dv {
            let mut a = [S::splat(0.0); T];
            for j in 0..width {
                let r = S::load(rp.add(j * dv + c));
                for (u, au) in a.iter_mut().enumerate() {
                    let pu = *pp.add(u * ps + j);
                    if pu != 0.0 {
                        *au = S::fma(S::splat(pu), r, *au);
                    }
                }
            }
            for (u, au) in a.iter().enumerate() {
                S::store(op.add(u * dv + c), *au);
            }
            c += l;
        }
        for u in 0..T {
            let pu = &p[u * ps..u * ps + width];
            for e in c..dv {
                acc[u * dv + e] = pu
                    .iter()
                    .enumerate()
                    .filter(|(_, &pj)| pj != 0.0)
                    .map(|(j, &pj)| pj * rows[j * dv + e])
                    .fold(0.0, |s, x| s + x);
            }
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
        let rounds = cfg.rounds_simd::<S>(p, inputs, rot, b, h);
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
        let mut ctab = vec![0u32; nr * wmax]; // R × W: each column's chunk in every round
        let mut cnt = vec![0u32; wmax]; // c_ij of each column for the current row
        let mut sc = vec![0.0f32; QUERY_BLOCK * wmax]; // QUERY_BLOCK × W: scores, then weights
        let causal = matches!(params.mask, Mask::Causal);
        let mut acc = vec![0.0f32; QUERY_BLOCK * dv]; // QUERY_BLOCK × D_v: Σ p·v
                                                      // A zero weight times a finite value adds nothing, so whole blocks of rows may share
                                                      // every value row; with a non-finite value each row skips its own zero weights.
        let v_finite = v.iter().all(|x| x.is_finite());
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
                // The next chunk's tokens are read in random order from N-row arrays larger
                // than the cache: ask for their rows while this chunk computes.
                let next = ((c + 1) * cs).min(n)..((c + 2) * cs).min(n);
                for &t in &order[next] {
                    let t = t as usize;
                    prefetch(&q[t * d..(t + 1) * d]);
                    prefetch(&k[t * d..(t + 1) * d]);
                    prefetch(&v[t * dv..(t + 1) * dv]);
                    prefetch(&o[t * dv..(t + 1) * dv]);
                }
                for (col, rank) in prev.clone().chain(own.clone()).enumerate() {
                    let t = order[rank] as usize;
                    cols[col] = t;
                    for e in 0..d {
                        tile[e * w + col] = k[t * d + e];
                    }
                    vt[col * dv..(col + 1) * dv].copy_from_slice(&v[t * dv..(t + 1) * dv]);
                    for (r2, &cj) in cid[t * nr..(t + 1) * nr].iter().enumerate() {
                        ctab[r2 * wmax + col] = cj;
                    }
                }
                for e in 0..d {
                    tile[e * w + width..(e + 1) * w].fill(0.0);
                }
                let rows = &order[own.clone()];
                for blk in rows.chunks(QUERY_BLOCK) {
                    let nq = blk.len();
                    // SAFETY: dispatched at level S; `tile` is D × w, w a multiple of S::LANES;
                    // `sc` holds QUERY_BLOCK rows of wmax ≥ w.
                    unsafe {
                        if nq == QUERY_BLOCK {
                            block_scores::<S, QUERY_BLOCK>(
                                &q,
                                d,
                                blk,
                                &tile[..d * w],
                                w,
                                wmax,
                                &mut sc,
                            );
                        } else {
                            for (u, &i) in blk.iter().enumerate() {
                                let row = std::slice::from_ref(&i);
                                let su = &mut sc[u * wmax..(u + 1) * wmax];
                                block_scores::<S, 1>(&q, d, row, &tile[..d * w], w, wmax, su);
                            }
                        }
                    }
                    let mut states = [(RowState::EMPTY, false); QUERY_BLOCK];
                    for (u, &i) in blk.iter().enumerate() {
                        let i = i as usize;
                        let s = &mut sc[u * wmax..u * wmax + w];
                        let (ci, pi) = (&cid[i * nr..(i + 1) * nr], &pid[i * nr..(i + 1) * nr]);
                        if nr > 1 {
                            // c_ij for every column at once, one round of the table at a time.
                            let cnt = &mut cnt[..width];
                            cnt.fill(0);
                            for (r2, (&a, &pa)) in ci.iter().zip(pi).enumerate() {
                                let row = &ctab[r2 * wmax..r2 * wmax + width];
                                cnt.iter_mut()
                                    .zip(row)
                                    .for_each(|(m, &cj)| *m += ((cj == a) | (cj == pa)) as u32);
                            }
                        }
                        // Causal: key j is allowed when j ≤ p_i.
                        let last = if causal { params.position(i) } else { i64::MAX };
                        let mut any = false;
                        for ((x, &j), &m) in s.iter_mut().zip(&cols[..width]).zip(&cnt[..width]) {
                            if j == i || j as i64 > last {
                                *x = f32::NEG_INFINITY;
                                continue;
                            }
                            any = true;
                            pairs += 1;
                            if nr > 1 {
                                *x -= ln_count[m as usize];
                            }
                        }
                        if !any {
                            // No weight on any column (the row is skipped below).
                            s.fill(0.0);
                            continue;
                        }
                        s[width..].fill(f32::NEG_INFINITY);
                        let mut st = RowState::EMPTY;
                        // SAFETY: dispatched at level S; w is a multiple of S::LANES.
                        unsafe { st.update::<S>(s, LOG2_E) };
                        states[u] = (st, true);
                    }
                    // SAFETY: dispatched at level S; `vt` holds `width` rows of D_v, `sc` nq
                    // rows of wmax ≥ width, `acc` QUERY_BLOCK rows of D_v.
                    unsafe {
                        if nq == QUERY_BLOCK && v_finite {
                            block_values::<S, QUERY_BLOCK>(&sc, wmax, width, &vt, dv, &mut acc);
                        } else {
                            for u in (0..nq).filter(|&u| states[u].1) {
                                let pu = &sc[u * wmax..u * wmax + width];
                                let au = &mut acc[u * dv..(u + 1) * dv];
                                weighted_rows::<S>(pu, &vt[..width * dv], dv, au);
                            }
                        }
                    }
                    for (u, &i) in blk.iter().enumerate() {
                        let (st, any) = states[u];
                        if !any {
                            continue;
                        }
                        let i = i as usize;
                        let (inv_l, lse_r) = st.finish();
                        let (wa, wb, merged) = merge_weights(lse[i], lse_r);
                        let wb = wb * inv_l;
                        o[i * dv..(i + 1) * dv]
                            .iter_mut()
                            .zip(&acc[u * dv..(u + 1) * dv])
                            .for_each(|(x, a)| *x = wa * *x + wb * a);
                        lse[i] = merged;
                    }
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
        // Workers run at the caller's level (a thread-local setting).
        let level = Level::current();
        Ok(for_each_head(
            p,
            par,
            out,
            // The rotations of the worker's last head (drawn in parallel, kept across batches).
            || (usize::MAX, Vec::new()),
            |(last, rot), b, h, o, lse| {
                if *last != h {
                    (*last, *rot) = (h, self.rotations(p.d, h, nb));
                }
                dispatch(level, HeadKernel { cfg: self, rot, p, inputs, params, b, h, o, lse })
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
        // One head's rotations and their copy padded to whole registers (≤ 16 lanes).
        let hp = self.buckets_for(n) / 2 + 16;
        let rot = 2 * 4 * self.n_hashes * hp * p.d;
        // Buckets, sorted order and chunk of every token per round, bucket starts, the hashed
        // block's queries and projections.
        let rounds =
            12 * self.n_hashes * n + 8 * (self.buckets_for(n) + 1) + 4 * HASH_TOKENS * (p.d + hp);
        // Two chunks of keys at most.
        let w = 2 * self.chunk.min(n.max(1)) + 16;
        match exec {
            Exec::Reference => rot + rounds + 8 * (2 * n + p.d + p.d_v),
            Exec::Fast => {
                // Per worker: rotations, rounds; q, unit keys, values, chunk ids; key tile,
                // value tile, columns (8 bytes), chunk table, counts, a block of score rows and
                // of output rows.
                par.threads().min(p.b * p.h).max(1)
                    * (rot
                        + rounds
                        + 4 * (n * (2 * p.d + p.d_v + 2 * self.n_hashes)
                            + w * (p.d + p.d_v + 3 + self.n_hashes + QUERY_BLOCK)
                            + QUERY_BLOCK * p.d_v))
            }
        }
    }
}
