//! NaLaFormer's norm-aware linear attention (Meng et al. 2025, spec `linear.md` A2): the query is
//! split into norm and direction, `q = ‖q‖ · q̂`; the direction enters the features, the norm only
//! the exponent:
//!
//! ```text
//! p(q)  = λ (1/2 + tanh ‖q‖₂)                              ∈ [λ/2, 3λ/2)
//! φ_q(q) = [ relu(q̂)^{p(q)} ‖ relu(−q̂)^{p(q)} ]            ∈ R^{2D}   (q̂ = 0 when q = 0)
//! φ_k(k) = [ relu(k∘k∘k) ‖ relu(−k∘k∘k) ]                  ∈ R^{2D}
//! o_i    = Σ_j (φ_q(q_i)·φ_k(k_j)) v_j / (Σ_j φ_q(q_i)·φ_k(k_j) + ε n_i)
//! ```
//!
//! (`n_i` keys read: the reference's mean-normalisation `(1/n)Σ … / ((1/n)Σ … + ε)` multiplied
//! through by `n_i`). `[relu(u) ‖ relu(−u)]` is non-negative and has the norm of `u`; a score only
//! gets contributions from channels where `q` and `k` have the same sign. Every score is `≥ 0`, so
//! the normaliser is `≥ ε n_i > 0` for `ε > 0`.
//!
//! [`reference()`] is the quadratic form in f64; the recurrent and chunked forms map q and k to
//! features ([`query_features`], [`key_features`]) and run [`super::vanilla`] with the identity map,
//! scale 1 and `eps`.

use super::keys_seen;
use crate::primitives::simd::{dispatch, exp2_scalar, log2_scalar, Kernel, Level, Simd};

/// The features of one query: `dst: [2D]` from `q: [D]` at [`Level::current`] (see
/// [`query_features_at`]).
pub fn query_features(q: &[f32], lambda: f32, dst: &mut [f32]) {
    query_features_at(Level::current(), q, q.len(), lambda, dst);
}

/// The features of the query rows `q: [n, D]` into `dst: [n, 2D]` at SIMD level `level`: the
/// norm summed in f64, the exponent `p` per row, then per channel `a^p = 2^(p·log₂ a)` with the
/// vector `log₂`/`2^x` of [`crate::primitives::simd`] (a libm `powf` per channel was 70 % of the
/// chunked form's time), for the positive and the negative half separately (`log₂ 0 = −∞`
/// gives `0^p = 0`). Channels past the last full vector use the one-lane level.
pub fn query_features_at(level: Level, q: &[f32], d: usize, lambda: f32, dst: &mut [f32]) {
    dispatch(level, QueryFeatures { q, d, lambda, dst });
}

struct QueryFeatures<'a> {
    q: &'a [f32],
    d: usize,
    lambda: f32,
    dst: &'a mut [f32],
}

impl Kernel for QueryFeatures<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let d = self.d;
        for (q, dst) in self.q.chunks_exact(d).zip(self.dst.chunks_exact_mut(2 * d)) {
            let norm = q.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let p = self.lambda * (0.5 + (norm as f32).tanh());
            let inv = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
            let (pos, neg) = dst.split_at_mut(d);
            let body = d - d % S::LANES;
            // SAFETY: `dispatch` runs this at a level the CPU has; every pointer below is
            // `r..r + LANES` with `r + LANES ≤ body ≤ d`, inside `q`, `pos` and `neg`.
            unsafe {
                let (vp, vi, zero) = (S::splat(p), S::splat(inv), S::splat(0.0));
                for r in (0..body).step_by(S::LANES) {
                    let u = S::mul(S::load(q.as_ptr().add(r)), vi);
                    let up = S::max(u, zero);
                    let un = S::max(S::sub(zero, u), zero);
                    S::store(pos.as_mut_ptr().add(r), S::exp2(S::mul(vp, S::log2(up))));
                    S::store(neg.as_mut_ptr().add(r), S::exp2(S::mul(vp, S::log2(un))));
                }
            }
            for r in body..d {
                let u = q[r] * inv;
                pos[r] = exp2_scalar(p * log2_scalar(u.max(0.0)));
                neg[r] = exp2_scalar(p * log2_scalar((-u).max(0.0)));
            }
        }
    }
}

