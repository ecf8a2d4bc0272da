//! The specification of SEA's support, in plain loops and f64 (the attention over the support is
//! [`crate::primitives::sparse::reference`]). Tests hold [`super::estimate`] to it.
//!
//! For batch `b`, query head `h` (key/value head `h / g`) and query row `i`:
//! 1. **Grid**: `T_M` cells over `[0, S_kv)`, cell `c = [round(c·S_kv/T_M), round((c+1)·S_kv/T_M))`
//!    (empty cells dropped; `C` cells remain).
//! 2. **Projection** (optional): `q' = W_q q`, `k' = W_k k` (random `N(0, 1/r)` entries, or loaded);
//!    without one `q' = q`, `k' = k`.
//! 3. **Cell statistics** of the projected keys: `n_c`, mean `μ_c`, per-dimension variance
//!    `σ²_c`, per-dimension maximum `⌈k⌉_c` and minimum `⌊k⌋_c`.
//! 4. **Estimate** of `ln Σ_{j∈c} exp(s·q'·k'_j)` (every sum over `t` runs over the row's
//!    `dims` dimensions of largest `|q'_t|`, ties to the smaller `t`, when `0 < dims < r`; over
//!    all `r` otherwise): `ê_ic = ln n_c + s·Σ_t max(q'_t⌈k⌉_ct,
//!    q'_t⌊k⌋_ct)` (`bound`: the largest score the cell's extremes allow), `ln n_c + s·q'·μ_c`
//!    (`mean`), or `ln n_c + s·q'·μ_c + ½·s²·Σ_t q'_t² σ²_ct` (`gauss`: the second-order
//!    cumulant expansion with a diagonal covariance).
//! 5. **Selection**: visible keys `[lo, hi)` (the mask's interval), `L_i = hi − lo`, visible cells
//!    those holding a visible key (`V_i` of them); `k_i` keys of the budget; if `k_i ≥ L_i` every
//!    visible cell, else `κ_i = clamp(max(⌈k_i·C/S_kv⌉, forced), 1, V_i)` cells: the forced ones
//!    (the first `sink` visible cells; the cell of the row's own position when visible — the
//!    diagonal — and the `local` cells before it), then the other visible cells by decreasing
//!    `ê_ic` (ties: smaller cell first) until `κ_i` are chosen.
//! 6. **Support**: the visible keys of the chosen cells.

use super::estimate::{projection, Grid};
use super::{Estimate, Sea};
use crate::dispatch::Inputs;
use crate::params::Resolved;
use crate::problem::Problem;

