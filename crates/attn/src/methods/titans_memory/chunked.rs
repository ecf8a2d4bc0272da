//! The chunked (mini-batch parallel) form in f32: per chunk of `n ≤ b` tokens, every gradient is
//! taken at the chunk-start weights `M_0`, so the chunk's forward and backward passes are GEMMs
//! over its `n` tokens, and the momentum and decay scans collapse to one weighted sum of the
//! per-token gradients (README "Chunked form"):
//!
//! ```text
//! S_n = p_0 S_prev + Σ_a p_a u_a,                p_a = Π_{s>a} η_s
//! M_n = d_0' M_0 + η_1 r_1 S_prev + Σ_a r_a u_a,  d_a = Π_{s>a} (1 − α_s),  r_a = d_a + η_{a+1} r_{a+1}
//! ```
//!
//! with `u_a = −θ_a g_a x_aᵀ` per layer (`d_0' = Π_s (1 − α_s)`, indices 1-based in the README).
//! Every coefficient is a product of factors in `[0, 1]`: no division, no overflow, and an
//! underflow only where the true value is below `f32::MIN_POSITIVE`.

use super::memory::{
    act_rows, clip_factor, l2n32, lse_of, reads_after, sq64, Acc64, Config, FlushSubnormals, Head,
    Shape, State,
};
use super::recurrent::{self, Work};
use crate::primitives::gemm::{gemm, gemm_at, gemm_bt};
use crate::primitives::simd::{dispatch, Kernel, Level, Simd};

/// Rows per retrieval batch at least (queries are read in GEMM batches of this many or of the
/// chunk length, whichever is larger).
const MIN_ROWS: usize = 16;

/// Per-head buffers: `cap` key rows (one chunk) and as many query rows, which share the forward
/// GEMMs (the queries of a chunk read the weights its gradients are taken at).
struct Bufs {
    cap: usize,
    rows: usize,  // 2·cap: key rows first, then query rows
    xs: Vec<f32>, // layer inputs, block l = [rows, w_l] at rows·Σ_{i<l} w_i
    ds: Vec<f32>, // σ' of the pre-activations that became xs (l ≥ 1, key rows only), same layout
    y: Vec<f32>,  // [rows, D_v]
    gs: Vec<f32>, // errors at each layer's output, block l = [cap, w_{l+1}] at cap·Σ_{i<l} w_{i+1}
    a2: Vec<f32>, // [cap, 2·w_{l+1}]: (r_a g_a, p_a g_a) of one layer
    t2: Vec<f32>, // [2·w_{l+1}, w_l]: Σ_a r_a g_a x_aᵀ over Σ_a p_a g_a x_aᵀ of one layer
    r: Vec<f32>,  // M coefficients [cap]
    p: Vec<f32>,  // S coefficients [cap]
}

fn xoff(sh: &Shape, l: usize) -> usize {
    (0..l).map(|i| sh.width(i)).sum()
}

fn goff(sh: &Shape, l: usize) -> usize {
    (0..l).map(|i| sh.width(i + 1)).sum()
}

fn max_layer(sh: &Shape) -> usize {
    (0..sh.layers).map(|l| sh.width(l + 1) * sh.width(l)).max().unwrap_or(0)
}

impl Bufs {
    fn new(sh: &Shape, cap: usize) -> Self {
        let (nx, ng, rows) = (xoff(sh, sh.layers), goff(sh, sh.layers), 2 * cap);
        Self {
            cap,
            rows,
            xs: vec![0.0; rows * nx],
            ds: vec![0.0; rows * nx],
            y: vec![0.0; rows * sh.dv],
            gs: vec![0.0; cap * ng],
            a2: vec![0.0; cap * 2 * sh.max_width()],
            t2: vec![0.0; 2 * max_layer(sh)],
            r: vec![0.0; cap],
            p: vec![0.0; cap],
        }
    }

    /// Floats held for `cap`.
    fn len(sh: &Shape, cap: usize) -> usize {
        let (nx, ng) = (xoff(sh, sh.layers), goff(sh, sh.layers));
        2 * cap * (2 * nx + sh.dv) + cap * (ng + 2 * sh.max_width() + 2) + 2 * max_layer(sh)
    }

