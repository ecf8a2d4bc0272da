//! Small row-major f32 matrix products on one thread, through faer (the methods that cast their
//! work as tiles — performer, the chunked delta rule — call these instead of faer directly).

use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef};

/// `dst (n×k) (+)= a (n×d) · bᵀ` with `b` row-major `k × d`; `add` accumulates.
pub fn gemm_bt(dst: &mut [f32], a: &[f32], b: &[f32], [n, d, k]: [usize; 3], add: bool) {
    let dst = MatMut::from_row_major_slice_mut(&mut dst[..n * k], n, k);
    let lhs = MatRef::from_row_major_slice(&a[..n * d], n, d);
    let rhs = MatRef::from_row_major_slice(&b[..k * d], k, d).transpose();
    let acc = if add { Accum::Add } else { Accum::Replace };
    matmul(dst, acc, lhs, rhs, 1.0f32, faer::Par::Seq);
}

/// `dst (n×k) (+)= a (n×d) · b (d×k)`, all row-major; `add` accumulates.
pub fn gemm(dst: &mut [f32], a: &[f32], b: &[f32], [n, d, k]: [usize; 3], add: bool) {
    let dst = MatMut::from_row_major_slice_mut(&mut dst[..n * k], n, k);
    let lhs = MatRef::from_row_major_slice(&a[..n * d], n, d);
    let rhs = MatRef::from_row_major_slice(&b[..d * k], d, k);
    let acc = if add { Accum::Add } else { Accum::Replace };
    matmul(dst, acc, lhs, rhs, 1.0f32, faer::Par::Seq);
}

/// `dst (d×k) += aᵀ · b` with `a` row-major `n × d` and `b` row-major `n × k`.
pub fn gemm_at_add(dst: &mut [f32], a: &[f32], b: &[f32], [n, d, k]: [usize; 3]) {
    gemm_at(dst, a, b, [n, d, k], true);
}

/// `dst (d×k) (+)= aᵀ · b` with `a` row-major `n × d` and `b` row-major `n × k` (the transpose
/// through faer's strides, no copy); `add` accumulates.
pub fn gemm_at(dst: &mut [f32], a: &[f32], b: &[f32], [n, d, k]: [usize; 3], add: bool) {
    let dst = MatMut::from_row_major_slice_mut(&mut dst[..d * k], d, k);
    let lhs = MatRef::from_row_major_slice(&a[..n * d], n, d).transpose();
    let rhs = MatRef::from_row_major_slice(&b[..n * k], n, k);
    let acc = if add { Accum::Add } else { Accum::Replace };
    matmul(dst, acc, lhs, rhs, 1.0f32, faer::Par::Seq);
}

/// Runs one small product on the calling thread and on every worker of the current rayon pool.
///
/// faer's GEMM backend reserves a per-thread packing buffer on the first product a thread runs
/// (about 600 MB of address space, touched only as far as products need it) and keeps it for the
/// thread's life. Measurements of one call's heap (`attn bench`) take that one-time cost first,
/// so it is not charged to whichever method happens to run first.
pub fn prime_threads() {
    // Large enough that faer takes its packed path (tiny products skip the buffer).
    const N: usize = 64;
    let one = || {
        let (a, mut c) = (vec![1.0f32; N * N], vec![0.0f32; N * N]);
        gemm(&mut c, &a, &a, [N, N, N], false);
    };
    one();
    rayon::broadcast(|_| one());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_match_loops() {
        let (n, d, k) = (3, 4, 5);
        let a: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..d * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let bt: Vec<f32> = (0..k * d).map(|i| b[(i % d) * k + i / d]).collect();
        let mut want = vec![0.0f32; n * k];
        for i in 0..n {
            for j in 0..k {
                want[i * k + j] = (0..d).map(|r| a[i * d + r] * b[r * k + j]).sum();
            }
        }
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5);
        let mut got = vec![1.0f32; n * k];
        gemm(&mut got, &a, &b, [n, d, k], false);
        assert!(close(&got, &want));
        gemm_bt(&mut got, &a, &bt, [n, d, k], true);
        assert!(close(&got, &want.iter().map(|x| 2.0 * x).collect::<Vec<_>>()));
        // aᵀ·b with a: [n, d] read as the transpose: dst [d, k] += Σ_i a_i ⊗ c_i.
        let c: Vec<f32> = (0..n * k).map(|i| i as f32 * 0.1).collect();
        let mut st = vec![0.0f32; d * k];
        gemm_at_add(&mut st, &a, &c, [n, d, k]);
        for r in 0..d {
            for j in 0..k {
                let w: f32 = (0..n).map(|i| a[i * d + r] * c[i * k + j]).sum();
                assert!((st[r * k + j] - w).abs() < 1e-5);
            }
        }
    }
}