/// The estimates `(cell, ê_ic)` of every visible cell of every row of query head `(b, h)`.
pub fn estimates_f64(
    c: &Sea,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    b: usize,
    h: usize,
) -> Vec<Vec<(usize, f64)>> {
    let d = p.d;
    let hk = h / p.group();
    let grid = Grid::new(p.s_kv, c.cells);
    let proj = projection(c, d);
    let r = proj.as_ref().map_or(d, |w| w.2);
    // 2. the projection of one row of a tensor
    let apply = |w: Option<&Vec<f32>>, x: &[f64]| -> Vec<f64> {
        match w {
            None => x.to_vec(),
            Some(w) => (0..r).map(|t| (0..d).map(|u| w[t * d + u] as f64 * x[u]).sum()).collect(),
        }
    };
    // 3. cell moments
    let mut mean = vec![vec![0.0f64; r]; grid.len()];
    let mut var = vec![vec![0.0f64; r]; grid.len()];
    let mut top = vec![vec![f64::NEG_INFINITY; r]; grid.len()];
    let mut bottom = vec![vec![f64::INFINITY; r]; grid.len()];
    let mut count = vec![0.0f64; grid.len()];
    for (cell, (mu, s2)) in mean.iter_mut().zip(&mut var).enumerate() {
        let (s, e) = grid.range(cell);
        for j in s..e {
            let k: Vec<f64> = (0..d).map(|u| inputs.k.get(b, hk, j, u) as f64).collect();
            let kp = apply(proj.as_ref().map(|w| &w.1), &k);
            for t in 0..r {
                mu[t] += kp[t];
                s2[t] += kp[t] * kp[t];
                // extremes of the f32-rounded projections, as the selection code keeps them
                top[cell][t] = top[cell][t].max(kp[t] as f32 as f64);
                bottom[cell][t] = bottom[cell][t].min(kp[t] as f32 as f64);
            }
        }
        let n = (e - s) as f64;
        for t in 0..r {
            mu[t] /= n;
            s2[t] = (s2[t] / n - mu[t] * mu[t]).max(0.0);
        }
        count[cell] = n;
    }
    // 4. estimates on the visible cells
    let scale = params.scale as f64;
    (0..p.s_q)
        .map(|i| {
            let (lo, hi) = params.mask.interval(&params.geometry, b, i);
            if lo >= hi {
                return Vec::new();
            }
            let q: Vec<f64> = (0..d).map(|u| inputs.q.get(b, h, i, u) as f64).collect();
            let qp = apply(proj.as_ref().map(|w| &w.0), &q);
            // 4a. the dimensions of the estimate: all, or the `dims` of largest |q'_t| (ties to
            // the smaller t)
            let mut dims: Vec<usize> = (0..r).collect();
            if c.dims > 0 && c.dims < r {
                dims.sort_by(|&a, &b| qp[b].abs().total_cmp(&qp[a].abs()).then(a.cmp(&b)));
                dims.truncate(c.dims);
                dims.sort_unstable();
            }
            (grid.cell_of(lo)..=grid.cell_of(hi - 1))
                .map(|cell| {
                    let mut e = count[cell].ln();
                    for &t in &dims {
                        e += match c.estimate {
                            Estimate::Mean => scale * qp[t] * mean[cell][t],
                            Estimate::Gauss => {
                                scale * qp[t] * mean[cell][t]
                                    + 0.5 * scale * scale * qp[t] * qp[t] * var[cell][t]
                            }
                            Estimate::Bound => {
                                scale * (qp[t] * top[cell][t]).max(qp[t] * bottom[cell][t])
                            }
                        };
                    }
                    (cell, e)
                })
                .collect()
        })
        .collect()
}

/// The support (ascending key indices) of every row of query head `(b, h)`, chosen from
/// `estimates` (as [`estimates_f64`] returns them) by step 5.
pub fn support_f64(
    c: &Sea,
    p: &Problem,
    params: &Resolved,
    b: usize,
    estimates: &[Vec<(usize, f64)>],
) -> Vec<Vec<usize>> {
    let grid = Grid::new(p.s_kv, c.cells);
    estimates
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let (lo, hi) = params.mask.interval(&params.geometry, b, i);
            if lo >= hi {
                return Vec::new();
            }
            let l = hi - lo;
            let k = c.budget.keys(l);
            let mut chosen: Vec<usize> = if k >= l {
                row.iter().map(|&(cell, _)| cell).collect()
            } else {
                let kappa = (k * grid.len()).div_ceil(p.s_kv).clamp(1, row.len());
                // forced: the first `sink` visible cells, the diagonal's and `local` before it
                let pos = params.position(i);
                let first = row[0].0;
                let diag =
                    (lo as i64 <= pos && pos < hi as i64).then(|| grid.cell_of(pos as usize));
                let forced = |cell: usize| {
                    cell < first + c.sink
                        || diag.is_some_and(|dc| cell <= dc && cell + c.local >= dc)
                };
                let mut chosen: Vec<usize> =
                    row.iter().map(|&(cell, _)| cell).filter(|&cell| forced(cell)).collect();
                let kappa = kappa.max(chosen.len());
                let mut order: Vec<(usize, f64)> =
                    row.iter().copied().filter(|&(cell, _)| !forced(cell)).collect();
                order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                chosen.extend(order.iter().map(|&(cell, _)| cell).take(kappa - chosen.len()));
                chosen
            };
            chosen.sort_unstable();
            chosen
                .iter()
                .flat_map(|&cell| {
                    let (s, e) = grid.range(cell);
                    s.max(lo)..e.min(hi)
                })
                .collect()
        })
        .collect()
}
