//! Performer FAVOR+ (spec §1.4): softmax attention estimated through positive orthogonal random
//! features, `exp(s·q·k) ≈ φ(q)·φ(k)`; see `README.md` in this folder.
//!
//! - [`FeatureMap`]: the projection (drawn from [`crate::primitives::rng`]) and the positive
//!   feature map, public so that other low-rank methods (Scatterbrain, linear attention) reuse it.
//! - [`reference`](mod@reference): the estimate materialised pair by pair in f64 (the implied
//!   matrix `Ã_ij = φ(q_i)·φ(k_j)` restricted to the mask, row-normalised).
//! - fast path ([`Favor`] under [`crate::methods::pattern::Fast`]): `φ(K)ᵀV` and `φ(K)ᵀ1`
//!   once (non-causal) or as running prefix sums (causal), then one `m × D_v` product per query.
//! - [`Favor`] is the registered configuration: the random features of [`Performer`] (which
//!   Scatterbrain also uses) and the additive feature `eps` of performer-pytorch (default 0).

pub mod reference;

use crate::dispatch::{bad_param, parse_param, Inputs, OutputMut, ParamInfo, Stats};
use crate::error::{Error, Result};
use crate::mask::{Mask, MaskKind};
use crate::methods::pattern::{dot_fixed, for_each_head, unknown, Exec, SparseConfig};
use crate::par::Par;
use crate::params::Resolved;
use crate::primitives::gemm::{gemm, gemm_at_add, gemm_bt};
use crate::primitives::rng::{purpose, Key, Stream};
use crate::primitives::simd::{dispatch, exp2_scalar, max_of, Kernel, Level, Simd};
use crate::problem::Problem;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// FAVOR+'s random features: how many, how drawn, and the seed (the feature map that `performer`
/// and Scatterbrain's low-rank part use; the registered method is [`Favor`]).
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

/// `performer` as registered: FAVOR+ with the random features of [`Performer`] and an additive
/// feature `eps`.
///
/// `eps = 0` is the unbiased FAVOR+ estimate (spec §1.4). `eps > 0` is performer-pytorch's
/// `softmax_kernel`: every stabilised feature gets `+eps`, queries stabilised by their own max
/// `max_r ω_r·q'` and keys by one max `M = max_{j,r} ω_r·k'_j` over the keys
/// (`φ(k_j)_r = m^{-1/2}(exp(ω_r·k'_j − |k'_j|²/2 − M) + eps)`); a causal row `i` takes `M` over
/// the keys it sees only (the peer's global max lets later keys into earlier rows). See README.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Favor {
    /// The random features.
    pub map: Performer,
    /// The additive feature `0 ≤ ε ≤` [`MAX_EPS`] (performer-pytorch `kernel_epsilon`: 1e-4);
    /// 0 = FAVOR+.
    pub eps: f64,
}

/// The largest `eps` [`Favor`] accepts.
pub const MAX_EPS: f64 = 1e12;

impl Favor {
    /// FAVOR+ with the authors' feature defaults and no additive feature.
    pub const DEFAULT: Favor = Favor { map: Performer::DEFAULT, eps: 0.0 };
}

