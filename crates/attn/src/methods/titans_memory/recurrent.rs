//! The recurrent form in f32: one token at a time ([`step`]), queries read with [`read`]; the
//! decode path. Cost per token `O(P_M)`, independent of the position.

use super::memory::{
    clip_factor, l2n32, lse_of, reads_after, sq64, Acc64, Config, FlushSubnormals, Head, Shape,
    State,
};

/// Buffers for one token, sized once per head from the [`Shape`].
#[derive(Debug, Clone)]
pub struct Work {
    xs: Vec<f32>, // inputs of layers 0..L: Σ_l w_l
    ds: Vec<f32>, // σ' of the pre-activations that became xs (layers ≥ 1), same layout
    y: Vec<f32>,  // [D_v]
    g: Vec<f32>,  // back-propagated error, [max width]
    g2: Vec<f32>, // [max width]
    gl: Vec<f32>, // every layer's output error: layer l at Σ_{i<l} w_{i+1}
}

impl Work {
    /// Buffers for `shape`.
    pub fn new(shape: &Shape) -> Self {
        let n: usize = (0..shape.layers).map(|l| shape.width(l)).sum();
        let m = shape.max_width();
        Self {
            xs: vec![0.0; n],
            ds: vec![0.0; n],
            y: vec![0.0; shape.dv],
            g: vec![0.0; m],
            g2: vec![0.0; m],
            gl: vec![0.0; (1..=shape.layers).map(|l| shape.width(l)).sum()],
        }
    }

    /// Floats held.
    pub fn len(shape: &Shape) -> usize {
        let n: usize = (0..shape.layers).map(|l| shape.width(l)).sum();
        2 * n
            + shape.dv
            + 2 * shape.max_width()
            + (1..=shape.layers).map(|l| shape.width(l)).sum::<usize>()
    }
}

/// Start of layer `l`'s input in [`Work::xs`].
fn xoff(sh: &Shape, l: usize) -> usize {
    (0..l).map(|i| sh.width(i)).sum()
}

/// `M_w(xs[layer 0])` into `work.y`, keeping every layer's input and `σ'`.
fn forward(cfg: &Config, w: &[f32], work: &mut Work) {
    let sh = &cfg.shape;
    for l in 0..sh.layers {
        let (wo, wi, off, xo) = (sh.width(l + 1), sh.width(l), sh.offset(l), xoff(sh, l));
        let (xin, xout) = work.xs.split_at_mut(xo + wi);
        let x = &xin[xo..];
        if l + 1 == sh.layers {
            for (r, y) in work.y.iter_mut().enumerate() {
                *y = crate::linear::dot(&w[off + r * wi..off + (r + 1) * wi], x);
            }
        } else {
            let d = &mut work.ds[xo + wi..xo + wi + wo];
            for (r, (a, d)) in xout[..wo].iter_mut().zip(d).enumerate() {
                let z = crate::linear::dot(&w[off + r * wi..off + (r + 1) * wi], x);
                (*a, *d) = cfg.act.eval(z);
            }
        }
    }
}

/// Reads weights `w` with query `q` (raw): `o = M_w(q̂)`.
pub fn read(cfg: &Config, w: &[f32], q: &[f32], o: &mut [f32], work: &mut Work) {
    l2n32(q, cfg.l2norm, &mut work.xs[..cfg.shape.dk]);
    forward(cfg, w, work);
    o.copy_from_slice(&work.y);
}

/// Stores token (`k`, `v`) with gates `θ, η, α`: closes a complete chunk (`M_0 ← M`), then
/// `S ← η S − θ ∇ℓ(M_0)`, `M ← (1 − α) M + S`, one layer at a time while back-propagating.
pub fn step(cfg: &Config, st: &mut State, k: &[f32], v: &[f32], g: [f32; 3], work: &mut Work) {
    step_acc(cfg, st, k, v, g, work, None);
}

