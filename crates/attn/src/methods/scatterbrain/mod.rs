//! Scatterbrain (spec §4): a local-window sparse part where attention is exact, plus the
//! Performer low-rank estimate everywhere else, with the correction that *replaces* the estimate
//! on the sparse support; see `README.md` in this folder.
//!
//! - [`Scatterbrain::window`]: the support of a row (shared by both implementations).
//! - [`reference`](mod@reference): the implied matrix `Ã` (`e^{z_ij}` on the support, the
//!   Performer estimate `φ(q_i)·φ(k_j)` off it) materialised pair by pair in f64, row-normalised.
//! - fast path ([`Scatterbrain`] under [`crate::methods::pattern::Fast`]): the Performer prefix
//!   state (`Σ φ(k_j) v_jᵀ`, `Σ φ(k_j)`) for the low-rank part, then per query the window's exact
//!   terms minus its low-rank terms, all under one per-row reference exponent; heads in parallel.

mod lsh;
pub mod reference;

pub use lsh::Clusters;

use crate::dispatch::{parse_param, Inputs, OutputMut, ParamInfo, Reason, Stats};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskKind};
use crate::methods::pattern::{dot_fixed, for_each_head, positive, unknown, Exec, SparseConfig};
use crate::methods::performer::{FeatureMap, Performer, MAX_EPS};
use crate::par::Par;
use crate::params::{Params, Resolved};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};
use crate::problem::Problem;
use std::sync::Arc;

/// The sparse support of `scatterbrain`: where attention is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparse {
    /// The local window of [`Scatterbrain::window`] keys (fly's `sblocal`).
    Local,
    /// SMYRF's asymmetric LSH clusters: [`Scatterbrain::n_hashes`] rounds of balanced clusters
    /// of [`Scatterbrain::cluster`] keys (fly's `sbsmyrf`).
    Lsh,
}

/// `scatterbrain`: exact attention on a sparse support (a local window of `window` keys, or
/// `n_hashes` rounds of LSH clusters of `cluster` keys), Performer with `features` random
/// features elsewhere.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scatterbrain {
    /// The sparse support: local window or LSH clusters.
    pub sparse: Sparse,
    /// Local window `w`: row `i` is exact on keys `p_i − ⌊w/2⌋ ≤ j < p_i + ⌈w/2⌉` (0: none).
    pub window: usize,
    /// LSH hash rounds `R` (`sparse=lsh`).
    pub n_hashes: usize,
    /// LSH cluster size `c` (`sparse=lsh`): `⌈S_kv/c⌉` balanced clusters per round.
    pub cluster: usize,
    /// The low-rank part; false leaves the sparse part alone (softmax over the support).
    pub low_rank: bool,
    /// Random features `m`; 0 means `⌊D ln D⌋`.
    pub features: usize,
    /// Orthogonal features (FAVOR+) or i.i.d. rows.
    pub orthogonal: bool,
    /// Seed of the projection (the same feature map as `performer` with this seed).
    pub seed: u64,
    /// fly's `softmax_eps`, `0 ≤ ε ≤` [`MAX_EPS`] (`sparse=lsh` only): `ε/√m` is added to every
    /// stabilised feature, as fly's `SBPerformerFeatures` does; 0 = FAVOR+ (unbiased).
    pub eps: f64,
}

/// The key ranges of one row: the exact support and the allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowSupport {
    /// Keys `lo..hi` are exact (empty when `lo ≥ hi`).
    pub lo: usize,
    /// End of the exact range.
    pub hi: usize,
    /// Keys `0..allowed` are allowed by the mask.
    pub allowed: usize,
}

impl RowSupport {
    /// True when the window covers every allowed key (no low-rank term is needed).
    pub fn full(&self) -> bool {
        self.allowed == 0 || (self.lo == 0 && self.hi >= self.allowed)
    }

    /// The exact range (empty range when `lo ≥ hi`).
    pub fn exact(&self) -> std::ops::Range<usize> {
        self.lo..self.hi.max(self.lo)
    }
}

impl Scatterbrain {
    /// fly's local variant in its LRA configuration (spec §4.3): window 64, 32 orthogonal
    /// features, seed 0.
    /// The LSH options are fly's LRA ones (2 rounds, clusters of 32: the 64 keys per query of the
    /// window).
    pub const DEFAULT: Scatterbrain = Scatterbrain {
        sparse: Sparse::Local,
        window: 64,
        n_hashes: 2,
        cluster: 32,
        low_rank: true,
        features: 32,
        orthogonal: true,
        seed: 0,
        eps: 0.0,
    };

