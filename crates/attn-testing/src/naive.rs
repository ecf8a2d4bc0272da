//! A same-precision naive run: materialised f32 scores, `f32::exp`, f32 accumulation. Its error
//! against the f64 oracle sets the scale of the error a fast f32 kernel is allowed (STYLE rule 3).

use attn::{Inputs, Problem, Resolved};

/// `(o [B, H, S_q, D_v], lse [B, H, S_q])` computed naively in f32.
pub fn forward_f32(p: &Problem, inputs: &Inputs, params: &Resolved) -> (Vec<f32>, Vec<f32>) {
    let mut o = vec![0.0f32; p.out_len()];
    let mut lse = vec![0.0f32; p.lse_len()];
    let g = p.group();
    let mut z = vec![0.0f32; p.s_kv];
    for b in 0..p.b {
        for h in 0..p.h {
            for i in 0..p.s_q {
                let r = (b * p.h + h) * p.s_q + i;
                let pos = params.position(i);
                for (j, zj) in z.iter_mut().enumerate() {
                    if !params.mask.allowed(&params.geometry, b, h, i, j) {
                        *zj = f32::NEG_INFINITY;
                        continue;
                    }
                    let mut dot = 0.0f32;
                    for d in 0..p.d {
                        dot += inputs.q.get(b, h, i, d) * inputs.k.get(b, h / g, j, d);
                    }
                    let mut s = params.scale * dot;
                    if let Some(c) = params.softcap {
                        s = c * (s / c).tanh();
                    }
                    *zj = s - params.slope(h) * (pos - j as i64).unsigned_abs() as f32;
                }
                let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                if m == f32::NEG_INFINITY {
                    lse[r] = f32::NEG_INFINITY;
                    continue;
                }
                let mut l = 0.0f32;
                let row = &mut o[r * p.d_v..(r + 1) * p.d_v];
                for (j, &zj) in z.iter().enumerate() {
                    let w = (zj - m).exp();
                    l += w;
                    for (dv, x) in row.iter_mut().enumerate() {
                        *x += w * inputs.v.get(b, h / g, j, dv);
                    }
                }
                row.iter_mut().for_each(|x| *x /= l);
                lse[r] = m + l.ln();
            }
        }
    }
    (o, lse)
}
