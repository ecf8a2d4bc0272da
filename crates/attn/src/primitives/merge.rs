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
/// # Panics
/// When the lengths disagree.
pub fn merge_lse_into(o1: &mut [f32], lse1: &mut [f32], o2: &[f32], lse2: &[f32]) {
    assert_eq!(o1.len(), o2.len(), "merge_lse_into: outputs differ in length");
    assert_eq!(lse1.len(), lse2.len(), "merge_lse_into: lse lengths differ");
    let rows = lse1.len();
    assert!(rows > 0 && o1.len() % rows == 0, "merge_lse_into: output length is not rows × D_v");
    let dv = o1.len() / rows;
    for r in 0..rows {
        let (a, b, lse) = merge_weights(lse1[r], lse2[r]);
        for (x, y) in o1[r * dv..(r + 1) * dv].iter_mut().zip(&o2[r * dv..(r + 1) * dv]) {
            *x = a * *x + b * *y;
        }
        lse1[r] = lse;
    }
}

/// Merges two partial results into new buffers (see [`merge_lse_into`]).
pub fn merge_lse(o1: &[f32], lse1: &[f32], o2: &[f32], lse2: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut o, mut l) = (o1.to_vec(), lse1.to_vec());
    merge_lse_into(&mut o, &mut l, o2, lse2);
    (o, l)
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
        let (o, l) = merge_lse(&[o1], &[l1], &[o2], &[l2]);
        assert!((o[0] - ow).abs() < 1e-6 && (l[0] - lw).abs() < 1e-6);
    }

    #[test]
    fn empty_sides() {
        let (o, l) = merge_lse(&[5.0], &[f32::NEG_INFINITY], &[2.0], &[0.7]);
        assert_eq!((o[0], l[0]), (2.0, 0.7));
        let (o, l) = merge_lse(&[5.0], &[f32::NEG_INFINITY], &[2.0], &[f32::NEG_INFINITY]);
        assert_eq!((o[0], l[0]), (0.0, f32::NEG_INFINITY));
    }
}
