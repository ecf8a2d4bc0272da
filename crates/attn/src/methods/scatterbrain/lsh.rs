//! The LSH sparse part of `scatterbrain` (`sparse=lsh`): SMYRF's asymmetric clustering and the
//! fast path on its support (README, "The LSH support").
//!
//! - [`Scatterbrain::clusters`]: the hashing and the balanced clusters of one `(batch, query
//!   head)`, shared by both implementations (f32, fixed summation order), so both see the same
//!   support bit for bit.
//! - [`LshKernel`]: the fast path of one head: exact scores on the support, the Performer sums
//!   over every allowed key minus their terms on the support, accumulated in f64 so the
//!   subtraction does not cancel digits.

use super::{featurize, omega_t, Scatterbrain};
use crate::dispatch::Inputs;
use crate::mask::Mask;
use crate::methods::performer::FeatureMap;
use crate::params::Resolved;
use crate::primitives::merge::merge_weights;
use crate::primitives::rng::{purpose, Key, Stream};
use crate::primitives::simd::{Kernel, Simd};
use crate::problem::Problem;

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

/// The fast path of one `(b, h)` with the LSH support, as a SIMD kernel. Returns the exact
/// scores computed, `Σ_i |S_i|`.
///
/// Queries of one cluster share its keys, so the work runs by round and cluster: the cluster's
/// keys, features and values are gathered once into tiles, and each of its queries scores them.
/// A pair met in `c_ij` rounds enters each of them with weight `1/c_ij` (`z − ln c_ij` for the
/// exact part, `ℓ/c_ij` for the low-rank one): the same sums as the set `S_i` (spec §4.2 step
/// 4). Per row, the exact part is a softmax merged over rounds by LSE into `o`/`lse`; the
/// support's low-rank terms are summed in f64 and subtracted at the end from the f64 sums over
/// every allowed key (README, "The subtraction"), all under one global key log-scale.
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
            if low_rank {
                c[j] = featurize(&omt, m, &k[j * d..(j + 1) * d], &mut f[j * m..(j + 1) * m]);
            }
        }
        // One key log-scale for every sum: ψ_j = f_j·e^{c_j − ck} in f64.
        let ck = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let g: Vec<f64> = c.iter().map(|&cj| ((cj - ck) as f64).exp()).collect();
        // Queries scaled by √s, their features φ̂ and log-scales base_i = c_q,i − ln m + ck.
        let mut q = vec![0.0f32; nq * d];
        let mut phi = vec![0.0f32; nq * m];
        let mut base = vec![f32::NEG_INFINITY; nq];
        for i in 0..nq {
            let qi = &mut q[i * d..(i + 1) * d];
            inputs.q.read_row(b, h, i, rs, qi);
            if low_rank {
                base[i] = featurize(&omt, m, qi, &mut phi[i * m..(i + 1) * m]) - ln_m + ck;
            }
        }
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
        // Per row: the support's low-rank sums Σ ψ·φ̂/c_ij (v_j, 1) in f64, and |S_i|.
        let mut sub = vec![0.0f64; if low_rank { nq * (dv + 1) } else { 0 }];
        let mut count = vec![0u32; nq];
        o.fill(0.0);
        lse.fill(f32::NEG_INFINITY);
        let cmax = cl.k_start.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        // The cluster's tiles, column t = its t-th key: keys (D × c) and ψ (m × c) transposed,
        // so one row's scores and low-rank weights are column-wise multiply-adds over D (m)
        // rows (no reduction per pair; each column sums in the order of e, the same bits at
        // every SIMD width).
        let mut kt = vec![0.0f32; d * cmax];
        let mut vt = vec![0.0f32; cmax * dv]; // their values, c × D_v
        let mut ft = vec![0.0f64; m * cmax];
        let mut ct = vec![0u32; cmax * nr]; // their cluster in every round
        let mut sc = vec![0.0f32; cmax]; // one row's scores, then weights
        let mut lw = vec![0.0f64; cmax]; // one row's low-rank weights
        let mut acc = vec![0.0f32; dv];
        let mut pairs = 0u64;
        for r in 0..nr {
            for u in 0..cl.clusters {
                let keys = cl.keys(r, u);
                let w = keys.len();
                for (t, &j) in keys.iter().enumerate() {
                    let j = j as usize;
                    for (e, &x) in k[j * d..(j + 1) * d].iter().enumerate() {
                        kt[e * cmax + t] = x;
                    }
                    vt[t * dv..(t + 1) * dv].copy_from_slice(&v[j * dv..(j + 1) * dv]);
                    ct[t * nr..(t + 1) * nr].copy_from_slice(&kc[j * nr..(j + 1) * nr]);
                    for (rr, &x) in f[j * m..(j + 1) * m].iter().enumerate() {
                        ft[rr * cmax + t] = x as f64 * g[j];
                    }
                }
                for &i in cl.queries(r, u) {
                    let i = i as usize;
                    let allowed = cfg.allowed(params, nk, i);
                    let qci = &qc[i * nr..(i + 1) * nr];
                    let sc = &mut sc[..w];
                    sc.fill(0.0);
                    for (e, &x) in q[i * d..(i + 1) * d].iter().enumerate() {
                        let row = &kt[e * cmax..e * cmax + w];
                        sc.iter_mut().zip(row).for_each(|(s, &y)| *s += x * y);
                    }
                    let lw = &mut lw[..w];
                    if low_rank {
                        lw.fill(0.0);
                        for (rr, &x) in phi[i * m..(i + 1) * m].iter().enumerate() {
                            let x = x as f64;
                            let row = &ft[rr * cmax..rr * cmax + w];
                            lw.iter_mut().zip(row).for_each(|(s, &y)| *s += x * y);
                        }
                    }
                    let mut zmax = f32::NEG_INFINITY;
                    let mut any = false;
                    for (t, &j) in keys.iter().enumerate() {
                        if j as usize >= allowed {
                            sc[t] = f32::NEG_INFINITY;
                            lw[t] = 0.0;
                            continue;
                        }
                        any = true;
                        if nr > 1 {
                            // c_ij: the rounds in which i and j share a cluster (this one
                            // among them); the pair is new here when no earlier round had it.
                            let ctj = &ct[t * nr..(t + 1) * nr];
                            let cij = qci.iter().zip(ctj).filter(|(a, b)| a == b).count();
                            if qci[..r].iter().zip(&ctj[..r]).all(|(a, b)| a != b) {
                                count[i] += 1;
                            }
                            sc[t] -= ln_count[cij];
                            lw[t] /= cij as f64;
                        } else {
                            count[i] += 1;
                        }
                        zmax = zmax.max(sc[t]);
                    }
                    if !any {
                        continue;
                    }
                    // Exact part of this round: a softmax over the cluster, merged by LSE.
                    let mut den = 0.0f32;
                    acc.fill(0.0);
                    for (t, s) in sc.iter_mut().enumerate() {
                        if *s == f32::NEG_INFINITY {
                            continue;
                        }
                        let e = (*s - zmax).exp();
                        den += e;
                        let vr = &vt[t * dv..(t + 1) * dv];
                        acc.iter_mut().zip(vr).for_each(|(a, &x)| *a += e * x);
                    }
                    let (wa, wb, merged) = merge_weights(lse[i], zmax + den.ln());
                    let wb = wb / den;
                    o[i * dv..(i + 1) * dv]
                        .iter_mut()
                        .zip(&acc)
                        .for_each(|(x, a)| *x = wa * *x + wb * a);
                    lse[i] = merged;
                    if low_rank {
                        let si = &mut sub[i * (dv + 1)..(i + 1) * (dv + 1)];
                        for (t, &l) in lw.iter().enumerate() {
                            if l != 0.0 {
                                let vr = &vt[t * dv..(t + 1) * dv];
                                si[..dv].iter_mut().zip(vr).for_each(|(a, &x)| *a += l * x as f64);
                                si[dv] += l;
                            }
                        }
                    }
                }
            }
        }
        // The low-rank part over the allowed keys off the support: the f64 sums over all of
        // them (the total, or the running prefix under the causal mask) minus the support's.
        let mut state = vec![0.0f64; m * dv];
        let mut zs = vec![0.0f64; m];
        let mut added = 0usize;
        let mut num = vec![0.0f64; dv];
        for i in 0..nq {
            pairs += count[i] as u64;
            let allowed = cfg.allowed(params, nk, i);
            if !low_rank || count[i] as usize >= allowed {
                continue;
            }
            while added < allowed {
                let j = added;
                let vj = &v[j * dv..(j + 1) * dv];
                for (rr, &fr) in f[j * m..(j + 1) * m].iter().enumerate() {
                    let a = fr as f64 * g[j];
                    zs[rr] += a;
                    let row = &mut state[rr * dv..(rr + 1) * dv];
                    row.iter_mut().zip(vj).for_each(|(s, &x)| *s += a * x as f64);
                }
                added += 1;
            }
            num.fill(0.0);
            let mut den_lr = 0.0f64;
            for (rr, &ph) in phi[i * m..(i + 1) * m].iter().enumerate() {
                let ph = ph as f64;
                den_lr += ph * zs[rr];
                let row = &state[rr * dv..(rr + 1) * dv];
                num.iter_mut().zip(row).for_each(|(a, s)| *a += ph * s);
            }
            let si = &sub[i * (dv + 1)..(i + 1) * (dv + 1)];
            den_lr -= si[dv];
            // A sum of positive terms: a non-positive residue is rounding (~1e-16 of the total).
            if den_lr <= 0.0 {
                continue;
            }
            num.iter_mut().zip(&si[..dv]).for_each(|(a, s)| *a -= s);
            let orow = &mut o[i * dv..(i + 1) * dv];
            let lambda = lse[i].max(base[i]);
            let ge = ((lse[i] - lambda) as f64).exp();
            let gl = ((base[i] - lambda) as f64).exp();
            let den = ge + gl * den_lr;
            if den > 0.0 && den.is_finite() {
                let inv = 1.0 / den;
                orow.iter_mut()
                    .zip(&num)
                    .for_each(|(x, a)| *x = ((ge * *x as f64 + gl * a) * inv) as f32);
                lse[i] = lambda + den.ln() as f32;
            }
        }
        pairs
    }
}
