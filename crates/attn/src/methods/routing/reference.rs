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
//! With `combine=average` (spec §6.2 step 5), steps 3–4 are per cluster instead: for each cluster
//! `c` that selected query `i` (under top-`w` a query no cluster took stays in none), an ordinary
//! softmax over `S_c(i) = { j : c ∈ clusters'(j), mask allows (i, j) } ∪ F(i)` gives `o_c`,
//! `lse_c` (an empty `S_c(i)`: `o_c = 0`, no mass); `o_i = Σ_c o_c / (n_i + 1e-5)` with `n_i =
//! |clusters(i)|` (the pip port's constant), `lse_i = ln((1/n_i) Σ_c e^{lse_c})` (the log of the
//! mean per-cluster mass); `n_i = 0`: `o = 0`, `lse = −∞`.
//!
//! The fast path computes `R(i) \ F(i)` cluster by cluster, each pair's score lowered by
//! `ln c_ij` (`c_ij` = clusters `i` and `j` share, so a pair met in several clusters weighs once
//! in total), and `F(i)` separately, merged by LSE: exactly this softmax. The pair count is the fast path's
//! ([`Routing::scored_pairs`]), so both implementations report the same cost.

use super::{allowed, Combine, Routing, AVERAGE_EPS};
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
    let mut sum = vec![0.0f64; p.d_v];
    for b in 0..p.b {
        for h in 0..p.h {
            let hk = h / p.group();
            let routes = c.routes(p, inputs, params, b, h);
            pairs += c.scored_pairs(&routes, params, p.s_q, p.s_kv);
            let hd = Head { p, inputs, b, h, hk, scale };
            for i in 0..p.s_q {
                let row = (b * p.h + h) * p.s_q + i;
                let o = &mut out.o[row * p.d_v..(row + 1) * p.d_v];
                match c.combine {
                    Combine::Union => {
                        // U_i: routed and allowed, or in the local window.
                        support.clear();
                        support.extend((0..p.s_kv).filter(|&j| {
                            c.in_fixed(params, i, j)
                                || (routes.routed(i, j) && allowed(params, i, j))
                        }));
                        let l = hd.softmax(i, &support, &mut z, &mut acc);
                        for (x, a) in o.iter_mut().zip(&acc) {
                            *x = *a as f32;
                        }
                        out.lse[row] = l as f32;
                    }
                    Combine::Average => {
                        // One softmax per cluster of the query over S_c(i); their mean.
                        let clusters = routes.clusters_of(i);
                        sum.fill(0.0);
                        let mut masses: Vec<f64> = Vec::with_capacity(clusters.len());
                        for &cl in clusters {
                            support.clear();
                            support.extend((0..p.s_kv).filter(|&j| {
                                c.in_fixed(params, i, j)
                                    || (routes.clusters_of_key(j).contains(&cl)
                                        && allowed(params, i, j))
                            }));
                            let l = hd.softmax(i, &support, &mut z, &mut acc);
                            sum.iter_mut().zip(&acc).for_each(|(s, a)| *s += a);
                            masses.push(l);
                        }
                        let n = clusters.len() as f64;
                        for (x, s) in o.iter_mut().zip(&sum) {
                            *x = (s / (n + AVERAGE_EPS as f64)) as f32;
                        }
                        let mx = masses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        out.lse[row] = if mx == f64::NEG_INFINITY {
                            f32::NEG_INFINITY
                        } else {
                            let m: f64 = masses.iter().map(|l| (l - mx).exp()).sum();
                            (mx + (m / n).ln()) as f32
                        };
                    }
                }
            }
        }
    }
    pairs
}

/// One `(b, h)`'s inputs, for the softmax of a row over a key set.
struct Head<'a> {
    p: &'a Problem,
    inputs: &'a Inputs<'a>,
    b: usize,
    h: usize,
    hk: usize,
    scale: f64,
}

impl Head<'_> {
    /// Softmax of row `i` over `support` in f64: `acc` becomes the normalised output (0 when the
    /// support is empty); returns the log-sum-exp (−∞ when empty).
    fn softmax(&self, i: usize, support: &[usize], z: &mut Vec<f64>, acc: &mut [f64]) -> f64 {
        let (p, inputs, b) = (self.p, self.inputs, self.b);
        acc.fill(0.0);
        if support.is_empty() {
            return f64::NEG_INFINITY;
        }
        z.clear();
        z.extend(support.iter().map(|&j| {
            let dot: f64 = (0..p.d)
                .map(|e| {
                    inputs.q.get(b, self.h, i, e) as f64 * inputs.k.get(b, self.hk, j, e) as f64
                })
                .sum();
            self.scale * dot
        }));
        let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut l = 0.0f64;
        for (&j, &zj) in support.iter().zip(z.iter()) {
            let e = (zj - mx).exp();
            l += e;
            for (dv, a) in acc.iter_mut().enumerate() {
                *a += e * inputs.v.get(b, self.hk, j, dv) as f64;
            }
        }
        acc.iter_mut().for_each(|a| *a /= l);
        mx + l.ln()
    }
}
