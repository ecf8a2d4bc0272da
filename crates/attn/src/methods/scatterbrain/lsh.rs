//! The LSH sparse part of `scatterbrain` (`sparse=lsh`): SMYRF's asymmetric clustering and the
//! fast path on its support (README, "The LSH support").
//!
//! - [`Scatterbrain::clusters`]: the hashing and the balanced clusters of one `(batch, query
//!   head)`, shared by both implementations (f32, fixed summation order), so both see the same
//!   support bit for bit.
//! - [`LshKernel`]: the fast path of one head: exact scores on the support, the Performer sums
//!   over every allowed key minus their terms on the support, accumulated in f64 so the
//!   subtraction does not cancel digits.

use super::{omega_t, Scatterbrain};
use crate::dispatch::Inputs;
use crate::mask::Mask;
use crate::methods::pattern::dot_fixed;
use crate::methods::performer::FeatureMap;
use crate::params::Resolved;
use crate::primitives::merge::merge_weights;
use crate::primitives::rng::{purpose, Key, Stream};
use crate::primitives::simd::{exp2_scalar, max_of, Kernel, Simd};
use crate::problem::Problem;
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};

/// The clusters of one `(batch, query head)`: per round, the cluster of every query and the keys
/// in hash order; key cluster `u` is the ranks `k_start[u]..k_start[u + 1]` in every round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clusters {
    /// Hash rounds `R`.
    pub rounds: usize,
    /// Clusters per round, `⌈S_kv / c⌉` (at least 1).
    pub clusters: usize,
    /// `R × S_q`: the cluster of query `i` in round `r`.
    pub q_cluster: Vec<u32>,
    /// `R × S_q`: round `r`'s queries sorted by `(hash, index)`.
    pub q_order: Vec<u32>,
    /// `clusters + 1` rank boundaries of the query clusters.
    pub q_start: Vec<usize>,
    /// `R × S_kv`: round `r`'s keys sorted by `(hash, index)`.
    pub k_order: Vec<u32>,
    /// `clusters + 1` rank boundaries of the key clusters.
    pub k_start: Vec<usize>,
}

impl Clusters {
    /// The queries of cluster `u` in round `r`.
    #[inline]
    pub fn queries(&self, r: usize, u: usize) -> &[u32] {
        let n = self.q_order.len() / self.rounds.max(1);
        &self.q_order[r * n + self.q_start[u]..r * n + self.q_start[u + 1]]
    }

    /// The keys of cluster `u` in round `r`.
    #[inline]
    pub fn keys(&self, r: usize, u: usize) -> &[u32] {
        let n = self.k_order.len() / self.rounds.max(1);
        &self.k_order[r * n + self.k_start[u]..r * n + self.k_start[u + 1]]
    }

    /// The support `S_i` of query `i`: the keys of its cluster in every round that are below
    /// `allowed` (the mask), each once (a pair in several rounds is one pair), in order of first
    /// appearance. `seen` has one flag per key, all false on entry and on return.
    pub fn support(&self, i: usize, allowed: usize, seen: &mut [bool], out: &mut Vec<u32>) {
        out.clear();
        let nq = self.q_cluster.len() / self.rounds.max(1);
        for r in 0..self.rounds {
            let u = self.q_cluster[r * nq + i] as usize;
            for &j in self.keys(r, u) {
                let ju = j as usize;
                if ju < allowed && !seen[ju] {
                    seen[ju] = true;
                    out.push(j);
                }
            }
        }
        out.iter().for_each(|&j| seen[j as usize] = false);
    }
}

/// `Σ_e a_e x_e` in f32, in the order of `e`, without fused multiply-add (the same bits
/// wherever it is compiled).
#[inline]
fn dot_seq(a: &[f32], x: &[f32]) -> f32 {
    a.iter().zip(x).fold(0.0f32, |s, (p, q)| s + p * q)
}

impl Scatterbrain {
    /// Clusters per round for `s_kv` keys: `⌈S_kv / c⌉`, at least 1.
    pub fn clusters_for(&self, s_kv: usize) -> usize {
        s_kv.div_ceil(self.cluster.max(1)).max(1)
    }

