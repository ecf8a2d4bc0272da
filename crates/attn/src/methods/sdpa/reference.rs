//! The specification of exact attention: plain loops, f64 accumulation, no tiling, no threads.
//!
//! For every batch `b`, query head `h` (reading key/value head `h / g`) and query row `i`:
//! 1. score every key: `z_j = scale · Σ_d q[i,d]·k[j,d]`, then softcap, then ALiBi, then `−∞`
//!    where the mask forbids `j` (order documented on [`crate::Params`]);
//! 2. `m = max_j z_j`; if `m = −∞` the row is fully masked: `o_i = 0`, `lse_i = −∞`;
//! 3. `w_j = exp(z_j − m)`, `l = Σ w_j`, `o_i = Σ_j w_j v_j / l`, `lse_i = m + ln l`.
//!
//! Memory: one row of `S_kv` scores at a time.

use crate::dispatch::{Capabilities, Exactness, Inputs, Method, OutputMut, Stats};
use crate::error::Result;
use crate::par::Par;
use crate::params::Resolved;
use crate::problem::Problem;

/// `sdpa-reference`.
#[derive(Debug, Clone, Copy)]
pub struct Reference;

impl Method for Reference {
    fn name(&self) -> &'static str {
        "sdpa-reference"
    }
    fn family(&self) -> &'static str {
        "sdpa"
    }
    fn description(&self) -> &'static str {
        "exact softmax attention, plain loops in f64 (the specification)"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn is_reference(&self) -> bool {
        true
    }
    fn capabilities(&self) -> Capabilities {
        super::capabilities(usize::MAX, None, 0)
    }
    fn scratch_bytes(&self, p: &Problem, _: &Resolved, _: Par) -> usize {
        8 * (p.s_kv + p.d_v)
    }
    fn forward(
        &self,
        p: &Problem,
        inputs: &Inputs,
        params: &Resolved,
        _: Par,
        out: OutputMut,
    ) -> Result<Stats> {
        let mut scores = vec![0.0f64; p.s_kv];
        let mut row = vec![0.0f64; p.d_v];
        for b in 0..p.b {
            for h in 0..p.h {
                for i in 0..p.s_q {
                    let r = (b * p.h + h) * p.s_q + i; // row index in [B, H, S_q]
                    out.lse[r] =
                        attend_row(p, inputs, params, [b, h, i], &mut scores, &mut row) as f32;
                    for (o, x) in out.o[r * p.d_v..(r + 1) * p.d_v].iter_mut().zip(&row) {
                        *o = *x as f32;
                    }
                }
            }
        }
        Ok(Stats::exact(params))
    }
}

/// The whole problem in f64: `(o [B, H, S_q, D_v], lse [B, H, S_q])`. Test oracle.
pub fn forward_f64(p: &Problem, inputs: &Inputs, params: &Resolved) -> (Vec<f64>, Vec<f64>) {
    let mut o = vec![0.0; p.out_len()];
    let mut lse = vec![0.0; p.lse_len()];
    let mut scores = vec![0.0f64; p.s_kv];
    for b in 0..p.b {
        for h in 0..p.h {
            for i in 0..p.s_q {
                let r = (b * p.h + h) * p.s_q + i;
                lse[r] = attend_row(
                    p,
                    inputs,
                    params,
                    [b, h, i],
                    &mut scores,
                    &mut o[r * p.d_v..(r + 1) * p.d_v],
                );
            }
        }
    }
    (o, lse)
}

/// One query row `[b, h, i]`: writes `o_i` into `out` (length `D_v`) and returns `lse_i`.
/// `scores` has length `S_kv`.
pub fn attend_row(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    [b, h, i]: [usize; 3],
    scores: &mut [f64],
    out: &mut [f64],
) -> f64 {
    let hk = h / p.group(); // the key/value head this query head reads
    let pos = params.position(i) as f64;
    let slope = params.slope(h) as f64;
    // 1. scores, softcap, bias, mask
    for (j, z) in scores.iter_mut().enumerate() {
        if !params.mask.allowed(&params.geometry, b, h, i, j) {
            *z = f64::NEG_INFINITY;
            continue;
        }
        let mut dot = 0.0f64;
        for d in 0..p.d {
            dot += inputs.q.get(b, h, i, d) as f64 * inputs.k.get(b, hk, j, d) as f64;
        }
        let mut s = params.scale as f64 * dot;
        if let Some(c) = params.softcap {
            s = c as f64 * (s / c as f64).tanh();
        }
        *z = s - slope * (pos - j as f64).abs();
    }
    // 2. the row maximum; a fully masked row is zero
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    out.fill(0.0);
    if m == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    // 3. weights, their sum, and the weighted sum of values
    let mut l = 0.0f64;
    for (j, &z) in scores.iter().enumerate() {
        let w = (z - m).exp();
        if w == 0.0 {
            continue;
        }
        l += w;
        for (dv, o) in out.iter_mut().enumerate() {
            *o += w * inputs.v.get(b, hk, j, dv) as f64;
        }
    }
    out.iter_mut().for_each(|o| *o /= l);
    m + l.ln()
}