    /// The Performer whose feature map the low-rank part uses.
    pub fn performer(&self) -> Performer {
        Performer { features: self.features, orthogonal: self.orthogonal, seed: self.seed }
    }

    /// The support of query row `i`: the window `[p_i − ⌊w/2⌋, p_i + ⌈w/2⌉)` and the allowed
    /// keys `[0, S_kv)` (no mask) or `[0, p_i]` (causal), both clipped to `[0, S_kv)`; the
    /// window is intersected with the allowed set.
    pub fn window(&self, params: &Resolved, s_kv: usize, i: usize) -> RowSupport {
        let p = params.position(i);
        let allowed = if matches!(params.mask, Mask::Causal) {
            (p + 1).clamp(0, s_kv as i64) as usize
        } else {
            s_kv
        };
        let w = self.window as i64;
        let lo = (p - w / 2).clamp(0, allowed as i64) as usize;
        let hi = (p + (w - w / 2)).clamp(0, allowed as i64) as usize;
        RowSupport { lo, hi, allowed }
    }

    /// True when some row may need the low-rank part: with `low_rank`, a local window that
    /// misses an allowed key of some row, or more than one LSH cluster.
    pub fn needs_low_rank(&self, p: &Problem, params: &Resolved) -> bool {
        self.low_rank
            && match self.sparse {
                Sparse::Local => (0..p.s_q).any(|i| !self.window(params, p.s_kv, i).full()),
                Sparse::Lsh => p.s_kv > 0 && self.clusters_for(p.s_kv) > 1,
            }
    }

    /// The featurisation `(S_q + S_kv)·m` per (batch, query head) as Performer counts it (one
    /// `D`-long dot product per feature of a row), when some row needs the low-rank part.
    fn feature_pairs(&self, p: &Problem, params: &Resolved) -> u64 {
        if self.needs_low_rank(p, params) {
            ((p.s_q + p.s_kv) * self.performer().features_for(p.d) * p.b * p.h) as u64
        } else {
            0
        }
    }

    /// Pairs reported per call with the local window: the exact scores `Σ_i |S_i|` per (batch,
    /// query head), plus the featurisation when some row needs the low-rank part. (With LSH the
    /// support depends on the inputs; the implementations count it as they go.)
    pub fn pairs(&self, p: &Problem, params: &Resolved) -> u64 {
        let exact: usize = (0..p.s_q).map(|i| self.window(params, p.s_kv, i).exact().len()).sum();
        (exact * p.b * p.h) as u64 + self.feature_pairs(p, params)
    }
}

impl Default for Scatterbrain {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// ωᵀ (`D × m`) in f32 for the first `m` rows of the map, so a row's `m` projections are one
/// pass over `D` contiguous rows.
fn omega_t(fm: &FeatureMap, m: usize) -> Vec<f32> {
    let d = fm.d();
    let mut omt = vec![0.0f32; d * m];
    for (r, w) in fm.omega().chunks_exact(d.max(1)).take(m).enumerate() {
        for (e, &x) in w.iter().enumerate() {
            omt[e * m + r] = x as f32;
        }
    }
    omt
}

/// The stabilised features of `x` (already scaled by `√s`): `φ(x) = e^{c − ½ln m}·φ̂` with
/// `φ̂_r = exp(ω_r·x − max_r ω_r·x) ∈ (0, 1]` written to `out`, and `c = max_r ω_r·x − ½|x|²`
/// returned.
#[inline(always)]
fn featurize(omt: &[f32], m: usize, x: &[f32], out: &mut [f32]) -> f32 {
    out.fill(0.0);
    for (e, &xe) in x.iter().enumerate() {
        out.iter_mut().zip(&omt[e * m..(e + 1) * m]).for_each(|(a, w)| *a += xe * w);
    }
    let mx = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    out.iter_mut().for_each(|a| *a = (*a - mx).exp());
    mx - 0.5 * dot_fixed(x, x)
}

/// A Performer sum `Σ_j φ(k_j) v_jᵀ`, `Σ_j φ(k_j)` over the keys added so far, under a
/// running log-scale `ck` (the largest key scale `c_j` added): `state_r = Σ f_jr e^{c_j − ck} v_j`.
struct LowRank {
    state: Vec<f32>,
    z: Vec<f32>,
    ck: f32,
}

impl LowRank {
    fn new(m: usize, dv: usize) -> Self {
        Self { state: vec![0.0; m * dv], z: vec![0.0; m], ck: f32::NEG_INFINITY }
    }

