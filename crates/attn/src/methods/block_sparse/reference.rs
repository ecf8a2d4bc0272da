//! Plain-loop definition of Block-Sparse's pooled block scores, in f64 (spec §2.2): tests hold
//! the selection code to it.

use super::BlockSparse;
use crate::dispatch::Inputs;
use crate::problem::Problem;

/// `σ[qb][c] = q̄_qb · k̄_c` for query head `(b, h)`, every query block and every key block (the
/// mask is not applied here), where `q̄`, `k̄` are the means of the real rows of each block.
pub fn pooled_scores_f64(
    c: &BlockSparse,
    p: &Problem,
    inputs: &Inputs,
    b: usize,
    h: usize,
) -> Vec<Vec<f64>> {
    let bs = c.block;
    let hk = h / p.group();
    let mean = |t: &crate::tensor::TensorRef, hh: usize, s0: usize, s1: usize| -> Vec<f64> {
        (0..p.d)
            .map(|d| (s0..s1).map(|s| t.get(b, hh, s, d) as f64).sum::<f64>() / (s1 - s0) as f64)
            .collect()
    };
    let kbar: Vec<Vec<f64>> = (0..p.s_kv.div_ceil(bs))
        .map(|kc| mean(&inputs.k, hk, kc * bs, (kc * bs + bs).min(p.s_kv)))
        .collect();
    (0..p.s_q.div_ceil(bs))
        .map(|qb| {
            let qbar = mean(&inputs.q, h, qb * bs, (qb * bs + bs).min(p.s_q));
            kbar.iter().map(|k| qbar.iter().zip(k).map(|(a, b)| a * b).sum()).collect()
        })
        .collect()
}