impl Default for Favor {
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
            *o = rs * dot_f64(&self.omega[r * self.d..(r + 1) * self.d], x) - half_sq;
        }
    }

    /// [`FeatureMap::log_features_f64`] of several rows at once into `out` (`rows.len() × m`),
    /// projection row by projection row (the same products and sums as one row at a time).
    pub fn log_features_f64_rows(&self, rows: &[Vec<f64>], scale: f64, out: &mut [f64]) {
        let rs = scale.sqrt();
        let m = self.m;
        let half: Vec<f64> =
            rows.iter().map(|x| 0.5 * scale * x.iter().map(|v| v * v).sum::<f64>()).collect();
        for r in 0..m {
            let w = &self.omega[r * self.d..(r + 1) * self.d];
            for (t, x) in rows.iter().enumerate() {
                out[t * m + r] = rs * dot_f64(w, x) - half[t];
            }
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

/// `a·b` in f64 with eight interleaved partial sums (a plain loop the compiler can keep in
/// registers: the references featurise `S·m` rows of length `D`).
pub(crate) fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Keys per chunk, and query rows per block, of the fast path.
const CHUNK: usize = 64;

/// The per-head working memory of the fast path (row-major blocks).
struct Work {
    /// `CHUNK × D`: scaled key or query rows.
    x: Vec<f32>,
    /// `CHUNK × D_v`: values of the chunk.
    v: Vec<f32>,
    /// `CHUNK × m`: stabilised key features `exp(e_jr − max_r e_jr)`.
    kf: Vec<f32>,
    /// `CHUNK`: the log-scale of each key row (`max_r e_jr − |k'_j|²/2`).
    kc: Vec<f32>,
    /// `CHUNK`: the largest projection of each key row (`max_r ω_r·k'_j`).
    ka: Vec<f32>,
    /// `CHUNK × m`: stabilised query features (with `eps`: `exp(a − max a − |q'|²/2) + eps`).
    qf: Vec<f32>,
    /// `CHUNK`: the log-scale of each query row.
    qc: Vec<f32>,
    /// `CHUNK`: the largest projection of each query row.
    qa: Vec<f32>,
    /// `CHUNK × CHUNK`: intra-chunk weights.
    l: Vec<f32>,
    /// `CHUNK × D_v`: numerators.
    num: Vec<f32>,
    /// `m × D_v`: `Σ_j exp(kc_j − ck)·φ̂_j v_jᵀ` over the keys added so far.
    state: Vec<f32>,
    /// `m`: `Σ_j exp(kc_j − ck)·φ̂_j`.
    z: Vec<f32>,
    /// `CHUNK × D_v` (`eps > 0`): `Σ v_j` over the keys added so far and the chunk's keys up to
    /// row `t` (the `eps` part of the state, never rescaled).
    vsum: Vec<f32>,
}

impl Work {
    fn new(m: usize, d: usize, dv: usize) -> Self {
        Self {
            x: vec![0.0; CHUNK * d],
            v: vec![0.0; CHUNK * dv],
            kf: vec![0.0; CHUNK * m],
            kc: vec![0.0; CHUNK],
            ka: vec![0.0; CHUNK],
            qf: vec![0.0; CHUNK * m],
            qc: vec![0.0; CHUNK],
            qa: vec![0.0; CHUNK],
            l: vec![0.0; CHUNK * CHUNK],
            num: vec![0.0; CHUNK * dv],
            state: vec![0.0; m * dv],
            z: vec![0.0; m],
            vsum: vec![0.0; CHUNK * dv],
        }
    }

    /// The scratch bytes of [`Work::new`].
    fn bytes(m: usize, d: usize, dv: usize) -> usize {
        4 * (CHUNK * (d + 3 * dv + 2 * m + 4 + CHUNK) + m * (dv + 1))
    }
}

/// Stabilises `n` rows of exponents in place: each row `a` becomes `exp(a − max a)` (entries in
/// `(0, 1]`, the largest exactly 1), `c[i] = max a − |x_i|²/2` is its log-scale, so that
/// `φ(x_i) = exp(c[i] − ½ ln m)·row_i`, and `amax[i] = max a` (the peer's stabiliser for `eps`).
/// Vectorised at the caller's [`Level`].
struct Stabilise<'a> {
    e: &'a mut [f32],
    x: &'a [f32],
    c: &'a mut [f32],
    amax: &'a mut [f32],
    m: usize,
    d: usize,
}

impl Kernel for Stabilise<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        let (m, d) = (self.m, self.d);
        for (((row, x), c), amax) in self
            .e
            .chunks_exact_mut(m)
            .zip(self.x.chunks_exact(d))
            .zip(self.c.iter_mut())
            .zip(self.amax.iter_mut())
        {
            // SAFETY: `dispatch` runs this at a level the CPU has.
            let mx = unsafe { max_of::<S>(row) };
            let split = m - m % S::LANES;
            // SAFETY: `dispatch` runs this at a level the CPU has; every pointer is in `row`.
            unsafe {
                let (sub, l2e) = (S::splat(mx), S::splat(LOG2E));
                for t in (0..split).step_by(S::LANES) {
                    let p = row.as_mut_ptr().add(t);
                    S::store(p, S::exp2(S::mul(S::sub(S::load(p), sub), l2e)));
                }
            }
            for a in &mut row[split..] {
                *a = exp2_scalar((*a - mx) * LOG2E);
            }
            *c = mx - 0.5 * dot_fixed(x, x);
            *amax = mx;
        }
    }
}

