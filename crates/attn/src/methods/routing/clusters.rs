//! The routing of one `(batch, query head)`: centroids (a spherical k-means on the call's own
//! unit queries and keys, or loaded); then either each query's nearest `r` clusters and each
//! key's nearest `r_k` clusters (`balance=nearest`), or each cluster's `w_q` most similar
//! queries and `w_k` most similar keys (`balance=topw`); both grouped by cluster in position
//! order. Shared by both implementations: the
//! similarities are f32 faer GEMMs in one thread (faer picks its kernel from the CPU, not from
//! attn's SIMD level), so the support is bitwise the same at every attn SIMD level and thread
//! count on one machine.

use super::{Balance, Combine, Routing};
use crate::dispatch::Inputs;
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::methods::pattern::dot_fixed;
use crate::params::Resolved;
use crate::primitives::gemm::gemm_bt;
use crate::primitives::rng::{purpose, Key, Stream};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;

/// Loaded centroids `[H, C, D]` (one set per query head), stored as unit vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Centroids {
    heads: usize,
    clusters: usize,
    d: usize,
    data: Vec<f32>,
}

impl Centroids {
    /// Centroids from a row-major `[H, C, D]` array; each row is scaled to unit length (routing
    /// compares directions only, spec §6.2 step 1).
    ///
    /// # Errors
    /// [`Error::Shape`] when `data.len() ≠ H·C·D` or a dimension is 0; [`Error::NonFinite`] for a
    /// NaN/Inf entry (index `[0, h, c, d]`); [`Error::Shape`] for an all-zero centroid (it has no direction).
    pub fn new(data: Vec<f32>, [heads, clusters, d]: [usize; 3]) -> Result<Self> {
        let op = "routing centroids";
        if heads == 0 || clusters == 0 || d == 0 || data.len() != heads * clusters * d {
            return Err(Error::Shape {
                op,
                detail: format!(
                    "{} values for [H, C, D] = [{heads}, {clusters}, {d}] (need H·C·D > 0)",
                    data.len()
                ),
            });
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            let (hc, e) = (i / d, i % d);
            let index = [0, hc / clusters, hc % clusters, e];
            return Err(Error::NonFinite { op, tensor: "centroids", index, value: data[i] });
        }
        let mut data = data;
        for (r, row) in data.chunks_exact_mut(d).enumerate() {
            let norm = dot_fixed(row, row).sqrt();
            if norm == 0.0 {
                return Err(Error::Shape {
                    op,
                    detail: format!(
                        "centroid {} of head {} is zero (no direction)",
                        r % clusters,
                        r / clusters
                    ),
                });
            }
            row.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(Self { heads, clusters, d, data })
    }

    /// Query heads `H`.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Clusters `C`.
    pub fn clusters(&self) -> usize {
        self.clusters
    }

    /// Head dimension `D`.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The `C × D` unit centroids of query head `h`.
    pub fn head(&self, h: usize) -> &[f32] {
        let n = self.clusters * self.d;
        &self.data[h * n..(h + 1) * n]
    }
}

/// The routing of one `(b, h)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    /// Clusters `C` (fewer than asked when the fit set has fewer vectors).
    pub clusters: usize,
    /// The most clusters one query is in (`r` under nearest routing; under top-`w`, between 1
    /// and `C`, or 0 to `C` with [`Combine::Average`], which leaves stranded queries in none).
    pub memberships: usize,
    /// The most clusters one key is in (`r_k` under nearest routing; under top-`w`, 0 to `C`).
    pub key_memberships: usize,
    /// `C × D`: the unit centroids used.
    pub centroids: Vec<f32>,
    /// The clusters of each query, ascending, query by query (`query_cluster_start` delimits
    /// them).
    pub query_clusters: Vec<u32>,
    /// `S_q + 1` offsets into `query_clusters`.
    pub query_cluster_start: Vec<usize>,
    /// The clusters of each key, ascending, key by key (`key_cluster_start` delimits them; a key
    /// no cluster selected under top-`w` has none).
    pub key_clusters: Vec<u32>,
    /// `S_kv + 1` offsets into `key_clusters`.
    pub key_cluster_start: Vec<usize>,
    /// Queries grouped by cluster, ascending inside a cluster (`query_start` delimits them).
    pub queries: Vec<u32>,
    /// `C + 1` offsets into `queries`.
    pub query_start: Vec<usize>,
    /// Keys grouped by cluster, ascending inside a cluster (`key_start` delimits them).
    pub keys: Vec<u32>,
    /// `C + 1` offsets into `keys`.
    pub key_start: Vec<usize>,
}

