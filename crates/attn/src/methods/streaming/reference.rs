//! The specification of `streaming`: plain loops in f64 over the element-wise definition.
//!
//! For every batch `b`, query head `h` (reading key/value head `h / g`) and query row `i` at
//! position `p_i`:
//! 1. the support `J = { j < S_kv : j ≤ p_i and (j < sink or p_i − j < window) }`;
//! 2. `z_j = scale · q_i·k_j`, `o_i = Σ softmax(z)_j v_j`, `lse_i = ln Σ exp z_j`
//!    (`J` empty: `o_i = 0`, `lse_i = −∞`).

use super::Streaming;
use crate::dispatch::{Inputs, OutputMut};
use crate::params::Resolved;
use crate::problem::Problem;

/// Whether row `i` (position `pos`) sees key `j`.
pub fn allowed(c: &Streaming, pos: i64, j: usize) -> bool {
    let j = j as i64;
    j <= pos && (j < c.sink as i64 || pos - j < c.window as i64)
}

/// Attention over the support in f64, rounded into `out`; returns the pairs the fast path
/// scores (the band's allowed pairs plus the sink pass's chunks), so that the two report the
/// same cost.
pub fn forward(
    c: &Streaming,
    p: &Problem,
    inputs: &Inputs,
    params: &Resolved,
    out: OutputMut,
) -> u64 {
    crate::methods::a_shape::reference::dense_f64(p, inputs, params, out, |_, i, j| {
        allowed(c, params.position(i), j)
    });
    let (sink_params, pattern) = c.sinks(p, params).expect("a valid pattern");
    crate::Stats::exact(&c.band(params)).computed_pairs + pattern.scored_pairs(&sink_params)
}
