//! Performer FAVOR+ (spec §1.4): softmax attention estimated through positive orthogonal random
//! features, `exp(s·q·k) ≈ φ(q)·φ(k)`; see `README.md` in this folder.
//!
//! - [`FeatureMap`]: the projection (drawn from [`crate::primitives::rng`]) and the positive
//!   feature map, public so that other low-rank methods (Scatterbrain, linear attention) reuse it.
//! - [`reference`](mod@reference): the estimate materialised pair by pair in f64 (the implied
//!   matrix `Ã_ij = φ(q_i)·φ(k_j)` restricted to the mask, row-normalised).
//! - fast path ([`Performer`] under [`crate::methods::pattern::Fast`]): `φ(K)ᵀV` and `φ(K)ᵀ1`
//!   once (non-causal) or as running prefix sums (causal), then one `m × D_v` product per query.

pub mod reference;

use crate::dispatch::{parse_param, Inputs, OutputMut, ParamInfo, Stats};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskKind};
use crate::methods::pattern::{dot_fixed, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::rng::{purpose, Key, Stream};
use crate::problem::Problem;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `performer`: FAVOR+ with `features` positive random features per head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Performer {
    /// Random features `m`; 0 means `⌊D ln D⌋` (lucidrains / fly default; D = 64 → 266).
    pub features: usize,
    /// Orthogonal blocks with chi-distributed row norms (true) or i.i.d. Gaussian rows.
    pub orthogonal: bool,
    /// Seed of the projection (keyed with the query head, spec §0.4.5).
    pub seed: u64,
}

impl Performer {
    /// The authors' defaults: `m = ⌊D ln D⌋`, orthogonal features, seed 0.
    pub const DEFAULT: Performer = Performer { features: 0, orthogonal: true, seed: 0 };

    /// The feature count for head dimension `d`.
    pub fn features_for(&self, d: usize) -> usize {
        if self.features > 0 {
            self.features
        } else {
            default_features(d)
        }
    }

    /// The feature map of query head `h` (the same for every batch element), drawn once per
    /// `(seed, head, m, D, orthogonal)` and kept in a small process-wide cache (a model holds its
    /// projection the same way; drawing costs `O(m·D²)`).
    pub fn feature_map(&self, d: usize, h: usize) -> Arc<FeatureMap> {
        type Cache = Mutex<HashMap<(u64, usize, usize, usize, bool), Arc<FeatureMap>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let m = self.features_for(d);
        let id = (self.seed, h, m, d, self.orthogonal);
        let cache = CACHE.get_or_init(Default::default);
        if let Some(f) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return f.clone();
        }
        let key = Key { seed: self.seed, layer: 0, head: h as u64, purpose: 0 };
        let f = Arc::new(FeatureMap::draw(key, m, d, self.orthogonal));
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= 256 {
            c.clear();
        }
        c.insert(id, f.clone());
        f
    }

    /// Pairs reported per call: each feature of a row costs one `D`-long dot product, the cost
    /// of one score, so a head costs `(S_q + S_kv)·m` pair-equivalents (keys are featurised per
    /// query head). No query-key score is evaluated.
    pub fn pairs(&self, p: &Problem) -> u64 {
        ((p.s_q + p.s_kv) * self.features_for(p.d) * p.b * p.h) as u64
    }
}