impl Routes {
    /// The queries of cluster `c`, ascending.
    pub fn cluster_queries(&self, c: usize) -> &[u32] {
        &self.queries[self.query_start[c]..self.query_start[c + 1]]
    }

    /// The keys of cluster `c`, ascending.
    pub fn cluster_keys(&self, c: usize) -> &[u32] {
        &self.keys[self.key_start[c]..self.key_start[c + 1]]
    }

    /// The clusters of query `i`, ascending.
    pub fn clusters_of(&self, i: usize) -> &[u32] {
        &self.query_clusters[self.query_cluster_start[i]..self.query_cluster_start[i + 1]]
    }

    /// The clusters of key `j`, ascending.
    pub fn clusters_of_key(&self, j: usize) -> &[u32] {
        &self.key_clusters[self.key_cluster_start[j]..self.key_cluster_start[j + 1]]
    }

    /// `c_ij`: the clusters query `i` and key `j` share.
    #[inline]
    pub fn shared(&self, i: usize, j: usize) -> usize {
        let kc = self.clusters_of_key(j);
        self.clusters_of(i).iter().filter(|c| kc.contains(c)).count()
    }

    /// True when key `j` lies in one of query `i`'s clusters.
    pub fn routed(&self, i: usize, j: usize) -> bool {
        self.shared(i, j) > 0
    }
}

/// The rows of `x` (`[B, H, S, D]`, head `h` of batch `b`) as unit vectors, `S × D` (a zero
/// vector stays zero).
fn unit_rows(x: &crate::tensor::TensorRef, b: usize, h: usize, n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * d];
    for (t, row) in out.chunks_exact_mut(d).enumerate() {
        x.read_row(b, h, t, 1.0, row);
        let norm = dot_fixed(row, row).sqrt();
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        row.iter_mut().for_each(|v| *v *= inv);
    }
    out
}

/// Rows per similarity GEMM (bounds the `rows × C` buffer).
const SIM_ROWS: usize = 256;

/// Calls `f(t0, sims)` for every block of [`SIM_ROWS`] rows of `x` (`n × D`) starting at row
/// `t0`, with their dot products with the rows of `mu` (`C × D`): `rows × C` row-major, or with
/// `transposed` the `C × rows` block `μ·xᵀ` (one cluster's similarities to the block's rows
/// contiguous). One GEMM (`primitives::gemm`, faer) per block, single-threaded; blocks start at
/// multiples of `SIM_ROWS`, so a row's similarities depend only on the row, `mu` and `n`. Each
/// entry is the same dot product in both orientations (the GEMM accumulates over `D` in the same
/// order for both operand orders; tested through the routing's output bits).
fn similarities(
    x: &[f32],
    mu: &[f32],
    d: usize,
    transposed: bool,
    buf: &mut Vec<f32>,
    mut f: impl FnMut(usize, &[f32]),
) {
    let c = mu.len() / d;
    let n = x.len() / d;
    buf.resize(SIM_ROWS * c, 0.0);
    for t0 in (0..n).step_by(SIM_ROWS) {
        let m = (n - t0).min(SIM_ROWS);
        if transposed {
            gemm_bt(buf, mu, &x[t0 * d..], [c, d, m], false);
        } else {
            gemm_bt(buf, &x[t0 * d..], mu, [m, d, c], false);
        }
        f(t0, &buf[..m * c]);
    }
}

/// The nearest centroid of every column of a `C × m` similarity block (`sims`, row stride `m`)
/// into `out`: per column the first row holding its largest value (a strict `>` down the rows,
/// NaN never taken; 0 when all are −∞ or NaN), the same index as [`argmax`] of the column.
/// Vectorised across columns at the level it is dispatched at.
struct ArgmaxCols<'a> {
    sims: &'a [f32],
    m: usize,
    best: &'a mut [f32],
    out: &'a mut [u32],
}

