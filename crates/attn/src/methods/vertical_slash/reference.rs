//! Plain-loop definitions for Vertical-Slash, in f64: the estimated attention of the last
//! queries with its column and diagonal sums (spec §2.2 steps 2–4), and the covered set of a
//! query block (spec §2.6 oracle 3). Tests hold [`super::estimate`] to them.

use super::VerticalSlash;
use crate::dispatch::Inputs;
use crate::params::Resolved;
use crate::problem::Problem;

/// `(a_v, a_s)` of query head `(b, h)` in f64: `Â = softmax(scale·Q_last Kᵀ + causal)` over the
/// last `L = min(last_q, S_q)` rows, `a_v[j] = Σ_r Â[r, j]`, `a_s[δ] = Σ_r Â[r, p_r − δ]`.
pub fn scores_f64(
    c: &VerticalSlash,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    b: usize,
    h: usize,
) -> (Vec<f64>, Vec<f64>) {
    let l = c.last_q.min(p.s_q);
    let hk = h / p.group();
    let mut a_v = vec![0.0; p.s_kv];
    let mut a_s = vec![0.0; p.s_kv];
    for i in p.s_q - l..p.s_q {
        let pos = params.position(i);
        // one row of Â: scores of the keys up to the row's position, then softmax
        let z: Vec<f64> = (0..p.s_kv)
            .map(|j| {
                if j as i64 > pos {
                    return f64::NEG_INFINITY;
                }
                let dot: f64 = (0..p.d)
                    .map(|d| inputs.q.get(b, h, i, d) as f64 * inputs.k.get(b, hk, j, d) as f64)
                    .sum();
                params.scale as f64 * dot
            })
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            continue;
        }
        let sum: f64 = z.iter().map(|x| (x - m).exp()).sum();
        for (j, x) in z.iter().enumerate() {
            let a = (x - m).exp() / sum;
            a_v[j] += a;
            if pos - j as i64 >= 0 && ((pos - j as i64) as usize) < p.s_kv {
                a_s[(pos - j as i64) as usize] += a;
            }
        }
    }
    (a_v, a_s)
}

/// Whether the element-wise Vertical-Slash pattern allows key `j` to the row at `pos`:
/// `j ≤ pos` and (`j ∈ verticals` or `pos − j ∈ slashes`).
pub fn allowed_elementwise(verticals: &[u32], slashes: &[u32], pos: i64, j: usize) -> bool {
    let j = j as i64;
    j <= pos
        && (verticals.binary_search(&(j as u32)).is_ok()
            || slashes.binary_search(&((pos - j) as u32)).is_ok())
}
