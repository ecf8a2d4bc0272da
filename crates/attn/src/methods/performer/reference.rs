//! The specification of `performer`: the FAVOR+ estimate materialised pair by pair, in f64.
//!
//! For every batch `b` and query head `h` (reading key/value head `h / g`), with the feature map
//! `φ` of head `h` ([`super::FeatureMap`], exponents in f64):
//! 1. the support `J_i`: every key (no mask) or `j ≤ p_i` (causal);
//! 2. `ℓ_ij = φ(q_i)·φ(k_j) = (1/m) Σ_r exp(a_ir + e_jr)` for every pair of the support;
//! 3. `o_i = Σ_{j∈J_i} ℓ_ij v_j / Σ_{j∈J_i} ℓ_ij`, `lse_i = ln Σ_{j∈J_i} ℓ_ij`
//!    (`J_i` empty: `o_i = 0`, `lse_i = −∞`).
//!
//! This is the causal-masked dense form `φ(Q)φ(K)ᵀ`, normalised — the oracle the prefix-sum fast
//! path must equal (spec §1.4 (f)).
//!
//! With `eps > 0` the features are performer-pytorch's (see [`forward_eps`]).

use super::Favor;
use crate::dispatch::{Inputs, OutputMut};
use crate::mask::Mask;
use crate::params::Resolved;
use crate::problem::Problem;

/// The estimate in f64, rounded into `out` (`eps > 0`: [`forward_eps`]).
///
/// Features are kept stabilised (`φ(x)_r = exp(c + a_r − c − ½ ln m)` with `c` the row max for
/// queries and one max over all keys and features for keys), so `ℓ_ij` is
/// `exp(c_q,i + c_k − ln m) · Σ_r φ̂_ir ψ̂_jr`, a plain f64 dot product per pair.
pub fn forward(c: &Favor, p: &Problem, inputs: &Inputs, params: &Resolved, out: OutputMut) {
    if c.eps > 0.0 {
        return forward_eps(c, p, inputs, params, out);
    }
    let scale = params.scale as f64;
    let causal = matches!(params.mask, Mask::Causal);
    for h in 0..p.h {
        let fm = c.map.feature_map(p.d, h);
        let m = fm.m();
        let ln_m = (m as f64).ln();
        let hk = h / p.group();
        for b in 0..p.b {
            let row = |t: &crate::tensor::TensorRef, hh: usize, s: usize| -> Vec<f64> {
                (0..p.d).map(|d| t.get(b, hh, s, d) as f64).collect()
            };
            let mut e = vec![0.0f64; p.s_kv * m];
            // Keys in groups of 16, so each projection row is read once per group.
            for j0 in (0..p.s_kv).step_by(16) {
                let keys: Vec<Vec<f64>> =
                    (j0..p.s_kv.min(j0 + 16)).map(|j| row(&inputs.k, hk, j)).collect();
                fm.log_features_f64_rows(&keys, scale, &mut e[j0 * m..(j0 + keys.len()) * m]);
            }
            let ck = e.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            e.iter_mut().for_each(|x| *x = (*x - ck).exp());
            let mut a = vec![0.0f64; m];
            let mut l = Vec::with_capacity(p.s_kv);
            let mut acc = vec![0.0f64; p.d_v];
            for i in 0..p.s_q {
                let r = (b * p.h + h) * p.s_q + i;
                fm.log_features_f64(&row(&inputs.q, h, i), scale, &mut a);
                let cq = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                a.iter_mut().for_each(|x| *x = (*x - cq).exp());
                let n = if causal {
                    (params.position(i) + 1).clamp(0, p.s_kv as i64) as usize
                } else {
                    p.s_kv
                };
                l.clear();
                l.extend((0..n).map(|j| super::dot_f64(&a, &e[j * m..(j + 1) * m])));
                let den: f64 = l.iter().sum();
                let o = &mut out.o[r * p.d_v..(r + 1) * p.d_v];
                if !(den > 0.0 && den.is_finite()) {
                    o.fill(0.0);
                    out.lse[r] = f32::NEG_INFINITY;
                    continue;
                }
                acc.fill(0.0);
                for (j, &w) in l.iter().enumerate() {
                    for (dv, x) in acc.iter_mut().enumerate() {
                        *x += w * inputs.v.get(b, hk, j, dv) as f64;
                    }
                }
                for (x, a) in o.iter_mut().zip(&acc) {
                    *x = (*a / den) as f32;
                }
                out.lse[r] = (den.ln() + cq + ck - ln_m) as f32;
            }
        }
    }
}

