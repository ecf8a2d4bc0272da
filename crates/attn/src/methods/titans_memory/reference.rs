//! The specification: the Titans memory as a token loop in f64 (spec `linear.md` A4, mini-batch
//! semantics). Plain loops, weights materialised, no threads, no SIMD.

use super::memory::{clip_factor, l2n64, lse_of, reads_after, Config, Head, Shape, State};

/// `M(x)` with weights `w`, in f64. Fills `xs[l]` with the input of layer `l` and `ds[l]` with
/// `σ'` of the pre-activation that became `xs[l]` (`l ≥ 1`); returns the output `[D_v]`.
fn forward(
    cfg: &Config,
    w: &[f64],
    x: &[f64],
    xs: &mut Vec<Vec<f64>>,
    ds: &mut Vec<Vec<f64>>,
) -> Vec<f64> {
    let sh: &Shape = &cfg.shape;
    xs.clear();
    ds.clear();
    xs.push(x.to_vec());
    ds.push(Vec::new());
    for l in 0..sh.layers {
        let (wo, wi, off) = (sh.width(l + 1), sh.width(l), sh.offset(l));
        // z = W_l x_l: [w_{l+1}]
        let z: Vec<f64> =
            (0..wo).map(|r| (0..wi).map(|c| w[off + r * wi + c] * xs[l][c]).sum::<f64>()).collect();
        if l + 1 == sh.layers {
            return z;
        }
        let (a, d): (Vec<f64>, Vec<f64>) = z.iter().map(|&z| cfg.act.eval_f64(z)).unzip();
        xs.push(a);
        ds.push(d);
    }
    unreachable!("layers ≥ 1")
}

/// The weights `w` read with query `q` (raw) into `o`.
fn read(cfg: &Config, w: &[f64], q: &[f32], o: &mut [f32]) {
    let (mut xs, mut ds) = (Vec::new(), Vec::new());
    let y = forward(cfg, w, &l2n64(q, cfg.l2norm), &mut xs, &mut ds);
    for (d, y) in o.iter_mut().zip(y) {
        *d = y as f32;
    }
}

/// Backpropagation of `‖M_W(k) − v‖²` (sum of squares over `D_v`) at `w`: returns, per layer
/// `l`, its input `x_l` and the error `g_l` at its output, so that `∂ℓ/∂W_l = g_l x_lᵀ`. With
/// `e = 2(M(k) − v)`: `g_{L−1} = e`, `g_{l−1} = (W_lᵀ g_l) ⊙ σ'(z_{l−1})`.
pub fn backprop(cfg: &Config, w: &[f64], k: &[f64], v: &[f32]) -> Vec<(Vec<f64>, Vec<f64>)> {
    let sh = &cfg.shape;
    let (mut xs, mut ds) = (Vec::new(), Vec::new());
    let y = forward(cfg, w, k, &mut xs, &mut ds);
    let mut g: Vec<f64> = y.iter().zip(v).map(|(&y, &v)| 2.0 * (y - v as f64)).collect();
    let mut out = vec![(Vec::new(), Vec::new()); sh.layers];
    for l in (0..sh.layers).rev() {
        let (wi, off) = (sh.width(l), sh.offset(l));
        let mut below = Vec::new();
        if l > 0 {
            // W_lᵀ g_l, accumulated row by row of W_l (each entry sums r = 0..w_{l+1} in order).
            below = vec![0.0f64; wi];
            for (r, &gr) in g.iter().enumerate() {
                for (b, &x) in below.iter_mut().zip(&w[off + r * wi..off + (r + 1) * wi]) {
                    *b += x * gr;
                }
            }
            below.iter_mut().zip(&ds[l]).for_each(|(b, &d)| *b *= d);
        }
        out[l] = (std::mem::take(&mut xs[l]), std::mem::replace(&mut g, below));
    }
    out
}

