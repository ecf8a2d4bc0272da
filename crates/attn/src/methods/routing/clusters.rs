//! The routing of one `(batch, query head)`: centroids (a spherical k-means on the call's own
//! unit queries and keys, or loaded); then either each query's nearest `r` clusters and each
//! key's nearest `r_k` clusters (`balance=nearest`), or each cluster's `w_q` most similar
//! queries and `w_k` most similar keys (`balance=topw`); both grouped by cluster in position
//! order. Shared by both implementations: the
//! similarities are f32 faer GEMMs in one thread (faer picks its kernel from the CPU, not from
//! attn's SIMD level), so the support is bitwise the same at every attn SIMD level and thread
//! count on one machine.

use super::{Balance, Routing};
use crate::dispatch::Inputs;
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::methods::pattern::dot_fixed;
use crate::params::Resolved;
use crate::primitives::gemm::gemm_bt;
use crate::primitives::rng::{purpose, Key, Stream};
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
    /// and `C`).
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

/// Calls `f(t, sims)` for every row `t` of `x` (`n × D`) with its dot products with the rows of
/// `mu` (`C × D`): one GEMM (`primitives::gemm`, faer) per [`SIM_ROWS`] rows (single-threaded;
/// chunks start at multiples of `SIM_ROWS`, so a row's similarities depend only on the row, `mu`
/// and `n`).
fn similarities(
    x: &[f32],
    mu: &[f32],
    d: usize,
    buf: &mut Vec<f32>,
    mut f: impl FnMut(usize, &[f32]),
) {
    let c = mu.len() / d;
    let n = x.len() / d;
    buf.resize(SIM_ROWS * c, 0.0);
    for t0 in (0..n).step_by(SIM_ROWS) {
        let m = (n - t0).min(SIM_ROWS);
        gemm_bt(buf, &x[t0 * d..], mu, [m, d, c], false);
        for (r, sims) in buf[..m * c].chunks_exact(c).enumerate() {
            f(t0 + r, sims);
        }
    }
}

/// The index of the largest value (first on ties).
#[inline]
fn argmax(s: &[f32]) -> usize {
    let (mut best, mut arg) = (f32::NEG_INFINITY, 0usize);
    for (c, &v) in s.iter().enumerate() {
        if v > best {
            (best, arg) = (v, c);
        }
    }
    arg
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
        // k-means++ seeding: the first centroid uniform, each next one a fit vector drawn with
        // probability ∝ its squared distance to the nearest chosen one (`2 − 2·x·μ` for unit
        // vectors); uniform number `b·2³² + t` of the stream for pick `t`.
        let s = Stream::new(Key {
            seed: self.seed,
            layer: 0,
            head: h as u64,
            purpose: purpose::CLUSTERS,
        });
        let uniform = |t: usize| s.uniform_at(((b as u64) << 32) | t as u64);
        let mut mu = Vec::with_capacity(c * d);
        let first = ((uniform(0) * n as f64) as usize).min(n - 1);
        mu.extend_from_slice(row(first));
        let mut dist = vec![f64::INFINITY; n];
        let mut buf = Vec::new();
        for t in 1..c {
            let last = &mu[(t - 1) * d..t * d];
            let mut see = |u: usize, sim: &[f32]| {
                let e = (2.0 - 2.0 * sim[0] as f64).max(0.0);
                dist[u] = dist[u].min(e);
            };
            similarities(qn, last, d, &mut buf, &mut see);
            similarities(&kn[..shared * d], last, d, &mut buf, |u, sim| see(nq + u, sim));
            let total: f64 = dist.iter().sum();
            let pick = if total > 0.0 {
                // The first vector whose cumulative distance exceeds u·total.
                let target = uniform(t) * total;
                let mut acc = 0.0f64;
                dist.iter()
                    .position(|&du| {
                        acc += du;
                        acc > target
                    })
                    .unwrap_or(n - 1)
            } else {
                // Every fit vector coincides with a chosen centroid: repeat one.
                ((uniform(t) * n as f64) as usize).min(n - 1)
            };
            mu.extend_from_slice(row(pick));
        }
        let mut assign = vec![u32::MAX; n];
        let mut sum = vec![0.0f64; c * d];
        let mut count = vec![0usize; c];
        for _ in 0..self.iters {
            let mut moved = false;
            let mut see = |t: usize, sims: &[f32]| {
                let k = argmax(sims) as u32;
                moved |= assign[t] != k;
                assign[t] = k;
            };
            similarities(qn, &mu, d, &mut buf, &mut see);
            similarities(&kn[..shared * d], &mu, d, &mut buf, |u, sims| see(nq + u, sims));
            if !moved {
                break;
            }
            sum.fill(0.0);
            count.fill(0);
            for (t, &a) in assign.iter().enumerate() {
                let a = a as usize;
                count[a] += 1;
                sum[a * d..(a + 1) * d].iter_mut().zip(row(t)).for_each(|(s, &x)| *s += x as f64);
            }
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
                        top_w(&qn, &centroids, d, wq, true, &mut buf),
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
    let n = x.len() / d;
    let mut out = vec![0u32; n * r];
    similarities(x, mu, d, buf, |t, sims| {
        let tc = &mut out[t * r..(t + 1) * r];
        if r == 1 {
            tc[0] = argmax(sims) as u32;
        } else {
            tc.copy_from_slice(&crate::methods::pattern::top_k(sims, r));
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
    // Column-major similarities, C × n: one cluster's column is contiguous.
    let mut cols = vec![0.0f32; c * n];
    similarities(x, mu, d, buf, |t, sims| {
        sims.iter().enumerate().for_each(|(k, &s)| cols[k * n + t] = s);
    });
    let w = w.min(n);
    let mut idx: Vec<u32> = Vec::with_capacity(n);
    // (cluster, row) pairs, cluster-major, rows ascending inside a cluster.
    let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(c * w + n);
    let mut taken = vec![false; n];
    for k in 0..c {
        if w == 0 {
            break;
        }
        let col = &cols[k * n..(k + 1) * n];
        idx.clear();
        idx.extend(0..n as u32);
        let order = |a: &u32, b: &u32| col[*b as usize].total_cmp(&col[*a as usize]).then(a.cmp(b));
        if w < n {
            idx.select_nth_unstable_by(w - 1, order);
            idx.truncate(w);
        }
        idx.sort_unstable();
        for &t in &idx {
            taken[t as usize] = true;
            pairs.push((k as u32, t));
        }
    }
    if strand_to_nearest {
        let mut row = Vec::with_capacity(c);
        for t in (0..n).filter(|&t| !taken[t]) {
            row.clear();
            row.extend((0..c).map(|k| cols[k * n + t]));
            pairs.push((argmax(&row) as u32, t as u32));
        }
    }
    // Grouped by row: a row's clusters come in cluster order (a stranded row has one).
    group(pairs.iter().copied(), n)
}