    /// Adds key `j` with features `fj = exp(e_j − c_j)` and value `vj`.
    #[inline(always)]
    fn add(&mut self, fj: &[f32], cj: f32, vj: &[f32]) {
        let dv = vj.len();
        if cj > self.ck {
            let r = if self.ck == f32::NEG_INFINITY { 0.0 } else { (self.ck - cj).exp() };
            self.state.iter_mut().for_each(|s| *s *= r);
            self.z.iter_mut().for_each(|s| *s *= r);
            self.ck = cj;
        }
        let g = (cj - self.ck).exp();
        for (r, &fr) in fj.iter().enumerate() {
            let a = fr * g;
            self.z[r] += a;
            self.state[r * dv..(r + 1) * dv].iter_mut().zip(vj).for_each(|(s, x)| *s += a * x);
        }
    }

    /// The sums for query features `φ̂` (scale `base = cq − ln m`): returns the log-scale
    /// `L = base + ck` and `den = φ̂·z`, writes `num = Σ_r φ̂_r state_r`; the terms are
    /// `e^L·(num, den)`. `L = −∞` when no key was added.
    #[inline(always)]
    fn read(&self, phi: &[f32], base: f32, num: &mut [f32]) -> (f32, f32) {
        let dv = num.len();
        num.fill(0.0);
        if self.ck == f32::NEG_INFINITY {
            return (f32::NEG_INFINITY, 0.0);
        }
        let mut den = 0.0f32;
        for (r, &ph) in phi.iter().enumerate() {
            den += ph * self.z[r];
            let row = &self.state[r * dv..(r + 1) * dv];
            num.iter_mut().zip(row).for_each(|(a, s)| *a += ph * s);
        }
        (base + self.ck, den)
    }
}

/// The fast path of one `(b, h)` as a SIMD kernel.
struct HeadKernel<'a> {
    cfg: &'a Scatterbrain,
    fm: &'a FeatureMap,
    low_rank: bool,
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    params: &'a Resolved,
    b: usize,
    h: usize,
    o: &'a mut [f32],
    lse: &'a mut [f32],
}

