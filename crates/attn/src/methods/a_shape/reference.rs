//! The specification of `a-shape`: plain loops in f64 over the element-wise definition of the
//! block pattern.
//!
//! Row `i` belongs to query block `⌊i / block⌋` whose rows sit at positions `first..=last`. It
//! sees key `j` iff `j ≤ p_i` and key block `c = ⌊j / block⌋` is a sink block
//! (`c < ⌈sink / block⌉`) or a local block (`⌊max(first − local + 1, 0) / block⌋ ≤ c`). The fast
//! path scores whole key blocks for all rows of a query block, so its pair count is that of the
//! blocks; this reference counts the same way (whole blocks up to `S_kv`, for every row of the
//! query block, skipping blocks no row can see).

use super::AShape;
use crate::dispatch::{Inputs, OutputMut};
use crate::params::Resolved;
use crate::problem::Problem;

/// Whether row `i` sees key `j`.
pub fn allowed(c: &AShape, params: &Resolved, s_q: usize, i: usize, j: usize) -> bool {
    let qb = i / c.block;
    let first = params.position(qb * c.block);
    let last = params.position((qb * c.block + c.block).min(s_q) - 1);
    let pos = params.position(i);
    if j as i64 > pos {
        return false;
    }
    let (nsink, local) = c.blocks_of(first, last);
    let kb = j / c.block;
    kb < nsink || local.is_some_and(|(lo, _)| kb >= lo)
}

/// Attention over the support in f64, rounded into `out`; returns the pairs the block pattern
/// scores.
pub fn forward(c: &AShape, p: &Problem, inputs: &Inputs, params: &Resolved, out: OutputMut) -> u64 {
    dense_f64(p, inputs, params, out, |_, i, j| allowed(c, params, p.s_q, i, j));
    let pattern = c.pattern(p, params).expect("a valid pattern");
    pattern.scored_pairs(params)
}

/// Softmax attention in f64 restricted to `allowed(bh, i, j)` (with `bh = b·H + h`), rounded into
/// `out`; returns the number of allowed pairs. Scores are `scale · q·k`.
pub fn dense_f64(
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    out: OutputMut,
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> u64 {
    let mut pairs = 0u64;
    let mut z = Vec::new();
    let mut acc = vec![0.0f64; p.d_v];
    for b in 0..p.b {
        for h in 0..p.h {
            let hk = h / p.group(); // the key/value head this query head reads
            let bh = b * p.h + h;
            for i in 0..p.s_q {
                let r = bh * p.s_q + i; // row in [B, H, S_q]
                z.clear();
                for j in (0..p.s_kv).filter(|&j| allowed(bh, i, j)) {
                    let dot: f64 = (0..p.d)
                        .map(|d| inputs.q.get(b, h, i, d) as f64 * inputs.k.get(b, hk, j, d) as f64)
                        .sum();
                    z.push((j, params.scale as f64 * dot));
                }
                pairs += z.len() as u64;
                let m = z.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                let o = &mut out.o[r * p.d_v..(r + 1) * p.d_v];
                if m == f64::NEG_INFINITY {
                    o.fill(0.0);
                    out.lse[r] = f32::NEG_INFINITY;
                    continue;
                }
                acc.fill(0.0);
                let mut l = 0.0;
                for &(j, zj) in &z {
                    let w = (zj - m).exp();
                    l += w;
                    for (dv, a) in acc.iter_mut().enumerate() {
                        *a += w * inputs.v.get(b, hk, j, dv) as f64;
                    }
                }
                for (x, a) in o.iter_mut().zip(&acc) {
                    *x = (a / l) as f32;
                }
                out.lse[r] = (m + l.ln()) as f32;
            }
        }
    }
    pairs
}