impl Kernel for ArgmaxCols<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let (best, out) = (&mut self.best[..self.m], &mut self.out[..self.m]);
        best.fill(f32::NEG_INFINITY);
        out.fill(0);
        for (k, row) in self.sims.chunks_exact(self.m).enumerate() {
            let k = k as u32;
            for ((b, o), &v) in best.iter_mut().zip(out.iter_mut()).zip(row) {
                let gt = v > *b;
                *b = if gt { v } else { *b };
                *o = if gt { k } else { *o };
            }
        }
    }
}

/// The k-means++ seeding draws from at most `max(SEED_ROWS, SEED_PER_CLUSTER·C)` fit vectors
/// (each of the `C` picks reads all of them: 4096 unit vectors of D = 64 are 1 MiB).
const SEED_ROWS: usize = 4096;
/// See [`SEED_ROWS`].
const SEED_PER_CLUSTER: usize = 8;

/// [`top_w`] bounds each cluster's `w`-th largest similarity from below by that of every
/// `TOP_W_STRIDE`-th row, then selects among the rows at or above the bound only.
const TOP_W_STRIDE: usize = 8;

/// Lanes of [`argmax`]'s running maxima (the widest register).
const LANES: usize = 16;

/// The index of the largest value (first on ties; NaN is never the largest; 0 when every value
/// is −∞ or NaN): two passes that vectorise — the largest value `m` by per-lane maxima (`max`
/// is exact, so the lane count and order do not matter), then the first index holding `m` (a
/// chunk is scanned only when one of its lanes equals `m`). The same index as a left-to-right
/// scan with a strict `>` at every SIMD level.
#[inline(always)]
fn argmax(s: &[f32]) -> usize {
    let chunks = s.chunks_exact(LANES);
    let rest = chunks.remainder();
    // `if v > b { v } else { b }` is the x86 `max` (NaN in `v` keeps `b`).
    let gt = |b: f32, v: f32| if v > b { v } else { b };
    let mut best = [f32::NEG_INFINITY; LANES];
    for ch in chunks.clone() {
        let ch: &[f32; LANES] = ch.try_into().expect("a chunk of LANES");
        for l in 0..LANES {
            best[l] = gt(best[l], ch[l]);
        }
    }
    let m =
        rest.iter().fold(best.iter().fold(f32::NEG_INFINITY, |b, &v| gt(b, v)), |b, &v| gt(b, v));
    if m == f32::NEG_INFINITY {
        return 0;
    }
    for (u, ch) in chunks.enumerate() {
        let ch: &[f32; LANES] = ch.try_into().expect("a chunk of LANES");
        if ch.iter().fold(false, |a, &v| a | (v == m)) {
            return u * LANES + ch.iter().position(|&v| v == m).unwrap_or(0);
        }
    }
    s.len() - rest.len() + rest.iter().position(|&v| v == m).unwrap_or(0)
}

/// [`argmax`] of every row of a `rows × C` block into `out` (compiled for the SIMD level it
/// is dispatched at; the result is the same at every level).
struct ArgmaxRows<'a> {
    sims: &'a [f32],
    c: usize,
    out: &'a mut [u32],
}

impl Kernel for ArgmaxRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        for (row, o) in self.sims.chunks_exact(self.c).zip(self.out.iter_mut()) {
            *o = argmax(row) as u32;
        }
    }
}

/// Rows per block of [`SeedStep`] (one vector of lanes).
const SEED_BLOCK: usize = 16;

/// One k-means++ step over the sample rows, stored transposed (`D × m_pad`, `m_pad` a multiple
/// of [`SEED_BLOCK`], padded with zero rows): the squared distance to the newest centroid `mu`,
/// `e = max(0, 2 − 2·x·μ)`, lowers each of the `m` rows' `dist`; returns `Σ dist` in row order.
/// The dot products are [`dot_fixed`]'s bits: per row, 16 partial sums `p_l` (element `e` into
/// `p_{e mod 16}`, in increasing `e`, a product then an add), then the same halving tree — here
/// for [`SEED_BLOCK`] rows at once, lanes across rows. Elementwise f32/f64 arithmetic only, so
/// the same bits at every SIMD level.
struct SeedStep<'a> {
    rows_t: &'a [f32],
    m: usize,
    mu: &'a [f32],
    dist: &'a mut [f64],
}