impl Kernel for HeadKernel<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self) {
        let HeadKernel { cfg, fm, low_rank, p, inputs, params, b, h, o, lse } = self;
        let (nq, nk, d, dv) = (p.s_q, p.s_kv, p.d, p.d_v);
        let m = if low_rank { fm.m() } else { 0 };
        let hk = h / p.group();
        let rs = params.scale.sqrt();
        let ln_m = (m.max(1) as f32).ln();
        let causal = matches!(params.mask, Mask::Causal);
        // Keys scaled by √s (so q'·k' = s·q·k), values; key features f_jr = exp(e_jr − c_j)
        // with their own log-scale c_j (a key's features depend on that key only).
        let mut k = vec![0.0f32; nk * d];
        let mut v = vec![0.0f32; nk * dv];
        let mut f = vec![0.0f32; nk * m];
        let mut c = vec![0.0f32; nk];
        let omt = omega_t(fm, m);
        let features = |x: &[f32], out: &mut [f32]| -> f32 { featurize(&omt, m, x, out) };
        for j in 0..nk {
            inputs.k.read_row(b, hk, j, rs, &mut k[j * d..(j + 1) * d]);
            inputs.v.read_row(b, hk, j, 1.0, &mut v[j * dv..(j + 1) * dv]);
            if low_rank {
                c[j] = features(&k[j * d..(j + 1) * d], &mut f[j * m..(j + 1) * m]);
            }
        }
        let sup: Vec<RowSupport> = (0..nq).map(|i| cfg.window(params, nk, i)).collect();
        // Queries scaled by √s; for rows that need the low-rank part, φ(q) = e^{cq − ½ln m} φ̂.
        let mut q = vec![0.0f32; nq * d];
        let mut phi = vec![0.0f32; nq * m];
        let mut base = vec![f32::NEG_INFINITY; nq];
        for i in 0..nq {
            let qi = &mut q[i * d..(i + 1) * d];
            inputs.q.read_row(b, h, i, rs, qi);
            if low_rank && !sup[i].full() {
                base[i] = features(qi, &mut phi[i * m..(i + 1) * m]) - ln_m;
            }
        }
        // The low-rank part runs over the keys *outside* the window (Ã = ℓ there), as a prefix
        // [0, lo) and, without a mask, a suffix [hi, S_kv): the estimate on the window is never
        // formed, so nothing cancels (README). A row whose window is empty uses all its keys:
        // the prefix [0, allowed) when causal, the total otherwise.
        let mut suffix_log = vec![f32::NEG_INFINITY; nq];
        let mut suffix = vec![0.0f32; nq * (dv + 1)];
        let mut total = LowRank::new(m, dv);
        if low_rank && !causal {
            let mut next = nk;
            for i in (0..nq).rev() {
                let si = sup[i];
                if si.full() || si.exact().is_empty() {
                    continue;
                }
                while next > si.hi {
                    next -= 1;
                    total.add(
                        &f[next * m..(next + 1) * m],
                        c[next],
                        &v[next * dv..(next + 1) * dv],
                    );
                }
                let row = &mut suffix[i * (dv + 1)..(i + 1) * (dv + 1)];
                let (num, den) = row.split_at_mut(dv);
                let (l, dn) = total.read(&phi[i * m..(i + 1) * m], base[i], num);
                suffix_log[i] = l;
                den[0] = dn;
            }
            while next > 0 {
                next -= 1;
                total.add(&f[next * m..(next + 1) * m], c[next], &v[next * dv..(next + 1) * dv]);
            }
        }
        let mut prefix = LowRank::new(m, dv);
        let mut added = 0usize;
        let mut sc = vec![0.0f32; cfg.window.min(nk)];
        let mut num = vec![0.0f32; dv];
        let mut part = vec![0.0f32; dv];
        for i in 0..nq {
            let si = sup[i];
            let orow = &mut o[i * dv..(i + 1) * dv];
            let win = si.exact();
            let sc = &mut sc[..win.len()];
            let mut zmax = f32::NEG_INFINITY;
            for (s, j) in sc.iter_mut().zip(win.clone()) {
                *s = dot_fixed(&q[i * d..(i + 1) * d], &k[j * d..(j + 1) * d]);
                zmax = zmax.max(*s);
            }
            // Low-rank partials (log-scale, den, num) of this row.
            let mut parts: [(f32, f32); 2] = [(f32::NEG_INFINITY, 0.0); 2];
            num.fill(0.0);
            if low_rank && !si.full() {
                let ph = &phi[i * m..(i + 1) * m];
                if !causal && win.is_empty() {
                    parts[0] = total.read(ph, base[i], &mut num);
                } else {
                    let end = if win.is_empty() { si.allowed } else { si.lo };
                    while added < end {
                        let j = added;
                        prefix.add(&f[j * m..(j + 1) * m], c[j], &v[j * dv..(j + 1) * dv]);
                        added += 1;
                    }
                    parts[0] = prefix.read(ph, base[i], &mut num);
                    if !causal {
                        parts[1] = (suffix_log[i], suffix[i * (dv + 1) + dv]);
                    }
                }
            }
            let lambda = parts.iter().fold(zmax, |a, p| a.max(p.0));
            if lambda == f32::NEG_INFINITY {
                orow.fill(0.0);
                lse[i] = f32::NEG_INFINITY;
                continue;
            }
            let mut den = 0.0f32;
            if parts[0].0 > f32::NEG_INFINITY {
                let g = (parts[0].0 - lambda).exp();
                den += g * parts[0].1;
                num.iter_mut().for_each(|a| *a *= g);
            }
            if parts[1].0 > f32::NEG_INFINITY {
                let g = (parts[1].0 - lambda).exp();
                den += g * parts[1].1;
                part.copy_from_slice(&suffix[i * (dv + 1)..i * (dv + 1) + dv]);
                num.iter_mut().zip(&part).for_each(|(a, x)| *a += g * x);
            }
            for (&s, j) in sc.iter().zip(win.clone()) {
                let e = (s - lambda).exp();
                den += e;
                num.iter_mut().zip(&v[j * dv..(j + 1) * dv]).for_each(|(a, x)| *a += e * x);
            }
            if den > 0.0 && den.is_finite() {
                let inv = 1.0 / den;
                orow.iter_mut().zip(&num).for_each(|(x, a)| *x = a * inv);
                lse[i] = lambda + den.ln();
            } else {
                // Every term underflowed: the empty-row contract, as in Performer.
                orow.fill(0.0);
                lse[i] = f32::NEG_INFINITY;
            }
        }
    }
}

