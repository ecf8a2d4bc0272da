//! Merging partial attention results over disjoint key sets by their log-sum-exp.
//!
//! If `(o₁, lse₁)` is attention of a row over key set `K₁` and `(o₂, lse₂)` over a disjoint `K₂`,
//! attention over `K₁ ∪ K₂` is
//! ```text
//! lse = logaddexp(lse₁, lse₂),   o = o₁·exp(lse₁ − lse) + o₂·exp(lse₂ − lse)
//! ```
//! A side with `lse = −∞` (no allowed key) contributes nothing; both sides empty gives `o = 0`,
//! `lse = −∞`. Approximate methods (A-shape, HyperAttention, Reformer rounds) and split-KV decode
//! combine their pieces with this.

use crate::error::{Error, Result};

/// Merges one row: returns `(weight₁, weight₂, lse)` with `o = weight₁·o₁ + weight₂·o₂`.
#[inline]
pub fn merge_weights(lse1: f32, lse2: f32) -> (f32, f32, f32) {
    let m = lse1.max(lse2);
    if m == f32::NEG_INFINITY {
        return (0.0, 0.0, f32::NEG_INFINITY);
    }
    let (a, b) = ((lse1 - m).exp(), (lse2 - m).exp());
    let s = a + b;
    (a / s, b / s, m + s.ln())
}

/// Merges partial results in place: `o1`/`lse1` become the result over both key sets.
///
/// Shapes: `o1`, `o2`: `[rows, D_v]` row-major; `lse1`, `lse2`: `[rows]`.
///
/// # Errors
/// [`Error::Shape`] when the lengths disagree (nothing is written then).
pub fn merge_lse_into(o1: &mut [f32], lse1: &mut [f32], o2: &[f32], lse2: &[f32]) -> Result<()> {
    let rows = lse1.len();
    if o1.len() != o2.len() || lse2.len() != rows || rows == 0 || !o1.len().is_multiple_of(rows) {
        return Err(Error::Shape {
            op: "merge_lse",
            detail: format!(
                "outputs of {} and {} elements with {} and {} lse rows: need equal [rows, D_v] and [rows]",
                o1.len(),
                o2.len(),
                rows,
                lse2.len()
            ),
        });
    }
    let dv = o1.len() / rows;
    for r in 0..rows {
        let (a, b, lse) = merge_weights(lse1[r], lse2[r]);
        for (x, y) in o1[r * dv..(r + 1) * dv].iter_mut().zip(&o2[r * dv..(r + 1) * dv]) {
            *x = a * *x + b * *y;
        }
        lse1[r] = lse;
    }
    Ok(())
}

/// Merges two partial results into new buffers (see [`merge_lse_into`]).
///
/// # Errors
/// As [`merge_lse_into`].
pub fn merge_lse(
    o1: &[f32],
    lse1: &[f32],
    o2: &[f32],
    lse2: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mut o, mut l) = (o1.to_vec(), lse1.to_vec());
    merge_lse_into(&mut o, &mut l, o2, lse2)?;
    Ok((o, l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_of_two_halves_is_the_whole() {
        let z = [0.3f64, -1.2, 2.5, 0.0, 1.1, -0.4];
        let v = [1.0f64, 2.0, -1.0, 0.5, 3.0, -2.0];
        let part = |r: std::ops::Range<usize>| {
            let m = z[r.clone()].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = z[r.clone()].iter().map(|s| (s - m).exp()).sum();
            let o: f64 = r.map(|j| (z[j] - m).exp() * v[j]).sum::<f64>() / l;
            (o as f32, (m + l.ln()) as f32)
        };
        let (o1, l1) = part(0..2);
        let (o2, l2) = part(2..6);
        let (ow, lw) = part(0..6);
        let (o, l) = merge_lse(&[o1], &[l1], &[o2], &[l2]).unwrap();
        assert!((o[0] - ow).abs() < 1e-6 && (l[0] - lw).abs() < 1e-6);
    }

    #[test]
    fn empty_sides() {
        let (o, l) = merge_lse(&[5.0], &[f32::NEG_INFINITY], &[2.0], &[0.7]).unwrap();
        assert_eq!((o[0], l[0]), (2.0, 0.7));
        let (o, l) = merge_lse(&[5.0], &[f32::NEG_INFINITY], &[2.0], &[f32::NEG_INFINITY]).unwrap();
        assert!(merge_lse(&[1.0, 2.0], &[0.0], &[1.0], &[0.0]).is_err());
        assert_eq!((o[0], l[0]), (0.0, f32::NEG_INFINITY));
    }
}