impl Default for Performer {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `⌊D ln D⌋`, at least 1.
pub fn default_features(d: usize) -> usize {
    ((d as f64) * (d as f64).ln()).floor().max(1.0) as usize
}

/// The projection `ω` (`m × D`) of FAVOR+ and the positive feature map
/// `φ(x) = m^{-1/2} exp(ω x' − |x'|²/2)`, `x' = x·s^{1/2}` (spec §1.4).
#[derive(Debug, Clone)]
pub struct FeatureMap {
    m: usize,
    d: usize,
    omega: Vec<f64>,
    omega32: Vec<f32>,
}

impl FeatureMap {
    /// Draws `m` rows of dimension `d` from the streams of `key` (its `purpose` is replaced by
    /// [`purpose::PERFORMER_PROJECTION`] and [`purpose::PERFORMER_NORMS`]).
    ///
    /// Orthogonal: `⌈m/d⌉` blocks of `d × d` standard normals (block `t`, row `r`, column `c`
    /// is normal `(t·d + r)·d + c` of the projection stream), each orthonormalised by
    /// Gram–Schmidt on its rows (the QR factor with a positive diagonal, hence Haar), stacked,
    /// the first `m` rows kept, row `i` scaled by the norm of normals `i·d .. (i+1)·d` of the
    /// norms stream (so each row is marginally `N(0, I)`). Otherwise row `i` is normals
    /// `i·d .. (i+1)·d` of the projection stream.
    pub fn draw(key: Key, m: usize, d: usize, orthogonal: bool) -> Self {
        let proj = Stream::new(Key { purpose: purpose::PERFORMER_PROJECTION, ..key });
        let mut omega = vec![0.0f64; m * d];
        if !orthogonal || d == 0 {
            proj.fill_gaussian(0, &mut omega);
        } else {
            let norms = Stream::new(Key { purpose: purpose::PERFORMER_NORMS, ..key });
            let mut block = vec![0.0f64; d * d];
            for t in 0..m.div_ceil(d) {
                proj.fill_gaussian((t * d * d) as u64, &mut block);
                for r in 0..d {
                    let (done, rest) = block.split_at_mut(r * d);
                    let row = &mut rest[..d];
                    // Modified Gram–Schmidt twice for stability.
                    for _ in 0..2 {
                        for prev in done.chunks_exact(d) {
                            let c: f64 = prev.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                            row.iter_mut().zip(prev).for_each(|(x, p)| *x -= c * p);
                        }
                    }
                    let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                    row.iter_mut().for_each(|x| *x /= n);
                }
                for r in 0..d.min(m - t * d) {
                    let i = t * d + r;
                    let mut g = vec![0.0f64; d];
                    norms.fill_gaussian((i * d) as u64, &mut g);
                    let chi = g.iter().map(|x| x * x).sum::<f64>().sqrt();
                    for c in 0..d {
                        omega[i * d + c] = block[r * d + c] * chi;
                    }
                }
            }
        }
        let omega32 = omega.iter().map(|&x| x as f32).collect();
        Self { m, d, omega, omega32 }
    }

    /// Feature count `m`.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Input dimension `D`.
    pub fn d(&self) -> usize {
        self.d
    }

    /// The projection rows, `m × D` row-major, in f64.
    pub fn omega(&self) -> &[f64] {
        &self.omega
    }

    /// The exponents `a_r = ω_r·x' − |x'|²/2` of `φ(x)` in f64 (`x' = x·√scale`), so that
    /// `φ(x)_r = exp(a_r − ½ ln m)`; `out.len() == m`.
    pub fn log_features_f64(&self, x: &[f64], scale: f64, out: &mut [f64]) {
        let rs = scale.sqrt();
        let half_sq = 0.5 * scale * x.iter().map(|v| v * v).sum::<f64>();
        for (r, o) in out.iter_mut().enumerate() {
            let w = &self.omega[r * self.d..(r + 1) * self.d];
            *o = rs * w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() - half_sq;
        }
    }

    /// The exponents of [`FeatureMap::log_features_f64`] in f32 from an already scaled row
    /// `x' = x·√scale`, with a fixed summation order ([`dot_fixed`]: bitwise the same at every
    /// SIMD level and thread count).
    pub fn log_features(&self, x_scaled: &[f32], out: &mut [f32]) {
        let half_sq = 0.5 * dot_fixed(x_scaled, x_scaled);
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot_fixed(&self.omega32[r * self.d..(r + 1) * self.d], x_scaled) - half_sq;
        }
    }