/// The features of one key: `dst: [2D]` from `k: [D]`.
pub fn key_features(k: &[f32], dst: &mut [f32]) {
    let d = k.len();
    for (r, &x) in k.iter().enumerate() {
        let c = x * x * x;
        dst[r] = c.max(0.0);
        dst[d + r] = (-c).max(0.0);
    }
}

fn query_features_f64(q: &[f32], lambda: f64) -> Vec<f64> {
    let d = q.len();
    let norm = q.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let p = lambda * (0.5 + norm.tanh());
    let mut f = vec![0.0f64; 2 * d];
    for (r, &x) in q.iter().enumerate() {
        let u = if norm > 0.0 { x as f64 / norm } else { 0.0 };
        f[r] = u.max(0.0).powf(p);
        f[d + r] = (-u).max(0.0).powf(p);
    }
    f
}

fn key_features_f64(k: &[f32]) -> Vec<f64> {
    let d = k.len();
    let mut f = vec![0.0f64; 2 * d];
    for (r, &x) in k.iter().enumerate() {
        let c = x as f64 * x as f64 * x as f64;
        f[r] = c.max(0.0);
        f[d + r] = (-c).max(0.0);
    }
    f
}

/// What one call computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// `λ` of the query exponent.
    pub lambda: f32,
    /// `ε` of the normaliser (per key read).
    pub eps: f32,
    /// Causal (row `i` reads keys `j ≤ q_offset + i`) or not (every key).
    pub causal: bool,
    /// Absolute position of query row 0 (causal only).
    pub q_offset: i64,
}

/// The naive quadratic form in f64: the feature maps, every score `φ_q(q_i)·φ_k(k_j)`, the
/// normalised sum; plain loops. Heads as [`super::vanilla::Head`] (`dk` = `D`). Writes
/// `o: [S_q, D_v]`, `lse: [S_q]` (`ln` of the normaliser; `o = 0`, `lse = −∞` for a row that reads
/// no key or whose normaliser is 0). Returns the number of scores computed.
pub fn reference(cfg: &Config, h: &super::vanilla::Head, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv) = (h.dk, h.dv);
    let (s_q, s_kv) = (h.q.len() / dk, h.k.len() / dk);
    let fk: Vec<Vec<f64>> =
        (0..s_kv).map(|j| key_features_f64(&h.k[j * dk..(j + 1) * dk])).collect();
    let mut pairs = 0;
    for i in 0..s_q {
        let fq = query_features_f64(&h.q[i * dk..(i + 1) * dk], cfg.lambda as f64);
        let n = if cfg.causal { keys_seen(cfg.q_offset, i, s_kv) } else { s_kv };
        let (mut num, mut den) = (vec![0.0f64; dv], 0.0f64);
        for (j, fk) in fk.iter().enumerate().take(n) {
            let s: f64 = fq.iter().zip(fk).map(|(a, b)| a * b).sum();
            den += s;
            for (x, &v) in num.iter_mut().zip(&h.v[j * dv..(j + 1) * dv]) {
                *x += s * v as f64;
            }
        }
        pairs += n as u64;
        let den = den + cfg.eps as f64 * n as f64;
        let dst = &mut o[i * dv..(i + 1) * dv];
        if n == 0 || den == 0.0 {
            dst.fill(0.0);
            lse[i] = f32::NEG_INFINITY;
        } else {
            for (d, x) in dst.iter_mut().zip(&num) {
                *d = (x / den) as f32;
            }
            lse[i] = den.ln() as f32;
        }
    }
    pairs
}