    /// The hash directions of query head `h`: `R` rows of `D + 2` f32 normals, entry `(r, e)`
    /// being normal `r·(D + 2) + e` of the [`purpose::HASH_PROJECTION`] stream of `(seed,
    /// layer 0, head h)`.
    pub fn hash_directions(&self, d: usize, h: usize) -> Vec<f32> {
        let s = Stream::new(Key {
            seed: self.seed,
            layer: 0,
            head: h as u64,
            purpose: purpose::HASH_PROJECTION,
        });
        (0..self.n_hashes * (d + 2)).map(|i| s.gaussian_at(i as u64) as f32).collect()
    }

    /// SMYRF's clustering of `(b, h)` (spec §4.2 step 3): XBOX+ extends the unscaled f32 rows to
    /// `q̃ = [q, 0, √(M² − |q|²)]`, `k̃ = [k, √(M² − |k|²), 0]` with `M² = max|q|² + max|k|²`
    /// (so `|q̃ − k̃|² = 2M² − 2q·k`: near in this space means a large inner product); in round
    /// `r` each row hashes to `a_r·x̃` (E2LSH without quantisation; its offset `b_r` moves every
    /// hash alike and cannot change an order, so it is left out); queries and keys are sorted
    /// separately by `(hash, index)` and cut into `n_c = ⌈S_kv/c⌉` balanced clusters: query rank
    /// `ρ` goes to cluster `⌊ρ·n_c/S_q⌋`, key rank `ρ` to `⌊ρ·n_c/S_kv⌋` (clusters of `c` when
    /// `c` divides `S_kv`). One cluster (`c ≥ S_kv`) holds every key and needs no hashing.
    pub fn clusters(&self, p: &Problem, inputs: &Inputs, b: usize, h: usize) -> Clusters {
        let (nq, nk, d) = (p.s_q, p.s_kv, p.d);
        let rounds = self.n_hashes;
        let nc = self.clusters_for(nk);
        let k_start: Vec<usize> = (0..=nc).map(|u| (u * nk).div_ceil(nc)).collect();
        let q_start: Vec<usize> = (0..=nc).map(|u| (u * nq).div_ceil(nc)).collect();
        let mut q_cluster = vec![0u32; rounds * nq];
        let mut q_order: Vec<u32> = (0..rounds).flat_map(|_| 0..nq as u32).collect();
        let mut k_order: Vec<u32> = (0..rounds).flat_map(|_| 0..nk as u32).collect();
        if nc == 1 {
            return Clusters {
                rounds,
                clusters: nc,
                q_cluster,
                q_order,
                q_start,
                k_order,
                k_start,
            };
        }
        let hk = h / p.group();
        let dirs = self.hash_directions(d, h);
        let mut q = vec![0.0f32; nq * d];
        let mut k = vec![0.0f32; nk * d];
        for i in 0..nq {
            inputs.q.read_row(b, h, i, 1.0, &mut q[i * d..(i + 1) * d]);
        }
        for j in 0..nk {
            inputs.k.read_row(b, hk, j, 1.0, &mut k[j * d..(j + 1) * d]);
        }
        let qn: Vec<f32> = q.chunks_exact(d.max(1)).map(|x| dot_seq(x, x)).collect();
        let kn: Vec<f32> = k.chunks_exact(d.max(1)).map(|x| dot_seq(x, x)).collect();
        let m2 = qn.iter().copied().fold(0.0f32, f32::max) + kn.iter().copied().fold(0.0, f32::max);
        let ext = |n: f32| (m2 - n).max(0.0).sqrt();
        let mut hq = vec![0.0f32; nq];
        let mut hk_ = vec![0.0f32; nk];
        for r in 0..rounds {
            let a = &dirs[r * (d + 2)..(r + 1) * (d + 2)];
            for (i, x) in hq.iter_mut().enumerate() {
                *x = dot_seq(&a[..d], &q[i * d..(i + 1) * d]) + a[d + 1] * ext(qn[i]);
            }
            for (j, x) in hk_.iter_mut().enumerate() {
                *x = dot_seq(&a[..d], &k[j * d..(j + 1) * d]) + a[d] * ext(kn[j]);
            }
            let qo = &mut q_order[r * nq..(r + 1) * nq];
            qo.sort_unstable_by(|&x, &y| hq[x as usize].total_cmp(&hq[y as usize]).then(x.cmp(&y)));
            for (rank, &i) in qo.iter().enumerate() {
                q_cluster[r * nq + i as usize] = ((rank * nc) / nq) as u32;
            }
            let ko = &mut k_order[r * nk..(r + 1) * nk];
            ko.sort_unstable_by(|&x, &y| {
                hk_[x as usize].total_cmp(&hk_[y as usize]).then(x.cmp(&y))
            });
        }
        Clusters { rounds, clusters: nc, q_cluster, q_order, q_start, k_order, k_start }
    }