    /// Stabilised features: `out_r = exp(a_r − c)` with `c = max_r a_r` returned, so
    /// `φ(x) = exp(c − ½ ln m)·out` and every entry is in `(0, 1]`. The row constant `|x'|²/2`
    /// is left out of the exponentials (it cancels against the max) and only enters `c`.
    pub fn positive(&self, x_scaled: &[f32], out: &mut [f32]) -> f32 {
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot_fixed(&self.omega32[r * self.d..(r + 1) * self.d], x_scaled);
        }
        let c = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        out.iter_mut().for_each(|a| *a = (*a - c).exp());
        c - 0.5 * dot_fixed(x_scaled, x_scaled)
    }
}

/// The per-head working memory of the fast path.
struct Head {
    x: Vec<f32>,
    v: Vec<f32>,
    feat: Vec<f32>,
    state: Vec<f32>,
    z: Vec<f32>,
}

impl Performer {
    /// The fast path for one `(b, h)`, writing `o` (`S_q × D_v`) and `lse` (`S_q`).
    #[allow(clippy::too_many_arguments)]
    fn head(
        &self,
        fm: &FeatureMap,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        b: usize,
        h: usize,
        o: &mut [f32],
        lse: &mut [f32],
    ) {
        let (m, dv) = (fm.m, p.d_v);
        let hk = h / p.group();
        let rs = params.scale.sqrt();
        let ln_m = (m as f32).ln();
        let mut w = Head {
            x: vec![0.0; p.d],
            v: vec![0.0; dv],
            feat: vec![0.0; m],
            state: vec![0.0; m * dv],
            z: vec![0.0; m],
        };
        let causal = matches!(params.mask, Mask::Causal);
        // Keys are added in order under a running log-scale `ck` (the max exponent so far):
        // the state holds Σ exp(e_jr − ck) v_j, rescaled when `ck` grows (exact, and each row
        // depends only on the keys it may see, bitwise).
        let mut ck = f32::NEG_INFINITY;
        let mut next_q = 0usize;
        let add_key = |w: &mut Head, ck: &mut f32, j: usize| {
            inputs.k.read_row(b, hk, j, rs, &mut w.x);
            inputs.v.read_row(b, hk, j, 1.0, &mut w.v);
            fm.log_features(&w.x, &mut w.feat);
            let c = w.feat.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if c > *ck {
                let f = if *ck == f32::NEG_INFINITY { 0.0 } else { (*ck - c).exp() };
                w.state.iter_mut().for_each(|s| *s *= f);
                w.z.iter_mut().for_each(|s| *s *= f);
                *ck = c;
            }
            for r in 0..m {
                let f = (w.feat[r] - *ck).exp();
                w.z[r] += f;
                let row = &mut w.state[r * dv..(r + 1) * dv];
                row.iter_mut().zip(&w.v).for_each(|(s, v)| *s += f * v);
            }
        };
        let answer = |w: &mut Head, ck: f32, i: usize, o: &mut [f32], lse: &mut [f32]| {
            let orow = &mut o[i * dv..(i + 1) * dv];
            inputs.q.read_row(b, h, i, rs, &mut w.x);
            let cq = fm.positive(&w.x, &mut w.feat);
            orow.fill(0.0);
            let mut den = 0.0f32;
            for r in 0..m {
                let f = w.feat[r];
                den += f * w.z[r];
                orow.iter_mut().zip(&w.state[r * dv..(r + 1) * dv]).for_each(|(a, s)| *a += f * s);
            }
            if den > 0.0 && den.is_finite() {
                let inv = 1.0 / den;
                orow.iter_mut().for_each(|a| *a *= inv);
                lse[i] = den.ln() + cq + ck - ln_m;
            } else {
                // No key, or every estimate underflowed: the empty-row contract.
                orow.fill(0.0);
                lse[i] = f32::NEG_INFINITY;
            }
        };
        if !causal {
            for j in 0..p.s_kv {
                add_key(&mut w, &mut ck, j);
            }
            for i in 0..p.s_q {
                answer(&mut w, ck, i, o, lse);
            }
            return;
        }
        // Causal: row i sees keys 0..=p_i; rows are in increasing position order.
        let last = |i: usize| params.position(i).min(p.s_kv as i64 - 1);
        while next_q < p.s_q && last(next_q) < 0 {
            answer(&mut w, ck, next_q, o, lse);
            next_q += 1;
        }
        for j in 0..p.s_kv {
            if next_q == p.s_q {
                break;
            }
            add_key(&mut w, &mut ck, j);
            while next_q < p.s_q && last(next_q) == j as i64 {
                answer(&mut w, ck, next_q, o, lse);
                next_q += 1;
            }
        }
    }