    /// `M_w` on the `m` rows in block 0 of `xs`, into `y`, keeping every layer's input, and σ'
    /// of the first `nd` rows (the keys: only they are back-propagated).
    fn forward(&mut self, cfg: &Config, level: Level, w: &[f32], m: usize, nd: usize) {
        let sh = &cfg.shape;
        for l in 0..sh.layers {
            let (wo, wi, off) = (sh.width(l + 1), sh.width(l), sh.offset(l));
            let xo = self.rows * xoff(sh, l);
            let wl = &w[off..off + wo * wi];
            if l + 1 == sh.layers {
                gemm_bt(&mut self.y, &self.xs[xo..], wl, [m, wi, wo], false);
            } else {
                let (xin, xout) = self.xs.split_at_mut(self.rows * xoff(sh, l + 1));
                gemm_bt(xout, &xin[xo..], wl, [m, wi, wo], false);
                let d = &mut self.ds[self.rows * xoff(sh, l + 1)..][..nd * wo];
                act_rows(level, cfg.act, &mut xout[..m * wo], d);
            }
        }
    }

    /// Rows `i0..i1` of the head read weights `w`.
    fn read_rows(
        &mut self,
        cfg: &Config,
        level: Level,
        w: &[f32],
        q: &[f32],
        o: &mut [f32],
        [i0, i1]: [usize; 2],
    ) {
        let (dk, dv) = (cfg.shape.dk, cfg.shape.dv);
        let mut a = i0;
        while a < i1 {
            let m = self.rows.min(i1 - a);
            for r in 0..m {
                let row = &q[(a + r) * dk..(a + r + 1) * dk];
                l2n32(row, cfg.l2norm, &mut self.xs[r * dk..(r + 1) * dk]);
            }
            self.forward(cfg, level, w, m, 0);
            o[a * dv..(a + m) * dv].copy_from_slice(&self.y[..m * dv]);
            a += m;
        }
    }