/// The estimate with performer-pytorch's features (`eps > 0`), in f64, rounded into `out`.
///
/// For every batch `b` and query head `h`, with `a_r(x) = ω_r·x'` and `e_r(x) = a_r(x) − |x'|²/2`
/// (the exponents of [`super::FeatureMap::log_features_f64`]):
/// 1. the support `J_i`: every key (no mask) or `j ≤ p_i` (causal);
/// 2. the key stabiliser `M_i = max_{j∈J_i} max_r a_r(k_j)` — the peer's one max over all keys
///    and features when unmasked; over the keys row `i` sees when causal (the peer takes it over
///    every key, later ones included);
/// 3. features `u_ir = exp(e_r(q_i) − max_r a_r(q_i)) + eps` and
///    `w_jr = exp(e_r(k_j) − M_i) + eps` (the peer's `m^{-1/2}` factors are kept in step 4);
/// 4. `ℓ_ij = (1/m) Σ_r u_ir w_jr`, `o_i = Σ_{j∈J_i} ℓ_ij v_j / Σ_{j∈J_i} ℓ_ij` and
///    `lse_i = ln Σ_{j∈J_i} ℓ_ij + max_r a_r(q_i) + M_i` (the stabilisers added back, so that
///    `eps → 0` gives the FAVOR+ estimate of `lse`); `J_i` empty: `o_i = 0`, `lse_i = −∞`.
///
/// The key features `w` are recomputed whenever `M_i` changes (causal rows: when a newly seen
/// key has a larger projection).
pub fn forward_eps(c: &Favor, p: &Problem, inputs: &Inputs, params: &Resolved, out: OutputMut) {
    let scale = params.scale as f64;
    let causal = matches!(params.mask, Mask::Causal);
    let eps = c.eps;
    for h in 0..p.h {
        let fm = c.map.feature_map(p.d, h);
        let m = fm.m();
        let hk = h / p.group();
        for b in 0..p.b {
            let row = |t: &crate::tensor::TensorRef, hh: usize, s: usize| -> Vec<f64> {
                (0..p.d).map(|d| t.get(b, hh, s, d) as f64).collect()
            };
            let half = |x: &[f64]| 0.5 * scale * x.iter().map(|v| v * v).sum::<f64>();
            // Key exponents e_r(k_j) (`S_kv × m`) and largest projections max_r a_r(k_j).
            let mut e = vec![0.0f64; p.s_kv * m];
            let mut ka = vec![0.0f64; p.s_kv];
            for j in 0..p.s_kv {
                let k = row(&inputs.k, hk, j);
                let ej = &mut e[j * m..(j + 1) * m];
                fm.log_features_f64(&k, scale, ej);
                ka[j] = ej.iter().copied().fold(f64::NEG_INFINITY, f64::max) + half(&k);
            }
            // Key features w under the stabiliser `big_m`, computed for keys `..ready`.
            let mut w = vec![0.0f64; p.s_kv * m];
            let (mut big_m, mut ready) = (f64::NAN, 0usize);
            let mut u = vec![0.0f64; m];
            let mut acc = vec![0.0f64; p.d_v];
            for i in 0..p.s_q {
                let r = (b * p.h + h) * p.s_q + i;
                let n = if causal {
                    (params.position(i) + 1).clamp(0, p.s_kv as i64) as usize
                } else {
                    p.s_kv
                };
                let o = &mut out.o[r * p.d_v..(r + 1) * p.d_v];
                if n == 0 {
                    o.fill(0.0);
                    out.lse[r] = f32::NEG_INFINITY;
                    continue;
                }
                let mi = ka[..n].iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if mi != big_m {
                    (big_m, ready) = (mi, 0);
                }
                for j in ready..n {
                    for t in 0..m {
                        w[j * m + t] = (e[j * m + t] - big_m).exp() + eps;
                    }
                }
                ready = ready.max(n);
                let q = row(&inputs.q, h, i);
                fm.log_features_f64(&q, scale, &mut u);
                let eq_max = u.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let qa = eq_max + half(&q);
                // exp(e_r − max_r a_r) = exp(e_r − max_r e_r − |q'|²/2).
                u.iter_mut().for_each(|x| *x = (*x - qa).exp() + eps);
                let (mut den, ln_m) = (0.0f64, (m as f64).ln());
                acc.fill(0.0);
                for j in 0..n {
                    let l = super::dot_f64(&u, &w[j * m..(j + 1) * m]);
                    den += l;
                    for (dv, x) in acc.iter_mut().enumerate() {
                        *x += l * inputs.v.get(b, hk, j, dv) as f64;
                    }
                }
                if !(den > 0.0 && den.is_finite()) {
                    o.fill(0.0);
                    out.lse[r] = f32::NEG_INFINITY;
                    continue;
                }
                for (x, a) in o.iter_mut().zip(&acc) {
                    *x = (*a / den) as f32;
                }
                out.lse[r] = (den.ln() + qa + big_m - ln_m) as f32;
            }
        }
    }
}