    fn fast(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        par: Par,
        out: OutputMut,
    ) -> Result<()> {
        let maps: Vec<Arc<FeatureMap>> = (0..p.h).map(|h| self.feature_map(p.d, h)).collect();
        let heads = p.b * p.h;
        if heads == 0 || p.s_q == 0 {
            return Ok(());
        }
        let slots: Vec<Mutex<(&mut [f32], &mut [f32])>> = out
            .o
            .chunks_mut(p.s_q * p.d_v)
            .zip(out.lse.chunks_mut(p.s_q))
            .map(Mutex::new)
            .collect();
        let jobs = par.threads().min(heads);
        par.run(jobs, |w| {
            for bh in (w..heads).step_by(jobs) {
                let mut g = slots[bh].lock().unwrap_or_else(|e| e.into_inner());
                let (o, lse) = &mut *g;
                let (b, h) = (bh / p.h, bh % p.h);
                self.head(&maps[h], p, inputs, params, b, h, o, lse);
            }
        });
        Ok(())
    }
}

impl SparseConfig for Performer {
    const NAME: &'static str = "performer";
    const REFERENCE_NAME: &'static str = "performer-reference";
    const FAMILY: &'static str = "performer";
    const DESCRIPTION: &'static str =
        "Performer FAVOR+: positive orthogonal random features, causal by prefix sums (low-rank estimate, no scores)";
    const MASKS: &'static [MaskKind] = &[MaskKind::None, MaskKind::Causal];

    fn params(&self) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "features",
                value: self.features.to_string(),
                doc: "random features m; 0 = ⌊D ln D⌋ (lucidrains/fly default, D=64 → 266)",
            },
            ParamInfo {
                name: "orthogonal",
                value: self.orthogonal.to_string(),
                doc: "orthogonal blocks with chi row norms (FAVOR+ default true) or i.i.d. rows",
            },
            ParamInfo {
                name: "seed",
                value: self.seed.to_string(),
                doc: "projection seed, keyed with the query head (default 0)",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "features" => self.features = parse_param(Self::NAME, key, value)?,
            "orthogonal" => self.orthogonal = parse_param(Self::NAME, key, value)?,
            "seed" => self.seed = parse_param(Self::NAME, key, value)?,
            _ => return Err(unknown(self, key)),
        }
        if self.features > 1 << 20 {
            return Err(Error::BadParam {
                method: Self::NAME.into(),
                key: key.into(),
                value: value.into(),
                detail: "at most 2^20 features".into(),
            });
        }
        Ok(())
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
        match exec {
            Exec::Reference => reference::forward(self, p, inputs, params, out),
            Exec::Fast => self.fast(p, inputs, params, par, out)?,
        }
        Ok(Stats::pairs(self.pairs(p)))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let m = self.features_for(p.d);
        match exec {
            Exec::Reference => 8 * (p.s_kv * m + m + p.s_kv + p.d_v + p.d),
            Exec::Fast => {
                par.threads().min(p.b * p.h).max(1) * 4 * (m * (p.d_v + 2) + p.d + p.d_v)
                    + p.h * 12 * m * p.d
            }
        }
    }
}