    /// Stores the `n ≤ cap` tokens starting at key `j` (a whole chunk, or its first `n` tokens)
    /// into `st`, whose `start` equals `mem` (a chunk boundary); query rows `i0..i1` read the
    /// chunk-start weights in the same forward GEMMs when they fit beside the keys.
    #[allow(clippy::too_many_arguments)]
    fn store_chunk(
        &mut self,
        cfg: &Config,
        level: Level,
        h: &Head,
        st: &mut State,
        acc: &mut Acc64,
        [j, n]: [usize; 2],
        o: &mut [f32],
        [i0, i1]: [usize; 2],
    ) {
        let sh = &cfg.shape;
        let (dk, dv, cap) = (sh.dk, sh.dv, self.cap);
        // Forward at M_0 over the chunk's keys (rows 0..n) and its queries (rows n..n+nq):
        // X_l [n + nq, w_l], Y [n + nq, D_v].
        let nq = if i1 - i0 <= self.rows - n { i1 - i0 } else { 0 };
        if nq < i1 - i0 {
            self.read_rows(cfg, level, &st.start, h.q, o, [i0, i1]);
        }
        for a in 0..n {
            l2n32(
                &h.k[(j + a) * dk..(j + a + 1) * dk],
                cfg.l2norm,
                &mut self.xs[a * dk..(a + 1) * dk],
            );
        }
        for r in 0..nq {
            l2n32(
                &h.q[(i0 + r) * dk..(i0 + r + 1) * dk],
                cfg.l2norm,
                &mut self.xs[(n + r) * dk..(n + r + 1) * dk],
            );
        }
        self.forward(cfg, level, &st.start, n + nq, n);
        o[i0 * dv..(i0 + nq) * dv].copy_from_slice(&self.y[n * dv..(n + nq) * dv]);
        // Backward: G_{L−1} = 2(Y − V), G_{l−1} = (G_l W_l) ⊙ σ'(Z_{l−1}).
        let last = cap * goff(sh, sh.layers - 1);
        for (g, (&y, &v)) in self.gs[last..last + n * dv]
            .iter_mut()
            .zip(self.y.iter().zip(&h.v[j * dv..(j + n) * dv]))
        {
            *g = 2.0 * (y - v);
        }
        for l in (1..sh.layers).rev() {
            let (wo, wi, off) = (sh.width(l + 1), sh.width(l), sh.offset(l));
            let (lo, hi) = self.gs.split_at_mut(cap * goff(sh, l));
            let gprev = &mut lo[cap * goff(sh, l - 1)..][..n * wi];
            gemm(gprev, hi, &st.start[off..off + wo * wi], [n, wo, wi], false);
            let d = &self.ds[self.rows * xoff(sh, l)..][..n * wi];
            gprev.iter_mut().zip(d).for_each(|(g, &d)| *g *= d);
        }
        // Scan coefficients, backwards through the chunk (f64, rounded once).
        let (gl, gm, ga) = (h.gates.lr, h.gates.momentum, h.gates.decay);
        let (mut d, mut p, mut r_next) = (1.0f64, 1.0f64, 0.0f64);
        for a in (0..n).rev() {
            let eta_next = if a + 1 < n { gm[j + a + 1] as f64 } else { 0.0 };
            let r = d + eta_next * r_next;
            let theta = gl[j + a] as f64;
            self.r[a] = (-theta * r) as f32;
            self.p[a] = (-theta * p) as f32;
            r_next = r;
            d *= 1.0 - ga[j + a] as f64;
            p *= gm[j + a] as f64;
        }
        let (d0, r0, p0) = (d as f32, (gm[j] as f64 * r_next) as f32, p as f32);
        // Each token's step scaled by min(1, clip / ‖∇ℓ_a‖), ‖∇ℓ_a‖² = Σ_l ‖g_a^l‖² ‖x_a^l‖².
        if cfg.clip.is_finite() {
            for a in 0..n {
                let grad_sq: f64 = (0..sh.layers)
                    .map(|l| {
                        let (wo, wi) = (sh.width(l + 1), sh.width(l));
                        let g = &self.gs[cap * goff(sh, l) + a * wo..][..wo];
                        let x = &self.xs[self.rows * xoff(sh, l) + a * wi..][..wi];
                        sq64(g) * sq64(x)
                    })
                    .sum();
                let c = clip_factor(cfg.clip, grad_sq);
                if c < 1.0 {
                    self.r[a] = (self.r[a] as f64 * c) as f32;
                    self.p[a] = (self.p[a] as f64 * c) as f32;
                }
            }
        }
        // Per layer, one GEMM [r·G | p·G]ᵀ X gives both weighted sums, then one pass:
        // M_n = d0 M_0 + r0 S_prev + Σ_a r_a u_a,  S_n = p0 S_prev + Σ_a p_a u_a.
        for l in 0..sh.layers {
            let (wo, wi, off) = (sh.width(l + 1), sh.width(l), sh.offset(l));
            let g = &self.gs[cap * goff(sh, l)..][..n * wo];
            let x = &self.xs[self.rows * xoff(sh, l)..][..n * wi];
            for (a, (row, gr)) in
                self.a2[..n * 2 * wo].chunks_exact_mut(2 * wo).zip(g.chunks_exact(wo)).enumerate()
            {
                let (ra, pa) = row.split_at_mut(wo);
                let (cr, cp) = (self.r[a], self.p[a]);
                ra.iter_mut().zip(gr).for_each(|(d, &g)| *d = cr * g);
                pa.iter_mut().zip(gr).for_each(|(d, &g)| *d = cp * g);
            }
            let t2 = &mut self.t2[..2 * wo * wi];
            gemm_at(t2, &self.a2, x, [n, 2 * wo, wi], false);
            let (tr, tp) = t2.split_at(wo * wi);
            dispatch(
                level,
                Combine {
                    m32: &mut st.mem[off..off + wo * wi],
                    mem: &mut acc.mem[off..off + wo * wi],
                    mom: &mut acc.mom[off..off + wo * wi],
                    tr,
                    tp,
                    c: [d0, r0, p0],
                },
            );
        }
        st.filled = n;
        st.keys += n as u64;
    }
}

