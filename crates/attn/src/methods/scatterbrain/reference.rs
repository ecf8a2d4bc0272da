//! The specification of `scatterbrain`: the implied matrix materialised pair by pair, in f64.
//!
//! For every batch `b` and query head `h` (keys and values from head `h / g`), with the support
//! of [`Scatterbrain::window`] (`sparse=local`) or [`Clusters::support`] of
//! [`Scatterbrain::clusters`] (`sparse=lsh`: the same function as the fast path) and the feature
//! map `φ` of `performer` with the same seed, features and head:
//! 1. `A_i`: the allowed keys (all, or `j ≤ p_i` under the causal mask); `S_i ⊆ A_i` the support
//!    (a set: a pair in several hash rounds is in it once);
//! 2. `Ã_ij = exp(s·q_i·k_j)` for `j ∈ S_i`, `Ã_ij = φ(q_i)·φ(k_j)` for `j ∈ A_i \ S_i`
//!    (`low_rank=false`: `Ã_ij = 0` there);
//!    With `eps > 0` (`sparse=lsh`), fly's `softmax_eps` (`SBPerformerFeatures`): every
//!    stabilised feature gets `+ε/√m`, `φ(q_i)·φ(k_j) = (1/m)·e^{c_i + C}·Σ_r (e^{e_r(q_i) − c_i}
//!    + ε/√m)(e^{e_r(k_j) − C} + ε/√m)` with `e_r(x) = ω_r·x' − |x'|²/2`, `c_i = max_r e_r(q_i)`
//!    and one `C = max_{j,r} e_r(k_j)` over every key of the head (also under the causal mask);
//! 3. `o_i = Σ_{A_i} Ã_ij v_j / Σ_{A_i} Ã_ij`, `lse_i = ln Σ_{A_i} Ã_ij` (`A_i` empty: `o_i = 0`,
//!    `lse_i = −∞`).
//!
//! Every entry is positive, so no clamp is needed here; the fast path reaches the same sums as
//! "low-rank over `A_i`, plus `e − ℓ` on `S_i`" (spec §4.2 steps 2–5).

use super::{Clusters, Scatterbrain, Sparse};
use crate::dispatch::{Inputs, OutputMut};
use crate::params::Resolved;
use crate::problem::Problem;

/// The method in f64, rounded into `out`; returns the exact scores `Σ_i |S_i|` with the LSH
/// support (0 with the window, whose count is [`Scatterbrain::pairs`]).
///
/// Off-support entries are evaluated in log space from stabilised features, as in the Performer
/// reference: `ln ℓ_ij = c_q,i + c_k − ln m + ln Σ_r φ̂_ir ψ̂_jr` with `c_q,i` the row max of the
/// query exponents and `c_k` one max over all keys and features (four partial sums per dot
/// product, so the long feature dots pipeline).
pub fn forward(
    c: &Scatterbrain,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    out: OutputMut,
) -> u64 {
    let scale = params.scale as f64;
    let low_rank = c.needs_low_rank(p, params);
    let perf = c.performer();
    let nk = p.s_kv;
    let mut t = Vec::with_capacity(nk);
    let mut acc = vec![0.0f64; p.d_v];
    let mut in_support = vec![false; nk];
    let mut seen = vec![false; nk];
    let mut sup: Vec<u32> = Vec::new();
    let mut pairs = 0u64;
    for h in 0..p.h {
        let fm = low_rank.then(|| perf.feature_map(p.d, h));
        let m = fm.as_ref().map_or(0, |f| f.m());
        let ln_m = (m.max(1) as f64).ln();
        // fly's softmax_eps: eps/√m on every stabilised feature (0: none).
        let eps = if c.eps > 0.0 { c.eps / (m.max(1) as f64).sqrt() } else { 0.0 };
        let hk = h / p.group();
        for b in 0..p.b {
            let row = |t: &crate::tensor::TensorRef, hh: usize, s: usize| -> Vec<f64> {
                (0..p.d).map(|e| t.get(b, hh, s, e) as f64).collect()
            };
            let keys: Vec<Vec<f64>> = (0..nk).map(|j| row(&inputs.k, hk, j)).collect();
            let mut psi = vec![0.0f64; nk * m];
            let mut ck = f64::NEG_INFINITY;
            if let Some(fm) = &fm {
                for (j, kj) in keys.iter().enumerate() {
                    exponents(fm, kj, scale, &mut psi[j * m..(j + 1) * m]);
                }
                ck = psi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                psi.iter_mut().for_each(|x| *x = (*x - ck).exp() + eps);
            }
            let clusters: Option<Clusters> =
                (c.sparse == Sparse::Lsh).then(|| c.clusters(p, inputs, b, h));
            let mut phi = vec![0.0f64; m];
            for i in 0..p.s_q {
                let r = (b * p.h + h) * p.s_q + i;
                // S_i as flags over the allowed keys [0, allowed).
                let allowed = c.allowed(params, nk, i);
                match &clusters {
                    None => c.window(params, nk, i).exact().for_each(|j| in_support[j] = true),
                    Some(cl) => {
                        cl.support(i, allowed, &mut seen, &mut sup);
                        pairs += sup.len() as u64;
                        sup.iter().for_each(|&j| in_support[j as usize] = true);
                    }
                }
                let full = in_support[..allowed].iter().all(|&x| x);
                let qi = row(&inputs.q, h, i);
                let mut cq = 0.0;
                if let (Some(fm), false) = (&fm, full) {
                    exponents(fm, &qi, scale, &mut phi);
                    cq = phi.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    phi.iter_mut().for_each(|x| *x = (*x - cq).exp() + eps);
                }
                // t_ij = ln Ã_ij for every allowed key.
                t.clear();
                for (j, kj) in keys.iter().enumerate().take(allowed) {
                    t.push(if in_support[j] {
                        scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                    } else if m > 0 {
                        cq + ck - ln_m + dot4(&phi, &psi[j * m..(j + 1) * m]).ln()
                    } else {
                        f64::NEG_INFINITY
                    });
                }
                in_support.fill(false);
                let mx = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let o = &mut out.o[r * p.d_v..(r + 1) * p.d_v];
                if mx == f64::NEG_INFINITY {
                    o.fill(0.0);
                    out.lse[r] = f32::NEG_INFINITY;
                    continue;
                }
                let mut l = 0.0f64;
                acc.fill(0.0);
                for (j, &tj) in t.iter().enumerate() {
                    let e = (tj - mx).exp();
                    l += e;
                    for (dv, a) in acc.iter_mut().enumerate() {
                        *a += e * inputs.v.get(b, hk, j, dv) as f64;
                    }
                }
                for (x, a) in o.iter_mut().zip(&acc) {
                    *x = (a / l) as f32;
                }
                out.lse[r] = (mx + l.ln()) as f32;
            }
        }
    }
    pairs
}

/// The feature exponents `a_r = √s·ω_r·x − s|x|²/2` (as
/// [`crate::methods::performer::FeatureMap::log_features_f64`], with [`dot4`]).
fn exponents(fm: &crate::methods::performer::FeatureMap, x: &[f64], scale: f64, out: &mut [f64]) {
    let (rs, d) = (scale.sqrt(), fm.d());
    let half_sq = 0.5 * scale * dot4(x, x);
    for (r, o) in out.iter_mut().enumerate() {
        *o = rs * dot4(&fm.omega()[r * d..(r + 1) * d], x) - half_sq;
    }
}

/// `a·b` with four partial sums.
fn dot4(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..4 {
            s[l] += x[l] * y[l];
        }
    }
    (s[0] + s[1]) + (s[2] + s[3]) + tail
}