/// [`step`], with the weight and momentum updates summed in f64 into `acc` (when given; the
/// f32 `mem` is then rounded from it, `mom` is left to [`Acc64::finish`]).
pub(crate) fn step_acc(
    cfg: &Config,
    st: &mut State,
    k: &[f32],
    v: &[f32],
    [theta, eta, alpha]: [f32; 3],
    work: &mut Work,
    mut acc: Option<&mut Acc64>,
) {
    let sh = &cfg.shape;
    if st.filled >= cfg.chunk.max(1) {
        st.start.copy_from_slice(&st.mem);
        st.filled = 0;
    }
    l2n32(k, cfg.l2norm, &mut work.xs[..sh.dk]);
    forward(cfg, &st.start, work);
    let dv = sh.dv;
    for (g, (&y, &v)) in work.g[..dv].iter_mut().zip(work.y.iter().zip(v)) {
        *g = 2.0 * (y - v);
    }
    // Backward: every layer's output error g_l into `gl` (the step needs ‖∇ℓ‖ first).
    let goff = |l: usize| (0..l).map(|i| sh.width(i + 1)).sum::<usize>();
    let mut grad_sq = 0.0f64;
    for l in (0..sh.layers).rev() {
        let (wo, wi, off, xo) = (sh.width(l + 1), sh.width(l), sh.offset(l), xoff(sh, l));
        work.gl[goff(l)..goff(l) + wo].copy_from_slice(&work.g[..wo]);
        grad_sq += sq64(&work.g[..wo]) * sq64(&work.xs[xo..xo + wi]);
        if l > 0 {
            // g_{l−1} = (W_lᵀ g_l) ⊙ σ'(z_{l−1}), with W_l of the chunk start.
            let g2 = &mut work.g2[..wi];
            g2.fill(0.0);
            for r in 0..wo {
                crate::linear::axpy(g2, work.g[r], &st.start[off + r * wi..off + (r + 1) * wi]);
            }
            for (g, (&a, &d)) in work.g[..wi].iter_mut().zip(g2.iter().zip(&work.ds[xo..xo + wi])) {
                *g = a * d;
            }
        }
    }
    let theta = (theta as f64 * clip_factor(cfg.clip, grad_sq)) as f32;
    for l in 0..sh.layers {
        let (wo, wi, off, xo) = (sh.width(l + 1), sh.width(l), sh.offset(l), xoff(sh, l));
        let x = &work.xs[xo..xo + wi];
        for r in 0..wo {
            let c = theta * work.gl[goff(l) + r];
            let rows = off + r * wi..off + (r + 1) * wi;
            if let Some(acc) = acc.as_deref_mut() {
                let (e, a, c) = (eta as f64, 1.0 - alpha as f64, c as f64);
                let m64 = &mut acc.mem[rows.clone()];
                for (((m, s), m32), &x) in
                    m64.iter_mut().zip(&mut acc.mom[rows.clone()]).zip(&mut st.mem[rows]).zip(x)
                {
                    *s = e * *s - c * x as f64;
                    *m = a * *m + *s;
                    *m32 = *m as f32;
                }
                continue;
            }
            for ((m, s), &x) in st.mem[rows.clone()].iter_mut().zip(&mut st.mom[rows]).zip(x) {
                *s = eta * *s - c * x;
                *m = (1.0 - alpha) * *m + *s;
            }
        }
    }
    st.filled += 1;
    st.keys += 1;
}

/// The recurrent form over one head (see [`super::reference::reference`] for the order of
/// reads and stores). Returns 0.
pub fn recurrent(cfg: &Config, h: &Head, st: &mut State, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv, b) = (cfg.shape.dk, cfg.shape.dv, cfg.chunk.max(1));
    let (s_q, t) = (h.q.len() / dk, h.k.len() / dk);
    let _ftz = FlushSubnormals::new();
    let stored = st.keys;
    let mut work = Work::new(&cfg.shape);
    let mut acc = Acc64::new(st);
    let mut i = 0;
    for j in 0..=t {
        while i < s_q && reads_after(cfg.q_offset, i, t) == j {
            let (q, oi) = (&h.q[i * dk..(i + 1) * dk], &mut o[i * dv..(i + 1) * dv]);
            read(cfg, st.readable(b), q, oi, &mut work);
            lse[i] = lse_of(cfg.q_offset, i, t, stored);
            i += 1;
        }
        if j == t {
            break;
        }
        let g = [h.gates.lr[j], h.gates.momentum[j], h.gates.decay[j]];
        let (k, v) = (&h.k[j * dk..(j + 1) * dk], &h.v[j * dv..(j + 1) * dv]);
        step_acc(cfg, st, k, v, g, &mut work, Some(&mut acc));
    }
    acc.finish(st);
    0
}