/// `M ← d0 M + r0 S + T_r`, `S ← p0 S + T_p` over one layer, one pass, in f64 ([`Acc64`]), the
/// f32 weights rounded from it.
struct Combine<'a> {
    m32: &'a mut [f32],
    mem: &'a mut [f64],
    mom: &'a mut [f64],
    tr: &'a [f32],
    tp: &'a [f32],
    c: [f32; 3],
}

impl Kernel for Combine<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let [d0, r0, p0] = self.c.map(f64::from);
        for ((((m32, m), s), &tr), &tp) in self
            .m32
            .iter_mut()
            .zip(self.mem.iter_mut())
            .zip(self.mom.iter_mut())
            .zip(self.tr)
            .zip(self.tp)
        {
            *m = d0 * *m + r0 * *s + tr as f64;
            *s = p0 * *s + tp as f64;
            *m32 = *m as f32;
        }
    }
}

/// Floats of scratch one head of [`chunked`] allocates for `t` keys.
pub fn scratch_floats(shape: &Shape, chunk: usize, t: usize) -> usize {
    let cap = chunk.max(1).min(t.max(1)).max(MIN_ROWS);
    Bufs::len(shape, cap) + Work::len(shape)
}

/// The chunked form over one head at [`Level::current`] (see [`chunked_at`]).
pub fn chunked(cfg: &Config, h: &Head, st: &mut State, o: &mut [f32], lse: &mut [f32]) -> u64 {
    chunked_at(Level::current(), cfg, h, st, o, lse)
}

/// The chunked form over one head with the activations at SIMD level `level` (a caller that
/// spreads heads over threads reads the level once on its own thread: a forced level is
/// thread-local): same function as [`super::reference::reference`] (same `state` in and out). A
/// state that ends mid-chunk is first completed token by token. Returns 0.
pub fn chunked_at(
    level: Level,
    cfg: &Config,
    h: &Head,
    st: &mut State,
    o: &mut [f32],
    lse: &mut [f32],
) -> u64 {
    let (dk, dv, b) = (cfg.shape.dk, cfg.shape.dv, cfg.chunk.max(1));
    let (s_q, t) = (h.q.len() / dk, h.k.len() / dk);
    let _ftz = FlushSubnormals::new();
    let stored = st.keys;
    for (i, l) in lse.iter_mut().enumerate().take(s_q) {
        *l = lse_of(cfg.q_offset, i, t, stored);
    }
    let mut bufs = Bufs::new(&cfg.shape, b.min(t.max(1)).max(MIN_ROWS));
    let mut work = Work::new(&cfg.shape);
    let mut acc = Acc64::new(st);
    // The first row whose read position is at least `j`.
    let first_at = |j: usize, from: usize| {
        (from..s_q).find(|&i| reads_after(cfg.q_offset, i, t) >= j).unwrap_or(s_q)
    };
    let mut i = 0;
    let mut j = 0;
    // Finish a chunk the state left open, token by token.
    while j < t && st.filled > 0 && st.filled < b {
        while i < s_q && reads_after(cfg.q_offset, i, t) == j {
            let (q, oi) = (&h.q[i * dk..(i + 1) * dk], &mut o[i * dv..(i + 1) * dv]);
            recurrent::read(cfg, st.readable(b), q, oi, &mut work);
            i += 1;
        }
        let g = [h.gates.lr[j], h.gates.momentum[j], h.gates.decay[j]];
        let (k, v) = (&h.k[j * dk..(j + 1) * dk], &h.v[j * dv..(j + 1) * dv]);
        recurrent::step_acc(cfg, st, k, v, g, &mut work, Some(&mut acc));
        j += 1;
    }
    while j < t {
        if st.filled >= b {
            st.start.copy_from_slice(&st.mem);
            st.filled = 0;
        }
        let n = b.min(t - j);
        // Rows reading at positions j..j+n read the chunk-start weights.
        let i1 = first_at(j + n, i);
        bufs.store_chunk(cfg, level, h, st, &mut acc, [j, n], o, [i, i1]);
        i = i1;
        j += n;
    }
    bufs.read_rows(cfg, level, st.readable(b), h.q, o, [i, s_q]);
    acc.finish(st);
    0
}
