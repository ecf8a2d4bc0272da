//! The specification of sparse attention over a [`BlockList`]: plain loops, f64 accumulation.
//!
//! For every batch `b`, query head `h` (reading key/value head `h / g`) and query row `i`:
//! 1. the support `J = BlockList::support(i)` (listed keys inside the mask's interval);
//! 2. `z_j = scale · q_i·k_j` for `j ∈ J`; `m = max z` (`J` empty: `o_i = 0`, `lse_i = −∞`);
//! 3. `w_j = exp(z_j − m)`, `o_i = Σ w_j v_j / Σ w_j`, `lse_i = m + ln Σ w_j`.

use super::BlockList;
use crate::dispatch::{Inputs, OutputMut};
use crate::params::Resolved;
use crate::problem::Problem;

/// Sparse attention of the whole problem in f64: `(o [B, H, S_q, D_v], lse [B, H, S_q])`.
///
/// # Panics
/// When the pattern was built for another `B·H`, `S_q` or `S_kv` than the problem.
pub fn forward_f64(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    pattern: &BlockList,
) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(
        (pattern.heads(), pattern.s_q(), pattern.s_kv()),
        (p.b * p.h, p.s_q, p.s_kv),
        "pattern built for another problem"
    );
    let mut o = vec![0.0f64; p.out_len()];
    let mut lse = vec![0.0f64; p.lse_len()];
    for b in 0..p.b {
        for h in 0..p.h {
            let bh = b * p.h + h;
            for i in 0..p.s_q {
                let r = bh * p.s_q + i; // row index in [B, H, S_q]
                let out = &mut o[r * p.d_v..(r + 1) * p.d_v];
                // 1. the support, 2.–3. softmax over it
                let keys = pattern.support(params, bh, i);
                lse[r] = softmax_row_f64(p, inputs, params, (b, h, i), &keys, out);
            }
        }
    }
    (o, lse)
}

/// Steps 2–3 for query row `i` of head `(b, h)` over the keys `keys`: writes `o` (`D_v` values,
/// zero for an empty support) and returns the row's LSE (`−∞` for an empty support).
pub fn softmax_row_f64(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    (b, h, i): (usize, usize, usize),
    keys: &[usize],
    o: &mut [f64],
) -> f64 {
    let hk = h / p.group(); // the key/value head this query head reads
    let z: Vec<f64> = keys
        .iter()
        .map(|&j| {
            let dot: f64 = (0..p.d)
                .map(|d| inputs.q.get(b, h, i, d) as f64 * inputs.k.get(b, hk, j, d) as f64)
                .sum();
            params.scale as f64 * dot
        })
        .collect();
    o.fill(0.0);
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    // weights exp(z_j − m) and the weighted sum of values
    let mut l = 0.0;
    for (&j, &zj) in keys.iter().zip(&z) {
        let w = (zj - m).exp();
        l += w;
        for (dv, x) in o.iter_mut().enumerate() {
            *x += w * inputs.v.get(b, hk, j, dv) as f64;
        }
    }
    o.iter_mut().for_each(|x| *x /= l);
    m + l.ln()
}

/// [`forward_f64`] rounded into the caller's f32 buffers; returns the pairs scored
/// ([`BlockList::scored_pairs`]).
pub fn forward(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    pattern: &BlockList,
    out: OutputMut,
) -> u64 {
    let (o, lse) = forward_f64(p, inputs, params, pattern);
    out.o.iter_mut().zip(&o).for_each(|(x, y)| *x = *y as f32);
    out.lse.iter_mut().zip(&lse).for_each(|(x, y)| *x = *y as f32);
    pattern.scored_pairs(params)
}