impl Kernel for SeedStep<'_> {
    type Output = f64;
    #[inline(always)]
    fn run<S: Simd>(self) -> f64 {
        let m_pad = self.m.next_multiple_of(SEED_BLOCK);
        let mut total = 0.0f64;
        for r0 in (0..self.m).step_by(SEED_BLOCK) {
            let mut p = [[0.0f32; SEED_BLOCK]; 16];
            for (e, &y) in self.mu.iter().enumerate() {
                let xs: &[f32; SEED_BLOCK] = self.rows_t[e * m_pad + r0..][..SEED_BLOCK]
                    .try_into()
                    .expect("a block of rows");
                let pl = &mut p[e % 16];
                for r in 0..SEED_BLOCK {
                    pl[r] += xs[r] * y;
                }
            }
            for w in [8, 4, 2, 1] {
                for l in 0..w {
                    let hi = p[l + w];
                    for r in 0..SEED_BLOCK {
                        p[l][r] += hi[r];
                    }
                }
            }
            let rows = (self.m - r0).min(SEED_BLOCK);
            for (&dot, du) in p[0][..rows].iter().zip(&mut self.dist[r0..r0 + rows]) {
                let e = (2.0 - 2.0 * dot as f64).max(0.0);
                *du = du.min(e);
                total += *du;
            }
        }
        total
    }
}

/// The Lloyd update's sums: every fit vector (the rows of `fit[0]`, then of `fit[1]`) added in
/// f64 to its cluster's `sum`, in row order, and counted (compiled at the dispatched level; the
/// adds are elementwise, so the same bits at every level).
struct SumMembers<'a> {
    fit: [&'a [f32]; 2],
    assign: &'a [u32],
    d: usize,
    sum: &'a mut [f64],
    count: &'a mut [usize],
}

impl Kernel for SumMembers<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let d = self.d;
        let rows = self.fit[0].chunks_exact(d).chain(self.fit[1].chunks_exact(d));
        for (&a, x) in self.assign.iter().zip(rows) {
            let a = a as usize;
            self.count[a] += 1;
            self.sum[a * d..(a + 1) * d].iter_mut().zip(x).for_each(|(s, &x)| *s += x as f64);
        }
    }
}

/// An `i32` whose order is `f32::total_cmp`'s (the sign-magnitude bits with the magnitude
/// flipped for negatives).
#[inline(always)]
fn order_key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// Groups `items` (ascending) by their cluster: `(grouped, start)` with `start.len() = C + 1`.
fn group(cluster_of: impl Iterator<Item = (u32, u32)> + Clone, c: usize) -> (Vec<u32>, Vec<usize>) {
    let mut start = vec![0usize; c + 1];
    for (_, k) in cluster_of.clone() {
        start[k as usize + 1] += 1;
    }
    for u in 0..c {
        start[u + 1] += start[u];
    }
    let mut fill = start.clone();
    let mut out = vec![0u32; start[c]];
    for (t, k) in cluster_of {
        out[fill[k as usize]] = t;
        fill[k as usize] += 1;
    }
    (out, start)
}

impl Routing {
    /// Clusters asked for `s_kv` keys: the loaded centroids' count, the `clusters` parameter, or
    /// `⌈S_kv / window⌉` (spec §6.3: `C·w = N`).
    pub fn clusters_for(&self, s_kv: usize) -> usize {
        if let Some(c) = &self.centroids {
            c.clusters()
        } else if self.clusters > 0 {
            self.clusters
        } else {
            s_kv.div_ceil(self.window).max(1)
        }
    }

    /// Keys every query row may see (the keys the k-means may learn from without a later key
    /// reaching an earlier row): all of them without a mask, `j ≤ q_offset` under causal.
    pub fn shared_keys(p: &Problem, params: &Resolved) -> usize {
        match params.mask {
            Mask::Causal => (params.position(0) + 1).clamp(0, p.s_kv as i64) as usize,
            _ => p.s_kv,
        }
    }