    /// The keys `[0, allowed)` query row `i` may see: all, or `j ≤ p_i` under the causal mask.
    pub fn allowed(&self, params: &Resolved, s_kv: usize, i: usize) -> usize {
        if matches!(params.mask, Mask::Causal) {
            (params.position(i) + 1).clamp(0, s_kv as i64) as usize
        } else {
            s_kv
        }
    }
}

/// `dst (n×k) = a (n×d) · bᵀ`, `b` row-major `k × d`, all row-major, on this thread (faer).
fn mm_bt<T: faer::traits::ComplexField>(dst: &mut [T], a: &[T], b: &[T], [n, d, k]: [usize; 3]) {
    let dst = MatMut::from_row_major_slice_mut(&mut dst[..n * k], n, k);
    let lhs = MatRef::from_row_major_slice(&a[..n * d], n, d);
    let rhs = MatRef::from_row_major_slice(&b[..k * d], k, d).transpose();
    matmul(dst, Accum::Replace, lhs, rhs, T::one_impl(), Par::Seq);
}

/// `dst (n×k) = a (n×d) · b (d×k)`, all row-major, on this thread (faer).
fn mm<T: faer::traits::ComplexField>(dst: &mut [T], a: &[T], b: &[T], [n, d, k]: [usize; 3]) {
    let dst = MatMut::from_row_major_slice_mut(&mut dst[..n * k], n, k);
    let lhs = MatRef::from_row_major_slice(&a[..n * d], n, d);
    let rhs = MatRef::from_row_major_slice(&b[..d * k], d, k);
    matmul(dst, Accum::Replace, lhs, rhs, T::one_impl(), Par::Seq);
}

/// `dst (d×k) += aᵀ · b`, `a` row-major `n × d`, `b` row-major `n × k`, on this thread (faer).
fn mm_at_add(dst: &mut [f64], a: &[f64], b: &[f64], [n, d, k]: [usize; 3]) {
    let dst = MatMut::from_row_major_slice_mut(&mut dst[..d * k], d, k);
    let lhs = MatRef::from_row_major_slice(&a[..n * d], n, d).transpose();
    let rhs = MatRef::from_row_major_slice(&b[..n * k], n, k);
    matmul(dst, Accum::Add, lhs, rhs, 1.0f64, Par::Seq);
}

/// `x ← e^{x − mx}` in place, `2^{(x − mx)·log₂e}` through [`Simd::exp2`] (`−∞` gives 0);
/// returns `Σ x`. Runs at level `S` (call from a [`Kernel`]).
#[inline(always)]
fn exp_shift<S: Simd>(x: &mut [f32], mx: f32) -> f32 {
    let (l, n, c) = (S::LANES, x.len(), std::f32::consts::LOG2_E);
    let mut i = 0;
    // SAFETY: the caller runs this at level S (`dispatch`); every pointer stays in `x`.
    let mut sum = unsafe {
        let (vc, vm, p) = (S::splat(c), S::splat(mx), x.as_mut_ptr());
        let mut vs = S::splat(0.0);
        while i + l <= n {
            let e = S::exp2(S::mul(S::sub(S::load(p.add(i)), vm), vc));
            S::store(p.add(i), e);
            vs = S::add(vs, e);
            i += l;
        }
        S::reduce_sum(vs)
    };
    for y in &mut x[i..] {
        *y = exp2_scalar((*y - mx) * c);
        sum += *y;
    }
    sum
}

