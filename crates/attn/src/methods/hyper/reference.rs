//! The specification of `hyper`: softmax attention over the support of [`super::plan`], row by
//! row in f64.
//!
//! For every batch `b` and query head `h` (reading key/value head `h / g`):
//! 1. the support: the pieces of [`super::plan::Head::plan`] — exact causal squares, fully
//!    visible rectangles, and gathered (rows, keys, `ln w`) lists: the hash-sorted heavy blocks
//!    (`w = 1`) and the sampled columns outside each row's own block (`w = N_k/m` per draw);
//! 2. every query row `i` collects its `(j, ln w_j)` from every piece;
//! 3. `s_ij = scale·q_i·k_j`, `lse_i = ln Σ_j exp(s_ij + ln w_j)`,
//!    `o_i = Σ_j exp(s_ij + ln w_j − lse_i)·v_j` (no entry: `o_i = 0`, `lse_i = −∞`).
//!
//! Returns the scores computed (the sum of the pieces' pairs), as the fast path reports.

use super::plan::Piece;
use super::Hyper;
use crate::dispatch::{Inputs, OutputMut};
use crate::methods::pattern::is_causal;
use crate::params::Resolved;
use crate::problem::Problem;

/// The support of every row in f64, rounded into `out`; returns the scores computed.
pub fn forward(c: &Hyper, p: &Problem, inputs: &Inputs, params: &Resolved, out: OutputMut) -> u64 {
    let scale = params.scale as f64;
    let causal = is_causal(&params.mask);
    let w = super::plan::projection(c.seed, c.projections, p.d);
    let mut pairs = 0u64;
    for b in 0..p.b {
        for h in 0..p.h {
            let hk = h / p.group();
            let mut support: Vec<Vec<(usize, f64)>> = vec![Vec::new(); p.s_q];
            for piece in c.plan_head(&w, p, inputs, causal, b, h) {
                pairs += piece.pairs();
                match piece {
                    Piece::Causal { lo, hi } => {
                        for (i, row) in support.iter_mut().enumerate().take(hi).skip(lo) {
                            row.extend((lo..=i).map(|j| (j, 0.0)));
                        }
                    }
                    Piece::Dense { rows, keys } => {
                        for row in &mut support[rows.0..rows.1] {
                            row.extend((keys.0..keys.1).map(|j| (j, 0.0)));
                        }
                    }
                    Piece::Gather { rows, keys, ln_weight } => {
                        for &i in &rows {
                            let row = &mut support[i as usize];
                            row.extend(keys.iter().map(|&j| (j as usize, ln_weight as f64)));
                        }
                    }
                }
            }
            for (i, row) in support.iter().enumerate() {
                let r = (b * p.h + h) * p.s_q + i;
                let o = &mut out.o[r * p.d_v..(r + 1) * p.d_v];
                if row.is_empty() {
                    o.fill(0.0);
                    out.lse[r] = f32::NEG_INFINITY;
                    continue;
                }
                let z: Vec<f64> = row
                    .iter()
                    .map(|&(j, lw)| {
                        let s: f64 = (0..p.d)
                            .map(|d| {
                                inputs.q.get(b, h, i, d) as f64 * inputs.k.get(b, hk, j, d) as f64
                            })
                            .sum();
                        scale * s + lw
                    })
                    .collect();
                let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let den: f64 = z.iter().map(|x| (x - mx).exp()).sum();
                let mut acc = vec![0.0f64; p.d_v];
                for (&(j, _), &x) in row.iter().zip(&z) {
                    let e = (x - mx).exp();
                    for (dv, a) in acc.iter_mut().enumerate() {
                        *a += e * inputs.v.get(b, hk, j, dv) as f64;
                    }
                }
                for (x, a) in o.iter_mut().zip(&acc) {
                    *x = (a / den) as f32;
                }
                out.lse[r] = (mx + den.ln()) as f32;
            }
        }
    }
    pairs
}