    /// The k-means of `(b, h)` on its unit queries `qn` (`S_q × D`) and the first `shared` unit
    /// keys `kn`: `C` fit vectors drawn by seeded k-means++, then `iters` Lloyd steps
    /// (assign to the nearest centroid; each centroid becomes the normalised sum of its
    /// members; an empty cluster keeps its centroid). Returns the `C' × D` centroids,
    /// `C' = min(C, fit vectors)`.
    #[allow(clippy::too_many_arguments)]
    fn kmeans(
        &self,
        qn: &[f32],
        kn: &[f32],
        shared: usize,
        d: usize,
        c: usize,
        b: usize,
        h: usize,
    ) -> Vec<f32> {
        let nq = qn.len() / d;
        let n = nq + shared;
        let row =
            |t: usize| if t < nq { &qn[t * d..(t + 1) * d] } else { &kn[(t - nq) * d..][..d] };
        let c = c.min(n);
        // k-means++ seeding on the seed sample — `m = min(n, max(SEED_ROWS, SEED_PER_CLUSTER·C))`
        // fit vectors evenly spaced over the fit set (queries, then keys; all of them when
        // `m = n`): the first centroid uniform, each next one a sample vector drawn with
        // probability ∝ its squared distance to the nearest chosen one (`2 − 2·x·μ` for unit
        // vectors); uniform number `b·2³² + t` of the stream for pick `t`. Each pick reads the
        // whole sample, so it is kept small enough for the core's cache.
        let s = Stream::new(Key {
            seed: self.seed,
            layer: 0,
            head: h as u64,
            purpose: purpose::CLUSTERS,
        });
        let uniform = |t: usize| s.uniform_at(((b as u64) << 32) | t as u64);
        let m = n.min(SEED_ROWS.max(SEED_PER_CLUSTER * c));
        let mut sample = Vec::with_capacity(m * d);
        for u in 0..m {
            sample.extend_from_slice(row(u * n / m));
        }
        let srow = |u: usize| &sample[u * d..(u + 1) * d];
        // The sample transposed for [`SeedStep`]: element e of row u at e·m_pad + u.
        let m_pad = m.next_multiple_of(SEED_BLOCK);
        let mut sample_t = vec![0.0f32; d * m_pad];
        for (u, x) in sample.chunks_exact(d).enumerate() {
            x.iter().enumerate().for_each(|(e, &v)| sample_t[e * m_pad + u] = v);
        }
        let mut mu = Vec::with_capacity(c * d);
        let first = ((uniform(0) * m as f64) as usize).min(m - 1);
        mu.extend_from_slice(srow(first));
        let mut dist = vec![f64::INFINITY; m];
        let mut buf = Vec::new();
        let level = Level::current();
        for t in 1..c {
            let last = &mu[(t - 1) * d..t * d];
            let total =
                dispatch(level, SeedStep { rows_t: &sample_t, m, mu: last, dist: &mut dist });
            let pick = if total > 0.0 {
                // The first vector whose cumulative distance exceeds u·total.
                let target = uniform(t) * total;
                let mut acc = 0.0f64;
                dist.iter()
                    .position(|&du| {
                        acc += du;
                        acc > target
                    })
                    .unwrap_or(m - 1)
            } else {
                // Every sample vector coincides with a chosen centroid: repeat one.
                ((uniform(t) * m as f64) as usize).min(m - 1)
            };
            mu.extend_from_slice(srow(pick));
        }
        let mut assign = vec![u32::MAX; n];
        let mut sum = vec![0.0f64; c * d];
        let mut count = vec![0usize; c];
        let mut near = [0u32; SIM_ROWS];
        let mut best = [0.0f32; SIM_ROWS];
        for _ in 0..self.iters {
            let mut moved = false;
            // Blocks of C × rows similarities: the nearest centroid of a row is its column's
            // argmax (vectorised across rows).
            let mut see = |t0: usize, sims: &[f32]| {
                let m = sims.len() / c;
                dispatch(level, ArgmaxCols { sims, m, best: &mut best, out: &mut near });
                let old = &mut assign[t0..t0 + m];
                moved |= old != &near[..m];
                old.copy_from_slice(&near[..m]);
            };
            similarities(qn, &mu, d, true, &mut buf, &mut see);
            similarities(&kn[..shared * d], &mu, d, true, &mut buf, |u0, sims| see(nq + u0, sims));
            if !moved {
                break;
            }
            sum.fill(0.0);
            count.fill(0);
            let fit = [qn, &kn[..shared * d]];
            dispatch(
                level,
                SumMembers { fit, assign: &assign, d, sum: &mut sum, count: &mut count },
            );
            for k in 0..c {
                let sk = &sum[k * d..(k + 1) * d];
                let norm = sk.iter().map(|x| x * x).sum::<f64>().sqrt();
                if count[k] > 0 && norm > 0.0 {
                    mu[k * d..(k + 1) * d]
                        .iter_mut()
                        .zip(sk)
                        .for_each(|(m, s)| *m = (s / norm) as f32);
                }
            }
        }
        mu
    }

