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
use crate::methods::pattern::dot_fixed;
use crate::methods::performer::FeatureMap;
use crate::params::Resolved;
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
    /// `R × S_kv`: round `r`'s keys sorted by `(hash, index)`.
    pub k_order: Vec<u32>,
    /// `clusters + 1` rank boundaries of the key clusters.
    pub k_start: Vec<usize>,
}

impl Clusters {
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
        let mut q_cluster = vec![0u32; rounds * nq];
        let mut k_order: Vec<u32> = (0..rounds).flat_map(|_| 0..nk as u32).collect();
        if nc == 1 {
            return Clusters { rounds, clusters: nc, q_cluster, k_order, k_start };
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
        let mut qorder: Vec<u32> = Vec::with_capacity(nq);
        for r in 0..rounds {
            let a = &dirs[r * (d + 2)..(r + 1) * (d + 2)];
            for (i, x) in hq.iter_mut().enumerate() {
                *x = dot_seq(&a[..d], &q[i * d..(i + 1) * d]) + a[d + 1] * ext(qn[i]);
            }
            for (j, x) in hk_.iter_mut().enumerate() {
                *x = dot_seq(&a[..d], &k[j * d..(j + 1) * d]) + a[d] * ext(kn[j]);
            }
            qorder.clear();
            qorder.extend(0..nq as u32);
            qorder.sort_unstable_by(|&x, &y| {
                hq[x as usize].total_cmp(&hq[y as usize]).then(x.cmp(&y))
            });
            for (rank, &i) in qorder.iter().enumerate() {
                q_cluster[r * nq + i as usize] = ((rank * nc) / nq) as u32;
            }
            let ko = &mut k_order[r * nk..(r + 1) * nk];
            ko.sort_unstable_by(|&x, &y| {
                hk_[x as usize].total_cmp(&hk_[y as usize]).then(x.cmp(&y))
            });
        }
        Clusters { rounds, clusters: nc, q_cluster, k_order, k_start }
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

/// A Performer sum over keys (`Σ_j φ(k_j) v_jᵀ`, `Σ_j φ(k_j)`) in f64 under a running key
/// log-scale `ck` (the largest `c_j` added): `state_r = Σ_j f_jr e^{c_j − ck} v_j`.
struct LowRank64 {
    state: Vec<f64>,
    z: Vec<f64>,
    ck: f32,
}

impl LowRank64 {
    fn new(m: usize, dv: usize) -> Self {
        Self { state: vec![0.0; m * dv], z: vec![0.0; m], ck: f32::NEG_INFINITY }
    }

    #[inline(always)]
    fn add(&mut self, fj: &[f32], cj: f32, vj: &[f32]) {
        let dv = vj.len();
        if cj > self.ck {
            let r = if self.ck == f32::NEG_INFINITY { 0.0 } else { ((self.ck - cj) as f64).exp() };
            self.state.iter_mut().for_each(|s| *s *= r);
            self.z.iter_mut().for_each(|s| *s *= r);
            self.ck = cj;
        }
        let g = ((cj - self.ck) as f64).exp();
        for (r, &fr) in fj.iter().enumerate() {
            let a = fr as f64 * g;
            self.z[r] += a;
            let row = &mut self.state[r * dv..(r + 1) * dv];
            row.iter_mut().zip(vj).for_each(|(s, &x)| *s += a * x as f64);
        }
    }

    /// `den = φ̂·z` and `num = Σ_r φ̂_r state_r`: the terms are `e^{base + ck}·(num, den)`.
    #[inline(always)]
    fn read(&self, phi: &[f32], num: &mut [f64]) -> f64 {
        let dv = num.len();
        num.fill(0.0);
        let mut den = 0.0f64;
        for (r, &ph) in phi.iter().enumerate() {
            let ph = ph as f64;
            den += ph * self.z[r];
            let row = &self.state[r * dv..(r + 1) * dv];
            num.iter_mut().zip(row).for_each(|(a, s)| *a += ph * s);
        }
        den
    }
}

/// `Σ_r a_r b_r` of two f32 feature rows in f64 (each product of two f32 is exact in f64).
#[inline(always)]
fn dot64(a: &[f32], b: &[f32]) -> f64 {
    let mut s = [0.0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 =
        ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| *x as f64 * *y as f64).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..4 {
            s[l] += x[l] as f64 * y[l] as f64;
        }
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}

/// The fast path of one `(b, h)` with the LSH support, as a SIMD kernel. Returns the exact
/// scores computed, `Σ_i |S_i|`.
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
        let causal = matches!(params.mask, Mask::Causal);
        let cl = cfg.clusters(p, inputs, b, h);
        // Keys scaled by √s (q'·k' = s·q·k), values, key features f_jr with their log-scale c_j.
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
        let mut state = LowRank64::new(m, dv);
        let mut added = 0usize;
        if low_rank && !causal {
            for j in 0..nk {
                state.add(&f[j * m..(j + 1) * m], c[j], &v[j * dv..(j + 1) * dv]);
            }
            added = nk;
        }
        let mut qi = vec![0.0f32; d];
        let mut phi = vec![0.0f32; m];
        let mut seen = vec![false; nk];
        let mut sup: Vec<u32> = Vec::with_capacity(cl.rounds * cfg.cluster.min(nk));
        let mut sc: Vec<f32> = Vec::with_capacity(sup.capacity());
        let mut num_lr = vec![0.0f64; dv];
        let mut num = vec![0.0f64; dv];
        let mut pairs = 0u64;
        for i in 0..nq {
            let allowed = cfg.allowed(params, nk, i);
            cl.support(i, allowed, &mut seen, &mut sup);
            pairs += sup.len() as u64;
            inputs.q.read_row(b, h, i, rs, &mut qi);
            sc.clear();
            let mut zmax = f32::NEG_INFINITY;
            for &j in &sup {
                let j = j as usize;
                let z = dot_fixed(&qi, &k[j * d..(j + 1) * d]);
                zmax = zmax.max(z);
                sc.push(z);
            }
            // The low-rank part over the allowed keys off the support: all of them minus the
            // support's terms, in f64 (README: the subtraction in f32 loses digits).
            let mut log_lr = f32::NEG_INFINITY;
            let mut den_lr = 0.0f64;
            if low_rank && sup.len() < allowed {
                while added < allowed {
                    let j = added;
                    state.add(&f[j * m..(j + 1) * m], c[j], &v[j * dv..(j + 1) * dv]);
                    added += 1;
                }
                let cq = featurize(&omt, m, &qi, &mut phi);
                log_lr = cq - ln_m + state.ck;
                den_lr = state.read(&phi, &mut num_lr);
                for &j in &sup {
                    let j = j as usize;
                    let l = dot64(&phi, &f[j * m..(j + 1) * m]) * ((c[j] - state.ck) as f64).exp();
                    den_lr -= l;
                    let vj = &v[j * dv..(j + 1) * dv];
                    num_lr.iter_mut().zip(vj).for_each(|(a, &x)| *a -= l * x as f64);
                }
                // A sum of positive terms: a negative residue is rounding (f64, ~1e-16 of the
                // total).
                if den_lr <= 0.0 {
                    (log_lr, den_lr) = (f32::NEG_INFINITY, 0.0);
                }
            }
            let lambda = zmax.max(log_lr);
            let orow = &mut o[i * dv..(i + 1) * dv];
            if lambda == f32::NEG_INFINITY {
                orow.fill(0.0);
                lse[i] = f32::NEG_INFINITY;
                continue;
            }
            let mut den = 0.0f64;
            num.fill(0.0);
            if log_lr > f32::NEG_INFINITY {
                let g = ((log_lr - lambda) as f64).exp();
                den += g * den_lr;
                num.iter_mut().zip(&num_lr).for_each(|(a, x)| *a = g * x);
            }
            for (&z, &j) in sc.iter().zip(&sup) {
                let j = j as usize;
                let e = ((z - lambda) as f64).exp();
                den += e;
                let vj = &v[j * dv..(j + 1) * dv];
                num.iter_mut().zip(vj).for_each(|(a, &x)| *a += e * x as f64);
            }
            if den > 0.0 && den.is_finite() {
                let inv = 1.0 / den;
                orow.iter_mut().zip(&num).for_each(|(x, a)| *x = (a * inv) as f32);
                lse[i] = lambda + den.ln() as f32;
            } else {
                orow.fill(0.0);
                lse[i] = f32::NEG_INFINITY;
            }
        }
        pairs
    }
}