/// `∇_W ‖M_W(k) − v‖²` at `w`, flat like the weights ([`backprop`] expanded).
pub fn gradient(cfg: &Config, w: &[f64], k: &[f64], v: &[f32]) -> Vec<f64> {
    let sh = &cfg.shape;
    let mut grad = vec![0.0f64; w.len()];
    for (l, (x, g)) in backprop(cfg, w, k, v).iter().enumerate() {
        let (wi, off) = (sh.width(l), sh.offset(l));
        for (r, &gr) in g.iter().enumerate() {
            for (c, &xc) in x.iter().enumerate() {
                grad[off + r * wi + c] = gr * xc;
            }
        }
    }
    grad
}

/// Runs the memory over one head: `state` in (the memory before key 0) and out (after the last
/// key); `o: [S_q, D_v]`, `lse: [S_q]`. Returns 0 (no `q·k` scores).
///
/// For each key `t`, in order:
/// 1. rows whose position is `t` read the memory before the chunk holding `t`;
/// 2. a complete chunk is closed: `M_0 ← M` (the new chunk's start weights);
/// 3. the momentary surprise `u_t = −θ_t c_t ∇ℓ(M_0; k_t, v_t)` (gradient at the chunk start,
///    `c_t = min(1, clip / ‖∇ℓ‖)`);
/// 4. `S_t = η_t S_{t−1} + u_t`, then `M_t = (1 − α_t) M_{t−1} + S_t`.
///
/// Rows at or after the end read the memory before the chunk that the next key would join.
pub fn reference(cfg: &Config, h: &Head, state: &mut State, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv, b) = (cfg.shape.dk, cfg.shape.dv, cfg.chunk.max(1));
    let (s_q, t) = (h.q.len() / dk, h.k.len() / dk);
    let widen = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (mut start, mut mem, mut mom) = (widen(&state.start), widen(&state.mem), widen(&state.mom));
    let mut filled = state.filled;
    let stored = state.keys;
    let mut i = 0;
    for j in 0..=t {
        while i < s_q && reads_after(cfg.q_offset, i, t) == j {
            let w = if filled >= b { &mem } else { &start };
            read(cfg, w, &h.q[i * dk..(i + 1) * dk], &mut o[i * dv..(i + 1) * dv]);
            lse[i] = lse_of(cfg.q_offset, i, t, stored);
            i += 1;
        }
        if j == t {
            break;
        }
        if filled >= b {
            start.copy_from_slice(&mem);
            filled = 0;
        }
        let k = l2n64(&h.k[j * dk..(j + 1) * dk], cfg.l2norm);
        let layers = backprop(cfg, &start, &k, &h.v[j * dv..(j + 1) * dv]);
        // 3'. a gradient longer than `clip` is scaled down to it: ‖g xᵀ‖_F = ‖g‖ ‖x‖ per layer.
        let sq = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>();
        let grad_sq: f64 = layers.iter().map(|(x, g)| sq(x) * sq(g)).sum();
        let (theta, eta, alpha) = (
            h.gates.lr[j] as f64 * clip_factor(cfg.clip, grad_sq),
            h.gates.momentum[j] as f64,
            h.gates.decay[j] as f64,
        );
        for (l, (x, g)) in layers.iter().enumerate() {
            let (wi, off) = (cfg.shape.width(l), cfg.shape.offset(l));
            for (r, &gr) in g.iter().enumerate() {
                for (c, &xc) in x.iter().enumerate() {
                    let at = off + r * wi + c; // weight (r, c) of layer l; its gradient is g_r x_c
                    mom[at] = eta * mom[at] - theta * gr * xc;
                    mem[at] = (1.0 - alpha) * mem[at] + mom[at];
                }
            }
        }
        filled += 1;
    }
    let narrow =
        |dst: &mut [f32], x: &[f64]| dst.iter_mut().zip(x).for_each(|(d, &x)| *d = x as f32);
    narrow(&mut state.start, &start);
    narrow(&mut state.mem, &mem);
    narrow(&mut state.mom, &mom);
    state.filled = filled;
    state.keys += t as u64;
    0
}
