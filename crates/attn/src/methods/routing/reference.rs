//! The specification of `routing`: softmax over each row's support, in f64.
//!
//! For every batch `b` and query head `h` (keys and values from head `h / g`), with the routing
//! of [`Routing::routes`] (the same clustering as the fast path):
//! 1. `R(i)`: the keys sharing at least one cluster with query `i`, allowed by the mask (causal:
//!    `j ≤ p_i`). Nearest routing: the query's `r` nearest centroids, the key's `r_k` nearest.
//!    Top-`w` (balanced, no mask): the clusters that took the query among their `w_q` most
//!    similar (or, taken by none, its nearest) and those that took the key among their `w_k`;
//! 2. `F(i)`: the sinks `j < sink` allowed by the mask and the local window `p_i − L < j ≤ p_i`
//!    (inside `[0, S_kv)`);
//! 3. `U_i = R(i) ∪ F(i)`; if empty the row is empty (`o = 0`, `lse = −∞`);
//! 4. `z_ij = s·q_i·k_j` (the raw vectors: the unit vectors only route),
//!    `o_i = Σ_{U_i} e^{z_ij} v_j / Σ_{U_i} e^{z_ij}`, `lse_i = ln Σ_{U_i} e^{z_ij}`.
//!
//! The fast path computes `R(i) \ F(i)` cluster by cluster, each pair's score lowered by
//! `ln c_ij` (`c_ij` = clusters `i` and `j` share, so a pair met in several clusters weighs once
//! in total), and `F(i)` separately, merged by LSE: exactly this softmax. The pair count is the fast path's
//! ([`Routing::scored_pairs`]), so both implementations report the same cost.

use super::{allowed, Routing};
use crate::dispatch::{Inputs, OutputMut};
use crate::params::Resolved;
use crate::problem::Problem;

/// The method in f64, rounded into `out`; returns the pairs the fast path scores.
pub fn forward(
    c: &Routing,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    out: OutputMut,
) -> u64 {
    let scale = params.scale as f64;
    let mut pairs = 0u64;
    let mut support: Vec<usize> = Vec::with_capacity(p.s_kv);
    let mut z: Vec<f64> = Vec::with_capacity(p.s_kv);
    let mut acc = vec![0.0f64; p.d_v];
    for b in 0..p.b {
        for h in 0..p.h {
            let hk = h / p.group();
            let routes = c.routes(p, inputs, params, b, h);
            pairs += c.scored_pairs(&routes, params, p.s_q, p.s_kv);
            for i in 0..p.s_q {
                // U_i: routed and allowed, or in the local window.
                support.clear();
                support.extend((0..p.s_kv).filter(|&j| {
                    c.in_fixed(params, i, j) || (routes.routed(i, j) && allowed(params, i, j))
                }));
                let row = (b * p.h + h) * p.s_q + i;
                let o = &mut out.o[row * p.d_v..(row + 1) * p.d_v];
                if support.is_empty() {
                    o.fill(0.0);
                    out.lse[row] = f32::NEG_INFINITY;
                    continue;
                }
                z.clear();
                z.extend(support.iter().map(|&j| {
                    let dot: f64 = (0..p.d)
                        .map(|e| inputs.q.get(b, h, i, e) as f64 * inputs.k.get(b, hk, j, e) as f64)
                        .sum();
                    scale * dot
                }));
                let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut l = 0.0f64;
                acc.fill(0.0);
                for (&j, &zj) in support.iter().zip(&z) {
                    let e = (zj - mx).exp();
                    l += e;
                    for (dv, a) in acc.iter_mut().enumerate() {
                        *a += e * inputs.v.get(b, hk, j, dv) as f64;
                    }
                }
                for (x, a) in o.iter_mut().zip(&acc) {
                    *x = (a / l) as f32;
                }
                out.lse[row] = (mx + l.ln()) as f32;
            }
        }
    }
    pairs
}