impl Scatterbrain {
    /// The fast path; returns the exact scores computed with the LSH support (0 with the
    /// window, whose count is [`Scatterbrain::pairs`]).
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
        let low_rank = self.needs_low_rank(p, params);
        let perf = self.performer();
        let maps: Vec<Option<Arc<FeatureMap>>> =
            (0..p.h).map(|h| low_rank.then(|| perf.feature_map(p.d, h))).collect();
        let empty = FeatureMap::draw(Default::default(), 0, p.d, false);
        // Workers run at the caller's level (a thread-local setting).
        let level = Level::current();
        Ok(for_each_head(
            p,
            par,
            out,
            || (),
            |_, b, h, o, lse| {
                let fm = maps[h].as_deref().unwrap_or(&empty);
                match self.sparse {
                    Sparse::Local => {
                        dispatch(
                            level,
                            HeadKernel { cfg: self, fm, low_rank, p, inputs, params, b, h, o, lse },
                        );
                        0
                    }
                    Sparse::Lsh => dispatch(
                        level,
                        lsh::LshKernel { cfg: self, fm, low_rank, p, inputs, params, b, h, o, lse },
                    ),
                }
            },
        ))
    }
}

impl SparseConfig for Scatterbrain {
    const NAME: &'static str = "scatterbrain";
    const REFERENCE_NAME: &'static str = "scatterbrain-reference";
    const FAMILY: &'static str = "scatterbrain";
    const DESCRIPTION: &'static str =
        "Scatterbrain: exact sparse support (local window, or SMYRF LSH clusters with sparse=lsh) + Performer low-rank elsewhere, estimate replaced on the support (unbiased)";
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "sparse",
                value: match self.sparse {
                    Sparse::Local => "local".into(),
                    Sparse::Lsh => "lsh".into(),
                },
                doc: "sparse support: local (window, default) or lsh (SMYRF clusters: n_hashes, cluster)",
            },
            ParamInfo {
                name: "window",
                value: self.window.to_string(),
                doc: "local window w: exact on keys p_i−⌊w/2⌋ ≤ j < p_i+⌈w/2⌉ (fly local_context 64; 0 = Performer)",
            },
            ParamInfo {
                name: "n_hashes",
                value: self.n_hashes.to_string(),
                doc: "sparse=lsh: hash rounds R, 1..64; a pair in several rounds counts once (fly LRA 2)",
            },
            ParamInfo {
                name: "cluster",
                value: self.cluster.to_string(),
                doc: "sparse=lsh: cluster size c, ⌈S_kv/c⌉ balanced clusters per round (32: R·c = 64 keys per query)",
            },
            ParamInfo {
                name: "low_rank",
                value: self.low_rank.to_string(),
                doc: "the Performer part (default true); false = the sparse part alone (SMYRF / local window)",
            },
            ParamInfo {
                name: "features",
                value: self.features.to_string(),
                doc: "random features m of the low-rank part; 0 = ⌊D ln D⌋ (D=64 → 266)",
            },
            ParamInfo {
                name: "orthogonal",
                value: self.orthogonal.to_string(),
                doc: "orthogonal blocks with chi row norms (default true) or i.i.d. rows",
            },
            ParamInfo {
                name: "seed",
                value: self.seed.to_string(),
                doc: "projection seed, keyed with the query head; same map as performer:seed= (default 0)",
            },
            ParamInfo {
                name: "eps",
                value: self.eps.to_string(),
                doc: "sparse=lsh: fly's softmax_eps, eps/√m added to every stabilised feature (harness 1e-4; default 0 = unbiased)",
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
            "sparse" => {
                self.sparse = match value {
                    "local" => Sparse::Local,
                    "lsh" => Sparse::Lsh,
                    _ => return Err(bad("local or lsh")),
                }
            }
            "n_hashes" => {
                self.n_hashes = positive(Self::NAME, key, value)?;
                if self.n_hashes > 64 {
                    return Err(bad("at most 64 rounds"));
                }
            }
            "cluster" => {
                self.cluster = positive(Self::NAME, key, value)?;
                if self.cluster > 1 << 31 {
                    return Err(bad("at most 2^31"));
                }
            }
            "low_rank" => self.low_rank = parse_param(Self::NAME, key, value)?,
            "window" => {
                self.window = parse_param(Self::NAME, key, value)?;
                if self.window > 1 << 31 {
                    return Err(bad("at most 2^31"));
                }
            }
            "features" => {
                self.features = parse_param(Self::NAME, key, value)?;
                if self.features > 1 << 20 {
                    return Err(bad("at most 2^20 features"));
                }
            }
            "orthogonal" => self.orthogonal = parse_param(Self::NAME, key, value)?,
            "seed" => self.seed = parse_param(Self::NAME, key, value)?,
            "eps" => {
                let eps: f64 = parse_param(Self::NAME, key, value)?;
                if !(0.0..=MAX_EPS).contains(&eps) {
                    return Err(bad("0 ≤ eps ≤ 1e12"));
                }
                self.eps = eps;
            }
            _ => return Err(unknown(self, key)),
        }
        Ok(())
    }

    fn unsupported(&self, _p: &Problem, _params: &Params) -> Vec<Reason> {
        let mut why = Vec::new();
        if self.sparse == Sparse::Local && self.window == 0 && !self.low_rank {
            why.push(Reason::Other(
                "scatterbrain: window=0 with low_rank=false leaves nothing to attend to".into(),
            ));
        }
        if self.sparse == Sparse::Local && self.eps > 0.0 {
            why.push(Reason::Other("scatterbrain: eps > 0 needs sparse=lsh".into()));
        }
        why
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
        let exact = match exec {
            Exec::Reference => reference::forward(self, p, inputs, params, out),
            Exec::Fast => self.fast(p, inputs, params, par, out)?,
        };
        Ok(Stats::pairs(match self.sparse {
            Sparse::Local => self.pairs(p, params),
            Sparse::Lsh => exact + self.feature_pairs(p, params),
        }))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let m = self.performer().features_for(p.d);
        match exec {
            Exec::Reference => 8 * (p.s_kv * (p.d + m + 1) + m + p.d_v + p.d),
            Exec::Fast => {
                let (nq, nk, d, dv) = (p.s_q, p.s_kv, p.d, p.d_v);
                let per_worker = match self.sparse {
                    // Keys, values, key features and scales, ωᵀ; queries, their features,
                    // scales, supports and suffix partials; two low-rank states; rows.
                    Sparse::Local => {
                        4 * (nk * (d + dv + m + 1) + d * m)
                            + 4 * nq * (d + m + dv + 3)
                            + 24 * nq
                            + 4 * (2 * m * (dv + 1) + self.window.min(nk) + 2 * dv)
                    }
                    // The clusters (orders, query clusters, hashes, unscaled rows); keys,
                    // values, f32 key features, scales; queries, f32 features, scales, cluster
                    // tables, f64 support sums and counts; one cluster's tiles (f32 keys,
                    // values, queries, scores, numerators; f64 features, [v | 1], weights,
                    // sums); the f64 state and its row blocks.
                    Sparse::Lsh => {
                        let (r, c) = (self.n_hashes, self.cluster.min(nk).max(1));
                        let qc = nq.div_ceil(nk.div_ceil(c).max(1)) + 1;
                        let (dv1, rb) = (dv + 1, 256usize.min(nq.max(nk)));
                        4 * (r * (2 * nq + nk) + (nq + nk) * (d + 3) + r * (d + 2))
                            + 4 * (nk * (d + dv + m + 1) + d * m)
                            + 8 * nk
                            + 4 * nq * (d + m + 3 + r)
                            + 8 * nq * (2 + dv1)
                            + 4 * nk * r
                            + 4 * (c * (d + dv + r) + qc * (d + c + dv + 2))
                            + 8 * (c * (dv1 + m) + qc * (m + c + dv1))
                            + 8 * (m * dv1 + rb * (2 * dv1 + m))
                    }
                };
                par.threads().min(p.b * p.h).max(1) * per_worker + p.h * 12 * m * p.d
            }
        }
    }
}