/// The stabilised features of the `n` rows of `x` (`n × D`, already scaled by `√s`) through
/// ωᵀ (`D × m`): `out_i = exp(ω·x_i − max_r ω_r·x_i)` (`n × m`) and
/// `c_i = max_r ω_r·x_i − ½|x_i|²`, as `featurize` but one product for all rows.
#[inline(always)]
fn features<S: Simd>(omt: &[f32], m: usize, d: usize, x: &[f32], out: &mut [f32], c: &mut [f32]) {
    let n = c.len();
    if n == 0 || m == 0 {
        return;
    }
    mm(out, x, omt, [n, d, m]);
    for (i, ci) in c.iter_mut().enumerate() {
        let row = &mut out[i * m..(i + 1) * m];
        // SAFETY: the callers run inside a `Kernel` at a level the CPU has.
        let mx = unsafe { max_of::<S>(row) };
        exp_shift::<S>(row, mx);
        let xi = &x[i * d..(i + 1) * d];
        *ci = mx - 0.5 * dot_fixed(xi, xi);
    }
}

/// Hints the cache to fetch `x` (no effect on results; a no-op off x86-64).
#[inline(always)]
fn prefetch<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..std::mem::size_of_val(x)).step_by(64) {
        // SAFETY: a prefetch never faults and the address lies in `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                x.as_ptr().cast::<i8>().add(line),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Rows per block of the final low-rank read (and keys per block of the state).
const ROW_BLOCK: usize = 256;

/// The fast path of one `(b, h)` with the LSH support, as a SIMD kernel. Returns the exact
/// scores computed, `Σ_i |S_i|`.
///
/// Clusters are balanced: the `≈ c` queries of a cluster share its `c` keys in a round, so the
/// work runs by round and cluster as small dense products (faer, on this thread): the scores
/// `Q_u K_uᵀ` (f32), the support's low-rank weights `Φ_u Ψ_uᵀ` (f64), then `P_u V_u` (f32) and
/// `L_u [V_u | 1]` (f64). A pair met in `c_ij` rounds enters each of them with weight `1/c_ij`
/// (`z − ln c_ij` for the exact part, `ℓ/c_ij` for the low-rank one): the same sums as the set
/// `S_i` (spec §4.2 step 4). Per row, the exact part is a softmax merged over rounds by LSE into
/// `o`/`lse`; the support's low-rank terms are summed in f64 and subtracted at the end from the
/// f64 sums over every allowed key (README, "The subtraction"), all under one global key
/// log-scale. With `eps > 0` every stabilised feature gets `+eps/√m` (fly's `softmax_eps`).
pub(super) struct LshKernel<'a> {
    pub cfg: &'a Scatterbrain,
    pub fm: &'a FeatureMap,
    pub low_rank: bool,
    pub p: &'a Problem,
    pub inputs: &'a Inputs<'a>,
    pub params: &'a Resolved,
    pub b: usize,
    pub h: usize,
    pub o: &'a mut [f32],
    pub lse: &'a mut [f32],
}