    /// The routing of `(b, h)` (see the module doc and README): nearest-centroid or balanced
    /// top-`w` by [`Routing::balance_for`] the call's mask.
    pub fn routes(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        b: usize,
        h: usize,
    ) -> Routes {
        let d = p.d;
        let hk = h / p.group();
        let qn = unit_rows(&inputs.q, b, h, p.s_q, d);
        let kn = unit_rows(&inputs.k, b, hk, p.s_kv, d);
        let centroids = match &self.centroids {
            Some(c) => c.head(h).to_vec(),
            None => {
                let shared = Self::shared_keys(p, params);
                self.kmeans(&qn, &kn, shared, d, self.clusters_for(p.s_kv), b, h)
            }
        };
        let c = centroids.len() / d;
        let (r, rk) = (self.memberships.min(c), self.key_memberships.min(c));
        let mut buf = Vec::new();
        let ((query_clusters, query_cluster_start), (key_clusters, key_cluster_start)) =
            match self.balance_for(&params.mask) {
                Balance::TopW => {
                    let (wq, wk) = Self::balanced_sizes(r, rk, c, p.s_q, p.s_kv);
                    (
                        // Union: a query no cluster took joins its nearest; average (the
                        // spec's step 5): it stays in none and gets 0.
                        top_w(&qn, &centroids, d, wq, self.combine == Combine::Union, &mut buf),
                        top_w(&kn, &centroids, d, wk, false, &mut buf),
                    )
                }
                _ => (
                    nearest(&qn, &centroids, d, r, &mut buf),
                    nearest(&kn, &centroids, d, rk, &mut buf),
                ),
            };
        let by_cluster = |tc: &[u32], start: &[usize]| {
            group(
                start
                    .windows(2)
                    .enumerate()
                    .flat_map(move |(t, se)| tc[se[0]..se[1]].iter().map(move |&k| (t as u32, k))),
                c,
            )
        };
        let (queries, query_start) = by_cluster(&query_clusters, &query_cluster_start);
        let (keys, key_start) = by_cluster(&key_clusters, &key_cluster_start);
        let most = |start: &[usize]| start.windows(2).map(|se| se[1] - se[0]).max().unwrap_or(0);
        Routes {
            clusters: c,
            memberships: most(&query_cluster_start),
            key_memberships: most(&key_cluster_start),
            centroids,
            query_clusters,
            query_cluster_start,
            key_clusters,
            key_cluster_start,
            queries,
            query_start,
            keys,
            key_start,
        }
    }

    /// Queries and keys per cluster under top-`w` routing, `(w_q, w_k)`: `w = ⌈S / C⌉` (so
    /// `C·w ≥ S`, the official `C·w = N`), times the memberships `r` / `r_k` (the average number
    /// of clusters per token), capped at `S`.
    pub fn balanced_sizes(
        r: usize,
        rk: usize,
        c: usize,
        s_q: usize,
        s_kv: usize,
    ) -> (usize, usize) {
        let c = c.max(1);
        ((r * s_q.div_ceil(c)).min(s_q), (rk * s_kv.div_ceil(c)).min(s_kv))
    }
}