impl FeatureMap {
    /// Stabilised features of `n` scaled rows `x` (`n × D`) into `out` (`n × m`), their
    /// log-scales into `c` and their largest projections into `amax` (see [`Stabilise`]): one
    /// GEMM `x·ωᵀ`, then the row-wise exponentials.
    fn stabilised_rows(
        &self,
        level: Level,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        c: &mut [f32],
        amax: &mut [f32],
    ) {
        gemm_bt(out, x, &self.omega32, [n, self.d, self.m], false);
        dispatch(
            level,
            Stabilise {
                e: &mut out[..n * self.m],
                x: &x[..n * self.d],
                c: &mut c[..n],
                amax: &mut amax[..n],
                m: self.m,
                d: self.d,
            },
        );
    }
}

impl Favor {
    /// The fast path for one `(b, h)`, writing `o` (`S_q × D_v`) and `lse` (`S_q`).
    ///
    /// Keys go through in chunks of [`CHUNK`]: their features by one GEMM, then added to the
    /// state `Σ_j w_j φ̂_j v_jᵀ` by another, under a running log-scale `ck` (the largest key
    /// log-scale so far; the state is rescaled when it grows). Causal rows whose last key falls
    /// in a chunk are answered before that chunk is added: the state (earlier chunks) plus the
    /// intra-chunk weights `φ̂_q·φ̂_j·exp(kc_j − c_i)` of the keys they see, `c_i` the largest
    /// log-scale among those keys — so a row depends only on the keys it may see, bitwise (the
    /// weights of later keys are exact zeros). Non-causal rows are answered from the full state.
    ///
    /// With `eps > 0` the running scale is the largest key projection `M` instead (the peer's
    /// stabiliser, at least every key log-scale), query features become `u = φ̂_q·e^{−|q'|²/2} +
    /// eps`, and the keys' `eps` adds `eps·(Σ_r u_r)·(Σ_j v_j, count)` to the row's numerator
    /// and denominator, from running sums of `v` that are never rescaled.
    #[allow(clippy::too_many_arguments)]
    fn head(
        &self,
        fm: &FeatureMap,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        b: usize,
        h: usize,
        level: Level,
        o: &mut [f32],
        lse: &mut [f32],
    ) {
        let (m, d, dv) = (fm.m, p.d, p.d_v);
        let hk = h / p.group();
        let rs = params.scale.sqrt();
        let ln_m = (m as f32).ln();
        let causal = matches!(params.mask, Mask::Causal);
        let eps = self.eps as f32;
        let peer = self.eps > 0.0;
        let mut w = Work::new(m, d, dv);
        // The last key row i sees (−1: none).
        let last = |i: usize| {
            if causal {
                params.position(i).min(p.s_kv as i64 - 1)
            } else {
                p.s_kv as i64 - 1
            }
        };
        let empty = |o: &mut [f32], lse: &mut [f32], i: usize| {
            o[i * dv..(i + 1) * dv].fill(0.0);
            lse[i] = f32::NEG_INFINITY;
        };
        // With eps: query features `u = φ̂·e^{qc − qa} + eps` in place, `Σ_r u_r` into `su`.
        let with_eps = |qf: &mut [f32], qc: &[f32], qa: &[f32], su: &mut [f32], nr: usize| {
            for r in 0..nr {
                let g = (qc[r] - qa[r]).exp();
                let row = &mut qf[r * m..(r + 1) * m];
                row.iter_mut().for_each(|x| *x = *x * g + eps);
                su[r] = row.iter().sum();
            }
        };
        let mut next = 0usize;
        while next < p.s_q && last(next) < 0 {
            empty(o, lse, next);
            next += 1;
        }
        let mut ck = f32::NEG_INFINITY;
        let mut pm = [0.0f32; CHUNK];
        let mut su = [0.0f32; CHUNK];
        // Keys added to the state so far (the count that multiplies eps in the denominator).
        let mut added = 0usize;
        for j0 in (0..p.s_kv).step_by(CHUNK) {
            if next == p.s_q {
                break;
            }
            let n = CHUNK.min(p.s_kv - j0);
            for t in 0..n {
                inputs.k.read_row(b, hk, j0 + t, rs, &mut w.x[t * d..(t + 1) * d]);
                inputs.v.read_row(b, hk, j0 + t, 1.0, &mut w.v[t * dv..(t + 1) * dv]);
            }
            fm.stabilised_rows(level, &w.x, n, &mut w.kf, &mut w.kc, &mut w.ka);
            if peer {
                // Row t of `vsum`: Σ v over the keys before this chunk (row 0 on entry) and the
                // chunk's keys up to t.
                w.vsum[..dv].iter_mut().zip(&w.v[..dv]).for_each(|(x, v)| *x += v);
                for t in 1..n {
                    let (done, rest) = w.vsum.split_at_mut(t * dv);
                    let prev = &done[(t - 1) * dv..];
                    let v = &w.v[t * dv..(t + 1) * dv];
                    for ((x, a), v) in rest[..dv].iter_mut().zip(prev).zip(v) {
                        *x = a + v;
                    }
                }
            }
            // Causal rows whose last key is in this chunk, in blocks of CHUNK rows.
            let end = (j0 + n) as i64;
            let mut stop = next;
            while causal && stop < p.s_q && last(stop) < end {
                stop += 1;
            }
            let scales = if peer { &w.ka } else { &w.kc };
            let mut run = ck;
            for (t, x) in pm.iter_mut().enumerate().take(n) {
                run = run.max(scales[t]);
                *x = run;
            }
            for r0 in (next..stop).step_by(CHUNK) {
                let nr = CHUNK.min(stop - r0);
                for r in 0..nr {
                    inputs.q.read_row(b, h, r0 + r, rs, &mut w.x[r * d..(r + 1) * d]);
                }
                fm.stabilised_rows(level, &w.x, nr, &mut w.qf, &mut w.qc, &mut w.qa);
                if peer {
                    with_eps(&mut w.qf, &w.qc, &w.qa, &mut su, nr);
                }
                gemm_bt(&mut w.l, &w.qf, &w.kf, [nr, m, n], false);
                let mut den = [0.0f32; CHUNK];
                let mut cs = [0.0f32; CHUNK];
                for r in 0..nr {
                    let tl = (last(r0 + r) - j0 as i64) as usize;
                    let c = pm[tl];
                    let row = &mut w.l[r * n..(r + 1) * n];
                    for (t, x) in row.iter_mut().enumerate() {
                        *x = if t <= tl { *x * (w.kc[t] - c).exp() } else { 0.0 };
                    }
                    den[r] = row.iter().sum();
                    // The earlier chunks' state, brought to this row's scale.
                    let f = if ck == f32::NEG_INFINITY { 0.0 } else { (ck - c).exp() };
                    w.qf[r * m..(r + 1) * m].iter_mut().for_each(|x| *x *= f);
                    den[r] += dot_fixed(&w.qf[r * m..(r + 1) * m], &w.z);
                    if peer {
                        den[r] += eps * su[r] * (added + tl + 1) as f32;
                    }
                    cs[r] = c;
                }
                gemm(&mut w.num, &w.l, &w.v, [nr, n, dv], false);
                gemm(&mut w.num, &w.qf, &w.state, [nr, m, dv], true);
                for r in 0..nr {
                    let i = r0 + r;
                    let num = &mut w.num[r * dv..(r + 1) * dv];
                    let log_scale = if peer {
                        let tl = (last(i) - j0 as i64) as usize;
                        let e = eps * su[r];
                        let vs = &w.vsum[tl * dv..(tl + 1) * dv];
                        num.iter_mut().zip(vs).for_each(|(x, s)| *x += e * s);
                        w.qa[r] + cs[r] - ln_m
                    } else {
                        w.qc[r] + cs[r] - ln_m
                    };
                    finish(num, den[r], log_scale, i, o, lse);
                }
            }
            next = stop;
            if next == p.s_q {
                break;
            }
            // Add the chunk to the state under the new log-scale.
            let cn = pm[n - 1];
            if cn > ck {
                let f = if ck == f32::NEG_INFINITY { 0.0 } else { (ck - cn).exp() };
                w.state.iter_mut().for_each(|s| *s *= f);
                w.z.iter_mut().for_each(|s| *s *= f);
                ck = cn;
            }
            for t in 0..n {
                let f = (w.kc[t] - ck).exp();
                let row = &mut w.kf[t * m..(t + 1) * m];
                row.iter_mut().for_each(|x| *x *= f);
                w.z.iter_mut().zip(row.iter()).for_each(|(z, x)| *z += x);
            }
            gemm_at_add(&mut w.state, &w.kf, &w.v, [n, m, dv]);
            if peer {
                w.vsum.copy_within((n - 1) * dv..n * dv, 0);
                added += n;
            }
        }
        // Non-causal rows (and none are left over when causal): the full state.
        for r0 in (next..p.s_q).step_by(CHUNK) {
            let nr = CHUNK.min(p.s_q - r0);
            for r in 0..nr {
                inputs.q.read_row(b, h, r0 + r, rs, &mut w.x[r * d..(r + 1) * d]);
            }
            fm.stabilised_rows(level, &w.x, nr, &mut w.qf, &mut w.qc, &mut w.qa);
            if peer {
                with_eps(&mut w.qf, &w.qc, &w.qa, &mut su, nr);
            }
            gemm(&mut w.num, &w.qf, &w.state, [nr, m, dv], false);
            for (r, s_u) in su.iter().enumerate().take(nr) {
                let num = &mut w.num[r * dv..(r + 1) * dv];
                let mut den = dot_fixed(&w.qf[r * m..(r + 1) * m], &w.z);
                let log_scale = if peer {
                    let e = eps * s_u;
                    num.iter_mut().zip(&w.vsum[..dv]).for_each(|(x, s)| *x += e * s);
                    den += e * added as f32;
                    w.qa[r] + ck - ln_m
                } else {
                    w.qc[r] + ck - ln_m
                };
                finish(num, den, log_scale, r0 + r, o, lse);
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
        let maps: Vec<Arc<FeatureMap>> = (0..p.h).map(|h| self.map.feature_map(p.d, h)).collect();
        // The caller's level (a thread-local choice) for every worker.
        let level = Level::current();
        for_each_head(
            p,
            par,
            out,
            || (),
            |_, b, h, o, lse| {
                self.head(&maps[h], p, inputs, params, b, h, level, o, lse);
                0
            },
        );
        Ok(())
    }
}

/// Row `i`: `o = num / den`, `lse = ln den + log_scale`; no key or an underflowed estimate gives
/// the empty-row contract (`o = 0`, `lse = −∞`).
fn finish(num: &[f32], den: f32, log_scale: f32, i: usize, o: &mut [f32], lse: &mut [f32]) {
    let dv = num.len();
    let orow = &mut o[i * dv..(i + 1) * dv];
    if den > 0.0 && den.is_finite() {
        let inv = 1.0 / den;
        orow.iter_mut().zip(num).for_each(|(a, n)| *a = n * inv);
        lse[i] = den.ln() + log_scale;
    } else {
        orow.fill(0.0);
        lse[i] = f32::NEG_INFINITY;
    }
}

impl SparseConfig for Favor {
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
                value: self.map.features.to_string(),
                doc: "random features m; 0 = ⌊D ln D⌋ (lucidrains/fly default, D=64 → 266)",
            },
            ParamInfo {
                name: "orthogonal",
                value: self.map.orthogonal.to_string(),
                doc: "orthogonal blocks with chi row norms (FAVOR+ default true) or i.i.d. rows",
            },
            ParamInfo {
                name: "seed",
                value: self.map.seed.to_string(),
                doc: "projection seed, keyed with the query head (default 0)",
            },
            ParamInfo {
                name: "eps",
                value: self.eps.to_string(),
                doc:
                    "added to every stabilised feature, performer-pytorch style (its default 1e-4; \
                      keys stabilised by one max over the keys a row sees); 0 = unbiased FAVOR+",
            },
        ]
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "features" => self.map.features = parse_param(Self::NAME, key, value)?,
            "orthogonal" => self.map.orthogonal = parse_param(Self::NAME, key, value)?,
            "seed" => self.map.seed = parse_param(Self::NAME, key, value)?,
            "eps" => {
                let eps: f64 = parse_param(Self::NAME, key, value)?;
                // The f32 sums `ε·Σu·Σv` and `ε·Σu·n` stay finite up to 2^20 features and 2^24
                // keys; at 1e6 every row is already the mean of V to ~1e-6.
                if !(0.0..=MAX_EPS).contains(&eps) {
                    return Err(bad_param(Self::NAME, key, value, "a number in [0, 1e12]"));
                }
                self.eps = eps;
            }
            _ => return Err(unknown(self, key)),
        }
        if self.map.features > 1 << 20 {
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
        Ok(Stats::pairs(self.map.pairs(p)))
    }

    fn scratch_bytes(&self, exec: Exec, p: &Problem, par: Par) -> usize {
        let m = self.map.features_for(p.d);
        match exec {
            Exec::Reference => 8 * (p.s_kv * (m + 1) + m + p.s_kv + p.d_v + p.d),
            Exec::Fast => {
                par.threads().min(p.b * p.h).max(1) * Work::bytes(m, p.d, p.d_v)
                    + p.h * 12 * m * p.d
            }
        }
    }
}