impl Kernel for LshKernel<'_> {
    type Output = u64;

    #[inline(always)]
    fn run<S: Simd>(self) -> u64 {
        let LshKernel { cfg, fm, low_rank, p, inputs, params, b, h, o, lse } = self;
        let (nq, nk, d, dv) = (p.s_q, p.s_kv, p.d, p.d_v);
        let m = if low_rank { fm.m() } else { 0 };
        let hk = h / p.group();
        let rs = params.scale.sqrt();
        let ln_m = (m.max(1) as f32).ln();
        let eps = cfg.eps;
        let cl = cfg.clusters(p, inputs, b, h);
        let nr = cl.rounds;
        // Keys scaled by √s (q'·k' = s·q·k), values, key features f_j with log-scale c_j.
        let mut k = vec![0.0f32; nk * d];
        let mut v = vec![0.0f32; nk * dv];
        let mut f = vec![0.0f32; nk * m];
        let mut c = vec![0.0f32; nk];
        let omt = omega_t(fm, m);
        for j in 0..nk {
            inputs.k.read_row(b, hk, j, rs, &mut k[j * d..(j + 1) * d]);
            inputs.v.read_row(b, hk, j, 1.0, &mut v[j * dv..(j + 1) * dv]);
        }
        if low_rank {
            features::<S>(&omt, m, d, &k, &mut f, &mut c);
        }
        // One key log-scale for every sum, ck = max c_j, and the key features in f64
        // ψ_j = f_j·e^{c_j − ck} (+ eps/√m: fly's `softmax_eps`, README "eps").
        let ck = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let kg: Vec<f64> = c.iter().map(|&cj| ((cj - ck) as f64).exp()).collect();
        let eps = if eps > 0.0 { eps / (m.max(1) as f64).sqrt() } else { 0.0 };
        // Queries scaled by √s, their features φ̂_i (f32; in f64 φ̂_i + eps/√m) and log-scales
        // base_i = c_q,i − ln m + ck.
        let mut q = vec![0.0f32; nq * d];
        let mut base = vec![f32::NEG_INFINITY; nq];
        for i in 0..nq {
            inputs.q.read_row(b, h, i, rs, &mut q[i * d..(i + 1) * d]);
        }
        let mut qf = vec![0.0f32; nq * m];
        let qg = vec![1.0f64; if low_rank { nq } else { 0 }];
        if low_rank {
            let mut cq = vec![0.0f32; nq];
            features::<S>(&omt, m, d, &q, &mut qf, &mut cq);
            base.iter_mut().zip(&cq).for_each(|(b, &c)| *b = c - ln_m + ck);
        }
        // Rows `r0..r1` of f32 features `x` (`· × m`) in f64: `x·g_r + eps`.
        let widen = |dst: &mut [f64], x: &[f32], g: &[f64], r0: usize, r1: usize| {
            for (r, y) in (r0..r1).zip(dst.chunks_exact_mut(m.max(1))) {
                let gr = g[r];
                y.iter_mut()
                    .zip(&x[r * m..(r + 1) * m])
                    .for_each(|(y, &x)| *y = x as f64 * gr + eps);
            }
        };
        // Token-major cluster tables for c_ij: key j's cluster and query i's in every round.
        let mut kc = vec![0u32; nk * nr];
        let mut qc = vec![0u32; nq * nr];
        for r in 0..nr {
            for u in 0..cl.clusters {
                cl.keys(r, u).iter().for_each(|&j| kc[j as usize * nr + r] = u as u32);
            }
            for i in 0..nq {
                qc[i * nr + r] = cl.q_cluster[r * nq + i];
            }
        }
        let ln_count: Vec<f32> = (0..=nr).map(|x| (x.max(1) as f32).ln()).collect();
        // Per row: the support's low-rank sums Σ ψ·φ/c_ij (v_j, 1) in f64, and |S_i|.
        let dv1 = dv + 1;
        let mut sub = vec![0.0f64; if low_rank { nq * dv1 } else { 0 }];
        let mut count = vec![0u32; nq];
        o.fill(0.0);
        lse.fill(f32::NEG_INFINITY);
        let cmax = cl.k_start.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let qmax = cl.q_start.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        // The cluster's tiles, gathered once per round and cluster.
        let mut kb = vec![0.0f32; cmax * d]; // keys, c × D
        let mut vb = vec![0.0f32; cmax * dv]; // values, c × D_v
        let mut ct = vec![0u32; cmax * nr]; // the keys' cluster in every round
        let mut qb = vec![0.0f32; qmax * d]; // queries, n_u × D
        let mut sb = vec![0.0f32; qmax * cmax]; // scores, then weights, n_u × c
        let mut pv = vec![0.0f32; qmax * dv]; // exact numerators, n_u × D_v
        let mut zrow = vec![(f32::NEG_INFINITY, 0.0f32); qmax]; // (max, den) per row
        let lr = |n: usize| if low_rank { n } else { 0 };
        let mut vb1 = vec![0.0f64; lr(cmax * dv1)]; // [v | 1] in f64, c × (D_v + 1)
        let mut psib = vec![0.0f64; lr(cmax * m)]; // ψ, c × m
        let mut phib = vec![0.0f64; lr(qmax * m)]; // φ, n_u × m
        let mut lb = vec![0.0f64; lr(qmax * cmax)]; // low-rank weights, n_u × c
        let mut subb = vec![0.0f64; lr(qmax * dv1)]; // their sums, n_u × (D_v + 1)
        let mut pairs = 0u64;
        for r in 0..nr {
            for u in 0..cl.clusters {
                let keys = cl.keys(r, u);
                let rows = cl.queries(r, u);
                let (w, n) = (keys.len(), rows.len());
                if w == 0 || n == 0 {
                    continue;
                }
                // The next cluster's rows are scattered over the head: ask for them now.
                if u + 1 < cl.clusters {
                    for &j in cl.keys(r, u + 1) {
                        let j = j as usize;
                        prefetch(&k[j * d..(j + 1) * d]);
                        prefetch(&v[j * dv..(j + 1) * dv]);
                        prefetch(&f[j * m..(j + 1) * m]);
                    }
                    for &i in cl.queries(r, u + 1) {
                        let i = i as usize;
                        prefetch(&q[i * d..(i + 1) * d]);
                        prefetch(&qf[i * m..(i + 1) * m]);
                        prefetch(&o[i * dv..(i + 1) * dv]);
                        if low_rank {
                            prefetch(&sub[i * dv1..(i + 1) * dv1]);
                        }
                    }
                }
                for (t, &j) in keys.iter().enumerate() {
                    let j = j as usize;
                    kb[t * d..(t + 1) * d].copy_from_slice(&k[j * d..(j + 1) * d]);
                    vb[t * dv..(t + 1) * dv].copy_from_slice(&v[j * dv..(j + 1) * dv]);
                    ct[t * nr..(t + 1) * nr].copy_from_slice(&kc[j * nr..(j + 1) * nr]);
                    if low_rank {
                        let vr = &mut vb1[t * dv1..(t + 1) * dv1];
                        vr[..dv].iter_mut().zip(&v[j * dv..(j + 1) * dv]).for_each(|(y, &x)| {
                            *y = x as f64;
                        });
                        vr[dv] = 1.0;
                        widen(&mut psib[t * m..(t + 1) * m], &f, &kg, j, j + 1);
                    }
                }
                for (a, &i) in rows.iter().enumerate() {
                    let i = i as usize;
                    qb[a * d..(a + 1) * d].copy_from_slice(&q[i * d..(i + 1) * d]);
                    if low_rank {
                        widen(&mut phib[a * m..(a + 1) * m], &qf, &qg, i, i + 1);
                    }
                }
                mm_bt(&mut sb, &qb, &kb, [n, d, w]);
                if low_rank {
                    mm_bt(&mut lb, &phib, &psib, [n, m, w]);
                }
                // Per row: the mask, the round weights 1/c_ij, then the softmax weights.
                for (a, &i) in rows.iter().enumerate() {
                    let i = i as usize;
                    let allowed = cfg.allowed(params, nk, i);
                    let qci = &qc[i * nr..(i + 1) * nr];
                    let sr = &mut sb[a * w..(a + 1) * w];
                    let lrow: &mut [f64] =
                        if low_rank { &mut lb[a * w..(a + 1) * w] } else { &mut [] };
                    let mut zmax = f32::NEG_INFINITY;
                    for (t, &j) in keys.iter().enumerate() {
                        if j as usize >= allowed {
                            sr[t] = f32::NEG_INFINITY;
                            if low_rank {
                                lrow[t] = 0.0;
                            }
                            continue;
                        }
                        if nr > 1 {
                            // c_ij: the rounds in which i and j share a cluster (this one
                            // among them); the pair is new here when no earlier round had it.
                            let ctj = &ct[t * nr..(t + 1) * nr];
                            let cij = qci.iter().zip(ctj).filter(|(a, b)| a == b).count();
                            if qci[..r].iter().zip(&ctj[..r]).all(|(a, b)| a != b) {
                                count[i] += 1;
                            }
                            if cij > 1 {
                                sr[t] -= ln_count[cij];
                                if low_rank {
                                    lrow[t] /= cij as f64;
                                }
                            }
                        } else {
                            count[i] += 1;
                        }
                        zmax = zmax.max(sr[t]);
                    }
                    let den = if zmax > f32::NEG_INFINITY {
                        exp_shift::<S>(sr, zmax)
                    } else {
                        sr.fill(0.0);
                        0.0
                    };
                    zrow[a] = (zmax, den);
                }
                mm(&mut pv, &sb, &vb, [n, w, dv]);
                if low_rank {
                    mm(&mut subb, &lb, &vb1, [n, w, dv1]);
                }
                for (a, &i) in rows.iter().enumerate() {
                    let i = i as usize;
                    let (zmax, den) = zrow[a];
                    if zmax == f32::NEG_INFINITY {
                        continue;
                    }
                    // Exact part of this round: a softmax over the cluster, merged by LSE.
                    let (wa, wb, merged) = merge_weights(lse[i], zmax + den.ln());
                    let wb = wb / den;
                    o[i * dv..(i + 1) * dv]
                        .iter_mut()
                        .zip(&pv[a * dv..(a + 1) * dv])
                        .for_each(|(x, a)| *x = wa * *x + wb * a);
                    lse[i] = merged;
                    if low_rank {
                        sub[i * dv1..(i + 1) * dv1]
                            .iter_mut()
                            .zip(&subb[a * dv1..(a + 1) * dv1])
                            .for_each(|(x, y)| *x += y);
                    }
                }
            }
        }
        pairs += count.iter().map(|&x| x as u64).sum::<u64>();
        if !low_rank {
            return pairs;
        }
        // The low-rank part over the allowed keys off the support: the f64 sums over all of
        // them (the total, or the running prefix under the causal mask) minus the support's.
        let causal = matches!(params.mask, Mask::Causal);
        let mut state = vec![0.0f64; m * dv1]; // Σ ψ_jᵀ [v_j | 1], m × (D_v + 1)
        let mut nums = vec![0.0f64; ROW_BLOCK * dv1];
        let mut vblk = vec![0.0f64; ROW_BLOCK * dv1];
        let mut fblk = vec![0.0f64; ROW_BLOCK * m];
        let mut added = 0usize;
        let fill_v = |vblk: &mut [f64], j0: usize, j1: usize| {
            for j in j0..j1 {
                let vr = &mut vblk[(j - j0) * dv1..(j - j0 + 1) * dv1];
                vr[..dv].iter_mut().zip(&v[j * dv..(j + 1) * dv]).for_each(|(y, &x)| {
                    *y = x as f64;
                });
                vr[dv] = 1.0;
            }
        };
        if !causal {
            // Every row sees every key: the state over all keys, in blocks.
            let mut j0 = 0;
            while j0 < nk {
                let j1 = (j0 + ROW_BLOCK).min(nk);
                fill_v(&mut vblk, j0, j1);
                widen(&mut fblk, &f, &kg, j0, j1);
                mm_at_add(&mut state, &fblk, &vblk, [j1 - j0, m, dv1]);
                j0 = j1;
            }
            added = nk;
        }
        let mut i0 = 0;
        while i0 < nq {
            let i1 = (i0 + ROW_BLOCK).min(nq);
            if !causal {
                widen(&mut fblk, &qf, &qg, i0, i1);
                mm(&mut nums, &fblk, &state, [i1 - i0, m, dv1]);
            }
            for i in i0..i1 {
                let allowed = cfg.allowed(params, nk, i);
                if count[i] as usize >= allowed {
                    continue;
                }
                let num = &mut nums[(i - i0) * dv1..(i - i0 + 1) * dv1];
                if causal {
                    // The running prefix over the keys j < allowed.
                    while added < allowed {
                        let j1 = (added + ROW_BLOCK).min(allowed);
                        fill_v(&mut vblk, added, j1);
                        widen(&mut fblk, &f, &kg, added, j1);
                        mm_at_add(&mut state, &fblk, &vblk, [j1 - added, m, dv1]);
                        added = j1;
                    }
                    num.fill(0.0);
                    widen(&mut fblk[..m], &qf, &qg, i, i + 1);
                    for (rr, &ph) in fblk[..m].iter().enumerate() {
                        let srow = &state[rr * dv1..(rr + 1) * dv1];
                        num.iter_mut().zip(srow).for_each(|(a, s)| *a += ph * s);
                    }
                }
                let si = &sub[i * dv1..(i + 1) * dv1];
                let den_lr = num[dv] - si[dv];
                // A sum of positive terms: a non-positive residue is rounding (~1e-16 of the
                // total).
                if den_lr <= 0.0 {
                    continue;
                }
                num[..dv].iter_mut().zip(&si[..dv]).for_each(|(a, s)| *a -= s);
                let orow = &mut o[i * dv..(i + 1) * dv];
                let lambda = lse[i].max(base[i]);
                let ge = ((lse[i] - lambda) as f64).exp();
                let gl = ((base[i] - lambda) as f64).exp();
                let den = ge + gl * den_lr;
                if den > 0.0 && den.is_finite() {
                    let inv = 1.0 / den;
                    orow.iter_mut()
                        .zip(&num[..dv])
                        .for_each(|(x, a)| *x = ((ge * *x as f64 + gl * a) * inv) as f32);
                    lse[i] = lambda + den.ln() as f32;
                }
            }
            i0 = i1;
        }
        pairs
    }
}