/// Nearest-centroid routing of the rows of `x` (`n × D`): each row in its `r` most similar
/// centroids (ties: smaller index), as a row-major CSR `(clusters, start)` with clusters
/// ascending per row.
fn nearest(
    x: &[f32],
    mu: &[f32],
    d: usize,
    r: usize,
    buf: &mut Vec<f32>,
) -> (Vec<u32>, Vec<usize>) {
    let (n, c) = (x.len() / d, mu.len() / d);
    let mut out = vec![0u32; n * r];
    let level = Level::current();
    similarities(x, mu, d, false, buf, |t0, sims| {
        let m = sims.len() / c;
        let tc = &mut out[t0 * r..(t0 + m) * r];
        if r == 1 {
            dispatch(level, ArgmaxRows { sims, c, out: tc });
        } else {
            for (row, tc) in sims.chunks_exact(c).zip(tc.chunks_exact_mut(r)) {
                tc.copy_from_slice(&crate::methods::pattern::top_k(row, r));
            }
        }
    });
    (out, (0..=n).map(|t| t * r).collect())
}

/// Balanced routing of the rows of `x` (`n × D`): each centroid takes the `w` rows most similar
/// to it (ties: smaller row). With `strand_to_nearest`, a row no centroid took joins its nearest
/// one. Returned as a row-major CSR `(clusters, start)`, clusters ascending per row.
fn top_w(
    x: &[f32],
    mu: &[f32],
    d: usize,
    w: usize,
    strand_to_nearest: bool,
    buf: &mut Vec<f32>,
) -> (Vec<u32>, Vec<usize>) {
    let (n, c) = (x.len() / d, mu.len() / d);
    // Column-major similarities as order keys ([`order_key`]), C × n: one cluster's column is
    // contiguous. Each row's nearest centroid on the way (for the stranded rows).
    let mut cols = vec![0i32; c * n];
    let mut nearest_of = vec![0u32; if strand_to_nearest { n } else { 0 }];
    let mut best = vec![0.0f32; SIM_ROWS];
    let level = Level::current();
    similarities(x, mu, d, true, buf, |t0, sims| {
        let m = sims.len() / c;
        for (col, row) in cols.chunks_exact_mut(n).zip(sims.chunks_exact(m)) {
            col[t0..t0 + m].iter_mut().zip(row).for_each(|(o, &v)| *o = order_key(v));
        }
        if strand_to_nearest {
            let out = &mut nearest_of[t0..t0 + m];
            dispatch(level, ArgmaxCols { sims, m, best: &mut best, out });
        }
    });
    let w = w.min(n);
    let mut scratch: Vec<i32> = Vec::with_capacity(n);
    let mut cand: Vec<(u32, i32)> = Vec::with_capacity(n);
    // (cluster, row) pairs, cluster-major, rows ascending inside a cluster.
    let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(c * w + n);
    let mut taken = vec![false; n];
    for (k, col) in cols.chunks_exact(n).enumerate() {
        if w == 0 {
            break;
        }
        if w == n {
            taken.fill(true);
            pairs.extend((0..n as u32).map(|t| (k as u32, t)));
            continue;
        }
        // A lower bound `lo` on the w-th largest key: the w-th largest of every
        // TOP_W_STRIDE-th key (a subset's w-th largest is at most the whole column's), when
        // that subset has w keys. The candidates, the keys ≥ lo, hold the w largest.
        let lo = if n / TOP_W_STRIDE >= w {
            scratch.clear();
            scratch.extend(col.iter().step_by(TOP_W_STRIDE));
            let len = scratch.len();
            *scratch.select_nth_unstable(len - w).1
        } else {
            i32::MIN
        };
        cand.clear();
        cand.extend(col.iter().enumerate().filter(|&(_, &v)| v >= lo).map(|(t, &v)| (t as u32, v)));
        // The w-th largest key `thr`: the candidates above it, then the first ones equal to it
        // (the smaller rows win ties) — the w largest in (similarity desc, row asc) order,
        // ascending.
        scratch.clear();
        scratch.extend(cand.iter().map(|&(_, v)| v));
        let len = scratch.len();
        let thr = *scratch.select_nth_unstable(len - w).1;
        // Everything above thr lies in the selected top w.
        let mut eq = w - scratch[len - w..].iter().filter(|&&v| v > thr).count();
        for &(t, v) in &cand {
            if v > thr || (v == thr && eq > 0) {
                eq -= usize::from(v == thr);
                taken[t as usize] = true;
                pairs.push((k as u32, t));
            }
        }
    }
    if strand_to_nearest {
        for t in (0..n).filter(|&t| !taken[t]) {
            pairs.push((nearest_of[t], t as u32));
        }
    }
    // Grouped by row: a row's clusters come in cluster order (a stranded row has one).
    group(pairs.iter().copied(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The left-to-right scan [`argmax`] must equal: a strict `>` from −∞ at index 0.
    fn scan(s: &[f32]) -> usize {
        let (mut best, mut arg) = (f32::NEG_INFINITY, 0);
        for (i, &v) in s.iter().enumerate() {
            if v > best {
                (best, arg) = (v, i);
            }
        }
        arg
    }

    #[test]
    fn argmax_is_the_first_largest_at_every_level() {
        let s = Stream::new(Key { seed: 7, layer: 0, head: 0, purpose: purpose::CLUSTERS });
        let mut rows: Vec<Vec<f32>> = Vec::new();
        for (n, t) in [1usize, 15, 16, 17, 64, 100, 256].into_iter().zip(0u64..) {
            // Few distinct values, so ties (also across lanes and the remainder) are common.
            let row: Vec<f32> =
                (0..n).map(|i| (s.uniform_at(t << 20 | i as u64) * 5.0).floor() as f32).collect();
            rows.push(row.clone());
            let mut special = row;
            special[n / 2] = f32::NAN;
            special[0] = -0.0;
            special[n - 1] = 0.0;
            rows.push(special);
        }
        rows.push(vec![f32::NEG_INFINITY; 40]);
        rows.push(vec![f32::NAN; 20]);
        rows.push((0..33).map(|i| if i == 32 { 1.0 } else { f32::NAN }).collect());
        rows.push((0..48).map(|i| if i % 16 == 3 { 2.0 } else { -(i as f32) }).collect());
        for level in Level::available() {
            for row in &rows {
                let mut out = [0u32; 1];
                dispatch(level, ArgmaxRows { sims: row, c: row.len(), out: &mut out });
                assert_eq!(out[0] as usize, scan(row), "{level:?} {row:?}");
            }
        }
    }

    #[test]
    fn seed_step_has_dot_fixed_bits_at_every_level() {
        let s = Stream::new(Key { seed: 3, layer: 0, head: 1, purpose: purpose::CLUSTERS });
        for (m, d) in [(37usize, 40usize), (16, 64), (5, 32), (70, 7)] {
            let u = |i: usize| s.uniform_at((m * 1000 + d) as u64 * 65536 + i as u64) as f32 - 0.5;
            let rows: Vec<f32> = (0..m * d).map(u).collect();
            let mu: Vec<f32> = (0..d).map(|e| u(m * d + e)).collect();
            let m_pad = m.next_multiple_of(SEED_BLOCK);
            let mut rows_t = vec![0.0f32; d * m_pad];
            for (r, x) in rows.chunks_exact(d).enumerate() {
                x.iter().enumerate().for_each(|(e, &v)| rows_t[e * m_pad + r] = v);
            }
            let start: Vec<f64> =
                (0..m).map(|r| if r % 3 == 0 { 0.5 } else { f64::INFINITY }).collect();
            let mut want = start.clone();
            let mut want_total = 0.0f64;
            for (x, du) in rows.chunks_exact(d).zip(&mut want) {
                *du = du.min((2.0 - 2.0 * dot_fixed(x, &mu) as f64).max(0.0));
                want_total += *du;
            }
            for level in Level::available() {
                let mut dist = start.clone();
                let total =
                    dispatch(level, SeedStep { rows_t: &rows_t, m, mu: &mu, dist: &mut dist });
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&dist), bits(&want), "{level:?} m {m} d {d}");
                assert_eq!(total.to_bits(), want_total.to_bits());
            }
        }
    }
}
