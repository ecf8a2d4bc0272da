//! The specification of `reformer`: softmax over the union of the rounds' supports, in f64.
//!
//! For every batch `b` and query head `h` (keys and values from head `h / g`), with the rounds of
//! [`Reformer::rounds`] (the same hashing as the fast path):
//! 1. `J_r(i)`: the tokens of the chunk of `i` and of the chunk before it (cyclic) in round `r`,
//!    allowed by the mask (causal: `j ≤ p_i`), without `i` itself;
//! 2. `U_i = ∪_r J_r(i)`; if `U_i` is empty, `U_i = {i}` when the mask allows `(i, i)` (a token
//!    with no other target attends to itself), else the row is empty (`o = 0`, `lse = −∞`);
//! 3. `z_ij = s·q_i·k_j/|k_j|`, `o_i = Σ_{U_i} e^{z_ij} v_j / Σ_{U_i} e^{z_ij}`,
//!    `lse_i = ln Σ_{U_i} e^{z_ij}`.
//!
//! This is what the fast path's per-round softmax with the duplicate correction (`z_ij − ln c_ij`,
//! `c_ij` = rounds in which `j` neighbours `i`) merged over rounds by LSE equals exactly
//! (README). The pair count is `Σ_r |J_r(i)|` (+1 for a row that falls back on itself): every
//! round scores its pairs again.

use super::{allowed, Reformer};
use crate::dispatch::{Inputs, OutputMut};
use crate::params::Resolved;
use crate::problem::Problem;

/// The method in f64, rounded into `out`; returns the pairs scored.
pub fn forward(
    c: &Reformer,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    out: OutputMut,
) -> u64 {
    let n = p.s_q;
    let scale = params.scale as f64;
    let nb = c.buckets_for(n);
    let mut pairs = 0u64;
    let mut in_union = vec![false; n];
    let mut union: Vec<usize> = Vec::with_capacity(n);
    let mut z: Vec<f64> = Vec::with_capacity(n);
    let mut acc = vec![0.0f64; p.d_v];
    for h in 0..p.h {
        let rot = c.rotations(p.d, h, nb);
        let hk = h / p.group();
        for b in 0..p.b {
            let rounds = c.rounds(p, inputs, &rot, b, h);
            let knorm: Vec<f64> = (0..n)
                .map(|j| {
                    (0..p.d).map(|e| (inputs.k.get(b, hk, j, e) as f64).powi(2)).sum::<f64>().sqrt()
                })
                .collect();
            for i in 0..n {
                union.clear();
                for r in 0..rounds.rounds() {
                    for (j, seen) in in_union.iter_mut().enumerate() {
                        if j != i && allowed(params, i, j) && rounds.neighbours(r, i, j) {
                            pairs += 1;
                            if !*seen {
                                *seen = true;
                                union.push(j);
                            }
                        }
                    }
                }
                union.iter().for_each(|&j| in_union[j] = false);
                if union.is_empty() && allowed(params, i, i) {
                    pairs += 1;
                    union.push(i);
                }
                let row = (b * p.h + h) * n + i;
                let o = &mut out.o[row * p.d_v..(row + 1) * p.d_v];
                if union.is_empty() {
                    o.fill(0.0);
                    out.lse[row] = f32::NEG_INFINITY;
                    continue;
                }
                z.clear();
                z.extend(union.iter().map(|&j| {
                    let dot: f64 = (0..p.d)
                        .map(|e| inputs.q.get(b, h, i, e) as f64 * inputs.k.get(b, hk, j, e) as f64)
                        .sum();
                    if knorm[j] > 0.0 {
                        scale * dot / knorm[j]
                    } else {
                        0.0
                    }
                }));
                let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut l = 0.0f64;
                acc.fill(0.0);
                for (&j, &zj) in union.iter().zip(&z) {
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
