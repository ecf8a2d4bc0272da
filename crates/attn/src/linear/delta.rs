//! The gated delta rule (Gated DeltaNet, Yang et al. 2024). Per head, with `α_t = exp(g_t)`
//! (`g_t ≤ 0`, natural-log decay), `β_t ∈ [0, 1]`, L2-normalised `k_t` and `q_t` (when `l2norm`):
//!
//! ```text
//! S_t = α_t S_{t−1} + k_t u_tᵀ,   u_t = β_t (v_t − α_t S_{t−1}ᵀ k_t)      (S: [K, V])
//! o_t = S_tᵀ (scale · q_t)
//! ```
//!
//! Chunked form (chunk of `n` tokens, state `S₀` before it, `γ_i = Σ_{t ≤ i} g_t` inside the
//! chunk): `A_ij = β_i e^{γ_i−γ_j} k_i·k_j` for `j < i`; forward substitution through `I + A`
//! (the UT transform) gives `w = (I+A)⁻¹ (β e^{γ} k)` and `u = (I+A)⁻¹ (β v)`; the pseudo-values
//! are `ũ_i = u_i − S₀ᵀ w_i` (solved for directly: `(I+A) ũ = β (v − S₀ᵀ(e^{γ} k))`), and
//! `o_i = e^{γ_i} S₀ᵀ q_i + Σ_{j ≤ i} e^{γ_i−γ_j} (q_i·k_j) ũ_j`,
//! `S_n = e^{γ_n} S₀ + Σ_j e^{γ_n−γ_j} k_j ũ_jᵀ`. Every factor `e^{…}` is `≤ 1`: stable in f32.
//!
//! A query row reads the state after its last key (`keys_seen`); with no key it reads the
//! initial state. `lse` has no softmax meaning here: `0` for a row that read a key or a given
//! initial state, `−∞` otherwise.

use super::{axpy, dot, keys_seen};
use crate::error::Result;
use crate::par::Par;
use crate::primitives::simd::exp2_scalar;
use std::f32::consts::LOG2_E;

/// One head's inputs, rows contiguous: `q: [S_q, K]`, `k: [T, K]`, `v: [T, V]`, `g, beta: [T]`.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Queries (raw: normalised and scaled by the kernels).
    pub q: &'a [f32],
    /// Keys (raw).
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Natural-log decay: `[T]` (scalar gate, Gated DeltaNet) or `[T, K]` (channel-wise gate,
    /// Kimi Delta Attention: `S_t = diag(α_t) S_{t−1} + k_t u_tᵀ`, `u_t = β_t (v_t − (diag(α_t)
    /// S_{t−1})ᵀ k_t)`; the chunked form replaces `e^{γ_i−γ_j}` by its per-channel vector).
    pub g: &'a [f32],
    /// Write strength per token.
    pub beta: &'a [f32],
    /// `K`.
    pub dk: usize,
    /// `V`.
    pub dv: usize,
}

/// What one call computes beyond the inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Query scale.
    pub scale: f32,
    /// L2-normalise q and k (fla's `use_qk_l2norm_in_kernel`).
    pub l2norm: bool,
    /// Absolute position of query row 0 (row `i` reads keys `j ≤ q_offset + i`).
    pub q_offset: i64,
}

impl Head<'_> {
    fn s_q(&self) -> usize {
        self.q.len() / self.dk
    }
    fn t(&self) -> usize {
        self.k.len() / self.dk
    }
}

fn l2n64(x: &[f32], on: bool) -> Vec<f64> {
    let n = if on { x.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>().sqrt() } else { 1.0 };
    let inv = if on { 1.0 / n.max(1e-6) } else { 1.0 };
    x.iter().map(|&a| a as f64 * inv).collect()
}

fn l2n32(x: &[f32], on: bool, alpha: f32, dst: &mut [f32]) {
    let inv = if on {
        let n = x.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>().sqrt();
        (1.0 / n.max(1e-6)) as f32
    } else {
        1.0
    };
    for (d, &a) in dst.iter_mut().zip(x) {
        *d = a * inv * alpha;
    }
}

fn lse_of(seen: bool) -> f32 {
    if seen {
        0.0
    } else {
        f32::NEG_INFINITY
    }
}

/// The naive form in f64: the recurrence with the state materialised, plain loops. `state`:
/// `[K, V]` in (the state before key 0) and out (after the last key). Returns 0 scores.
pub fn reference(cfg: &Config, h: &Head, state: &mut [f32], o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv, s_q, t) = (h.dk, h.dv, h.s_q(), h.t());
    let seen0 = state.iter().any(|&x| x != 0.0);
    let mut s: Vec<f64> = state.iter().map(|&x| x as f64).collect();
    // Loops run row-major over the state (`r` outer, `c` inner): each output element still sums
    // over `r` in order 0..K, and the state is walked contiguously.
    let mut acc = vec![0.0f64; dv];
    let mut read = |s: &[f64], i: usize, seen: bool, o: &mut [f32], lse: &mut [f32]| {
        let q = l2n64(&h.q[i * dk..(i + 1) * dk], cfg.l2norm);
        acc.fill(0.0);
        for (r, &qr) in q.iter().enumerate() {
            for (a, &x) in acc.iter_mut().zip(&s[r * dv..(r + 1) * dv]) {
                *a += x * qr * cfg.scale as f64;
            }
        }
        for (d, &a) in o[i * dv..(i + 1) * dv].iter_mut().zip(acc.iter()) {
            *d = a as f32;
        }
        lse[i] = lse_of(seen);
    };
    let mut sk = vec![0.0f64; dv];
    let mut i = 0;
    while i < s_q && keys_seen(cfg.q_offset, i, t) == 0 {
        read(&s, i, seen0, o, lse);
        i += 1;
    }
    for j in 0..t {
        let k = l2n64(&h.k[j * dk..(j + 1) * dk], cfg.l2norm);
        let gw = h.g.len() / t;
        let b = h.beta[j] as f64;
        for r in 0..dk {
            let a = (h.g[j * gw + if gw > 1 { r } else { 0 }] as f64).exp();
            s[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= a);
        }
        sk.fill(0.0);
        for (r, &kr) in k.iter().enumerate() {
            for (a, &x) in sk.iter_mut().zip(&s[r * dv..(r + 1) * dv]) {
                *a += x * kr;
            }
        }
        for (u, &v) in sk.iter_mut().zip(&h.v[j * dv..(j + 1) * dv]) {
            *u = b * (v as f64 - *u); // u_c = β (v_c − (Sᵀk)_c)
        }
        for (r, &kr) in k.iter().enumerate() {
            for (x, &u) in s[r * dv..(r + 1) * dv].iter_mut().zip(sk.iter()) {
                *x += kr * u;
            }
        }
        while i < s_q && keys_seen(cfg.q_offset, i, t) == j + 1 {
            read(&s, i, true, o, lse);
            i += 1;
        }
    }
    for (d, x) in state.iter_mut().zip(&s) {
        *d = *x as f32;
    }
    0
}

/// One step of the recurrence in f32 (decode): adds token (`k`, `v`, `g`, `beta`) to `state`
/// (`[K, V]`); `k` raw, normalised here when `l2norm`. `scratch`: `K + V` floats.
pub fn step(
    l2norm: bool,
    state: &mut [f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
    beta: f32,
    scratch: &mut [f32],
) {
    let (dk, dv) = (k.len(), v.len());
    let (kn, u) = scratch[..dk + dv].split_at_mut(dk);
    l2n32(k, l2norm, 1.0, kn);
    // One pass decays row r of the state and adds k_r × (decayed row) to u = S'ᵀk.
    u.fill(0.0);
    for (r, &kr) in kn.iter().enumerate() {
        let a = exp2_scalar(g[if g.len() > 1 { r } else { 0 }] * LOG2_E);
        for (u, x) in u.iter_mut().zip(&mut state[r * dv..(r + 1) * dv]) {
            *x *= a;
            *u += kr * *x;
        }
    }
    for (u, &v) in u.iter_mut().zip(v) {
        *u = beta * (v - *u);
    }
    for (r, &kr) in kn.iter().enumerate() {
        axpy(&mut state[r * dv..(r + 1) * dv], kr, u);
    }
}

/// Reads `state` with query `q` (raw): `o = stateᵀ (scale · q̂)`. `scratch`: `K` floats.
pub fn read(cfg: &Config, state: &[f32], q: &[f32], o: &mut [f32], scratch: &mut [f32]) {
    let dv = o.len();
    let qn = &mut scratch[..q.len()];
    l2n32(q, cfg.l2norm, cfg.scale, qn);
    o.fill(0.0);
    for (r, &x) in qn.iter().enumerate() {
        axpy(o, x, &state[r * dv..(r + 1) * dv]);
    }
}

/// The recurrent form in f32: [`step`] per key, each row read after its last key. Returns 0.
pub fn recurrent(cfg: &Config, h: &Head, state: &mut [f32], o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv, s_q, t) = (h.dk, h.dv, h.s_q(), h.t());
    let seen0 = state.iter().any(|&x| x != 0.0);
    let mut scratch = vec![0.0f32; dk + dv];
    let mut i = 0;
    while i < s_q && keys_seen(cfg.q_offset, i, t) == 0 {
        read(cfg, state, &h.q[i * dk..(i + 1) * dk], &mut o[i * dv..(i + 1) * dv], &mut scratch);
        lse[i] = lse_of(seen0);
        i += 1;
    }
    for j in 0..t {
        let (k, v) = (&h.k[j * dk..(j + 1) * dk], &h.v[j * dv..(j + 1) * dv]);
        let gw = h.g.len() / t;
        step(cfg.l2norm, state, k, v, &h.g[j * gw..(j + 1) * gw], h.beta[j], &mut scratch);
        while i < s_q && keys_seen(cfg.q_offset, i, t) == j + 1 {
            read(
                cfg,
                state,
                &h.q[i * dk..(i + 1) * dk],
                &mut o[i * dv..(i + 1) * dv],
                &mut scratch,
            );
            lse[i] = 0.0;
            i += 1;
        }
    }
    0
}

/// `Σ_r x_r y_r e_r` in f32, in the fixed order of [`dot`] (8 interleaved partial sums).
#[inline(always)]
fn dot3(x: &[f32], y: &[f32], e: &[f32]) -> f32 {
    let n = x.len().min(y.len()).min(e.len());
    let mut acc = [0.0f32; 8];
    let (xc, yc, ec) = (x[..n].chunks_exact(8), y[..n].chunks_exact(8), e[..n].chunks_exact(8));
    let (xr, yr, er) = (xc.remainder(), yc.remainder(), ec.remainder());
    for ((x, y), e) in xc.zip(yc).zip(ec) {
        for l in 0..8 {
            acc[l] += x[l] * y[l] * e[l];
        }
    }
    for (l, ((x, y), e)) in xr.iter().zip(yr).zip(er).enumerate() {
        acc[l] += x * y * e;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// The chunkwise-parallel form (UT representation, see the module doc) with chunks of `chunk`
/// tokens. Returns the `q·k` scores computed inside chunks (rows × their in-chunk keys).
///
/// Self-attention prefill (`S_q = T`, row `i` reads keys `0..=i`) runs as tiles of matrix
/// products ([`chunked_tiles`]); other row layouts run token by token ([`chunked_rows`]). Both
/// compute the same equations.
pub fn chunked(
    cfg: &Config,
    h: &Head,
    chunk: usize,
    state: &mut [f32],
    o: &mut [f32],
    lse: &mut [f32],
) -> u64 {
    let (s_q, t) = (h.s_q(), h.t());
    if s_q == t && t > 0 && keys_seen(cfg.q_offset, 0, t) == 1 {
        chunked_tiles(cfg, h, chunk, state, o, lse)
    } else {
        chunked_rows(cfg, h, chunk, state, o, lse)
    }
}

/// The largest decay `|γ|` (natural log, per channel) one tile of [`chunked_tiles`] may span:
/// its factors `e^{±γ}` then stay inside f32 range (`e^{60} ≈ 1.1e26`). A chunk whose decay grows
/// past it is cut short there (down to one token), so any gate is handled.
const MAX_SPAN: f32 = 60.0;

/// The chunked form as matrix products, for self-attention prefill (row `a` reads keys
/// `0..=a`). For a tile of `n` tokens with in-tile cumulative log-decays `γ_a` (one per key
/// channel, or one for all):
///
/// ```text
/// K̃ = k̂ ⊙ e^{γ_a},  Q̃ = s q̂ ⊙ e^{γ_a},  K̆ = k̂ ⊙ e^{−γ_b}          (row-wise, per channel)
/// [A′; P] = [K̃; Q̃] K̆ᵀ          A′_ab = Σ_r k̂_ar k̂_br e^{γ_ar − γ_br}   (one GEMM, 2n × n)
/// [X; Y]  = [K̃; Q̃] S₀                                                   (one GEMM, 2n × V)
/// ũ_a     = β_a (v_a − X_a) − Σ_{b<a} β_a A′_ab ũ_b                      (forward substitution)
/// o_a     = Y_a + Σ_{b ≤ a} P_ab ũ_b                                     (GEMM, P lower-triangular)
/// S       = diag(e^{γ_n}) S₀ + (k̂ ⊙ e^{γ_n − γ_b})ᵀ Ũ                   (GEMM)
/// ```
///
/// — the equations of [`chunked_rows`] with the decays factored per channel so that the pairwise
/// products become matrix products. `e^{±γ}` are bounded by `MAX_SPAN`.
pub fn chunked_tiles(
    cfg: &Config,
    h: &Head,
    chunk: usize,
    state: &mut [f32],
    o: &mut [f32],
    lse: &mut [f32],
) -> u64 {
    use crate::primitives::gemm::{gemm, gemm_at_add, gemm_bt};
    let (dk, dv, t) = (h.dk, h.dv, h.t());
    let c = chunk.max(1);
    let gw = h.g.len() / t;
    let ch = |r: usize| if gw > 1 { r } else { 0 };
    let mut gam = vec![0.0f32; c * gw]; // γ_a of the tile: [n, gw]
    let mut kq = vec![0.0f32; 2 * c * dk]; // [K̃; Q̃]: [2n, K]
    let mut kb = vec![0.0f32; c * dk]; // K̆, then k̂ ⊙ e^{γ_n − γ_b}: [n, K]
    let mut sc = vec![0.0f32; 2 * c * c]; // [A′; P]: [2n, n]
    let mut xy = vec![0.0f32; 2 * c * dv]; // [X; Y]: [2n, V]
    let mut u = vec![0.0f32; c * dv]; // Ũ: [n, V]
    let mut row = vec![0.0f32; dk];
    let (mut ea, mut eb) = (vec![0.0f32; gw], vec![0.0f32; gw]); // e^{γ_a}, e^{−γ_a}
    let mut pairs = 0u64;
    let mut c0 = 0;
    while c0 < t {
        // The tile: up to `c` tokens, cut where the decay would pass MAX_SPAN.
        let mut n = 0;
        while n < c.min(t - c0) {
            let g = &h.g[(c0 + n) * gw..(c0 + n + 1) * gw];
            let (prev, cur) = gam.split_at_mut(n * gw);
            let cur = &mut cur[..gw];
            for (r, (x, &gr)) in cur.iter_mut().zip(g).enumerate() {
                *x = if n == 0 { gr } else { prev[(n - 1) * gw + r] + gr };
            }
            if n > 0 && cur.iter().any(|x| x.abs() > MAX_SPAN) {
                break;
            }
            n += 1;
        }
        for a in 0..n {
            let ga = &gam[a * gw..(a + 1) * gw];
            for ((e, ei), &x) in ea.iter_mut().zip(eb.iter_mut()).zip(ga) {
                (*e, *ei) = (exp2_scalar(x * LOG2_E), exp2_scalar(-x * LOG2_E));
            }
            l2n32(&h.k[(c0 + a) * dk..(c0 + a + 1) * dk], cfg.l2norm, 1.0, &mut row);
            let (kt, kv) = (&mut kq[a * dk..(a + 1) * dk], &mut kb[a * dk..(a + 1) * dk]);
            for r in 0..dk {
                kt[r] = row[r] * ea[ch(r)];
                kv[r] = row[r] * eb[ch(r)];
            }
            l2n32(&h.q[(c0 + a) * dk..(c0 + a + 1) * dk], cfg.l2norm, cfg.scale, &mut row);
            let qt = &mut kq[(n + a) * dk..(n + a + 1) * dk];
            for r in 0..dk {
                qt[r] = row[r] * ea[ch(r)];
            }
        }
        gemm_bt(&mut sc, &kq, &kb, [2 * n, dk, n], false);
        gemm(&mut xy, &kq, state, [2 * n, dk, dv], false);
        // ũ by forward substitution through I + A (A_ab = β_a A′_ab, b < a).
        for a in 0..n {
            let beta = h.beta[c0 + a];
            let (done, ua) = u.split_at_mut(a * dv);
            let ua = &mut ua[..dv];
            let (v, x) = (&h.v[(c0 + a) * dv..(c0 + a + 1) * dv], &xy[a * dv..(a + 1) * dv]);
            ua.iter_mut().zip(v.iter().zip(x)).for_each(|(y, (&v, &x))| *y = beta * (v - x));
            for b in 0..a {
                axpy(ua, -beta * sc[a * n + b], &done[b * dv..(b + 1) * dv]);
            }
        }
        // o = Y + tril(P) Ũ.
        let p = &mut sc[n * n..2 * n * n];
        for a in 0..n {
            p[a * n + a + 1..(a + 1) * n].fill(0.0);
        }
        let orows = &mut o[c0 * dv..(c0 + n) * dv];
        orows.copy_from_slice(&xy[n * dv..2 * n * dv]);
        gemm(orows, p, &u, [n, n, dv], true);
        lse[c0..c0 + n].fill(0.0);
        pairs += (n * (n + 1) / 2) as u64;
        // S = diag(e^{γ_n}) S₀ + (k̂ ⊙ e^{γ_n − γ_b})ᵀ Ũ.
        let last = &gam[(n - 1) * gw..n * gw];
        ea.iter_mut().zip(last).for_each(|(e, &x)| *e = exp2_scalar(x * LOG2_E));
        for r in 0..dk {
            let e = ea[ch(r)];
            state[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= e);
        }
        for kv in kb[..n * dk].chunks_exact_mut(dk) {
            kv.iter_mut().enumerate().for_each(|(r, x)| *x *= ea[ch(r)]);
        }
        gemm_at_add(state, &kb, &u, [n, dk, dv]);
        c0 += n;
    }
    pairs
}

/// The chunked form token by token, for any row layout (`S_q ≠ T`, query offsets).
///
/// Inside a chunk, token `a` is processed in order: the pairwise decays `e_b = e^{γ_a − γ_b}`
/// (`b ≤ a`, one value or one per channel) are kept as running products `e_b ← α_a e_b`, so the
/// only exponentials are `α_a = e^{g_a}` and no factor ever exceeds 1. The pseudo-value
/// `ũ_a = β_a (v_a − S₀ᵀ(e^{γ_a} ⊙ k̂_a)) − Σ_{b<a} A_ab ũ_b` is the forward substitution of
/// `(I + A) Ũ = diag(β)(V − (e^{γ} ⊙ K̂) S₀)`, i.e. `U − W S₀` without forming `W`; rows whose last
/// key is `a` are then read at once.
pub fn chunked_rows(
    cfg: &Config,
    h: &Head,
    chunk: usize,
    state: &mut [f32],
    o: &mut [f32],
    lse: &mut [f32],
) -> u64 {
    let (dk, dv, s_q, t) = (h.dk, h.dv, h.s_q(), h.t());
    let c = chunk.max(1);
    let seen0 = state.iter().any(|&x| x != 0.0);
    let mut scratch = vec![0.0f32; dk + dv];
    let mut i = 0;
    while i < s_q && keys_seen(cfg.q_offset, i, t) == 0 {
        read(cfg, state, &h.q[i * dk..(i + 1) * dk], &mut o[i * dv..(i + 1) * dv], &mut scratch);
        lse[i] = lse_of(seen0);
        i += 1;
    }
    // Per-chunk buffers, sized once. `gw`: 1 (scalar gate, Gated DeltaNet) or K (channel-wise
    // gate, KDA); `ch(r)`: the gate entry of key channel r.
    let gw = h.g.len() / t;
    let ch = |r: usize| if gw > 1 { r } else { 0 };
    let mut kn = vec![0.0f32; c * dk]; // k̂ of the chunk: [n, K]
    let mut u = vec![0.0f32; c * dv]; // ũ of the chunk: [n, V]
    let mut e = vec![0.0f32; c * gw]; // e^{γ_a − γ_b} for the current a: [n, gw]
    let mut pa = vec![0.0f32; gw]; // e^{γ_a}
    let mut alpha = vec![0.0f32; gw];
    let mut f = vec![0.0f32; dk];
    let mut qn = vec![0.0f32; dk];
    let mut pairs = 0u64;
    let mut c0 = 0;
    while c0 < t {
        let n = c.min(t - c0);
        pa.fill(1.0);
        for a in 0..n {
            for (al, &g) in alpha.iter_mut().zip(&h.g[(c0 + a) * gw..(c0 + a + 1) * gw]) {
                *al = exp2_scalar(g * LOG2_E);
            }
            for (p, &al) in pa.iter_mut().zip(&alpha) {
                *p *= al;
            }
            for eb in e[..a * gw].chunks_exact_mut(gw) {
                for (x, &al) in eb.iter_mut().zip(&alpha) {
                    *x *= al;
                }
            }
            e[a * gw..(a + 1) * gw].fill(1.0);
            let (kp, ka) = kn.split_at_mut(a * dk);
            let ka = &mut ka[..dk];
            l2n32(&h.k[(c0 + a) * dk..(c0 + a + 1) * dk], cfg.l2norm, 1.0, ka);
            // ũ_a = β_a (v_a − S₀ᵀ(e^{γ_a} ⊙ k̂_a)) − Σ_{b<a} A_ab ũ_b.
            let beta = h.beta[c0 + a];
            let (up, ua) = u.split_at_mut(a * dv);
            let ua = &mut ua[..dv];
            ua.copy_from_slice(&h.v[(c0 + a) * dv..(c0 + a + 1) * dv]);
            for (r, (fr, &k)) in f.iter_mut().zip(ka.iter()).enumerate() {
                *fr = pa[ch(r)] * k;
            }
            for (r, &x) in f.iter().enumerate() {
                axpy(ua, -x, &state[r * dv..(r + 1) * dv]);
            }
            ua.iter_mut().for_each(|x| *x *= beta);
            for b in 0..a {
                let kb = &kp[b * dk..(b + 1) * dk];
                let eb = &e[b * gw..(b + 1) * gw];
                let coef = beta * if gw == 1 { eb[0] * dot(ka, kb) } else { dot3(ka, kb, eb) };
                axpy(ua, -coef, &up[b * dv..(b + 1) * dv]);
            }
            // Rows whose last key is this one: o = (e^{γ_a} ⊙ q̂)ᵀ S₀ + Σ_{b ≤ a} (q̂ ⋅_e k̂_b) ũ_b.
            while i < s_q && keys_seen(cfg.q_offset, i, t) == c0 + a + 1 {
                l2n32(&h.q[i * dk..(i + 1) * dk], cfg.l2norm, cfg.scale, &mut qn);
                let oi = &mut o[i * dv..(i + 1) * dv];
                oi.fill(0.0);
                for (r, &x) in qn.iter().enumerate() {
                    axpy(oi, pa[ch(r)] * x, &state[r * dv..(r + 1) * dv]);
                }
                for b in 0..=a {
                    let kb = &kn[b * dk..(b + 1) * dk];
                    let eb = &e[b * gw..(b + 1) * gw];
                    let s = if gw == 1 { eb[0] * dot(&qn, kb) } else { dot3(&qn, kb, eb) };
                    axpy(oi, s, &u[b * dv..(b + 1) * dv]);
                }
                pairs += (a + 1) as u64;
                lse[i] = 0.0;
                i += 1;
            }
        }
        // State passing: S = diag(e^{γ_n}) S₀ + Σ_b (e^{γ_n − γ_b} ⊙ k̂_b) ũ_bᵀ (`pa`, `e` now hold
        // the decays through the chunk's last token).
        for r in 0..dk {
            let el = pa[ch(r)];
            state[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= el);
        }
        for b in 0..n {
            let eb = &e[b * gw..(b + 1) * gw];
            for (r, (f, &k)) in f.iter_mut().zip(&kn[b * dk..(b + 1) * dk]).enumerate() {
                *f = eb[ch(r)] * k;
            }
            let ub = &u[b * dv..(b + 1) * dv];
            for (r, &x) in f.iter().enumerate() {
                axpy(&mut state[r * dv..(r + 1) * dv], x, ub);
            }
        }
        c0 += n;
    }
    while i < s_q {
        read(cfg, state, &h.q[i * dk..(i + 1) * dk], &mut o[i * dv..(i + 1) * dv], &mut scratch);
        lse[i] = 0.0;
        i += 1;
    }
    pairs
}

/// Which form [`gated_delta_rule`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// f64 naive recurrence.
    Reference,
    /// f32 token-by-token.
    Recurrent,
    /// f32 chunkwise (UT), chunks of this many tokens.
    Chunked(usize),
}

/// Inputs in the fla layout: `q, k: [B, T, H, K]`, `v: [B, T, H, V]`, `g, beta: [B, T, H]`.
#[derive(Debug, Clone, Copy)]
pub struct DeltaInputs<'a> {
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Natural-log decay (`≤ 0`): `[B, T, H]` (Gated DeltaNet) or `[B, T, H, K]` (KDA).
    pub g: &'a [f32],
    /// β.
    pub beta: &'a [f32],
    /// `[B, T, H, K, V]`.
    pub shape: [usize; 5],
    /// Query scale (fla default `K^-1/2`).
    pub scale: f32,
    /// L2-normalise q and k inside.
    pub l2norm: bool,
}

/// The gated delta rule over fla-layout inputs: writes `o: [B, T, H, V]` and the final state
/// `[B, H, K, V]`, starting from `initial_state` (`[B, H, K, V]`, zeros when `None`).
///
/// # Errors
/// [`Error::Empty`](crate::Error::Empty) for a zero dimension,
/// [`Error::Shape`](crate::Error::Shape) for a slice of the wrong length,
/// [`Error::NonFinite`](crate::Error::NonFinite) for a non-finite input.
pub fn gated_delta_rule(
    x: &DeltaInputs,
    initial_state: Option<&[f32]>,
    form: Form,
    par: Par,
    o: &mut [f32],
    final_state: &mut [f32],
) -> Result<()> {
    let [b, t, h, dk, dv] = x.shape;
    // g: [B, T, H] (scalar gate, Gated DeltaNet) or [B, T, H, K] (channel-wise gate, KDA).
    let gw = if x.g.len() == b * t * h * dk && dk > 1 { dk } else { 1 };
    super::check_fla(
        "gated_delta_rule",
        x.shape,
        &[
            ("q", x.q.len(), b * t * h * dk),
            ("k", x.k.len(), b * t * h * dk),
            ("v", x.v.len(), b * t * h * dv),
            ("g", x.g.len(), b * t * h * gw),
            ("beta", x.beta.len(), b * t * h),
            ("o", o.len(), b * t * h * dv),
            ("final_state", final_state.len(), b * h * dk * dv),
        ],
        &[("q", x.q, dk), ("k", x.k, dk), ("v", x.v, dv), ("g", x.g, gw), ("beta", x.beta, 1)],
        initial_state,
    )?;
    let cfg = Config { scale: x.scale, l2norm: x.l2norm, q_offset: 0 };
    let buf_len = t * (2 * dk + dv + gw + 2);
    super::fla_heads(
        [b, t, h, dv],
        initial_state,
        par,
        o,
        final_state,
        buf_len,
        |buf, bi, hi, st, oh| {
            let (qb, rest) = buf.split_at_mut(t * dk);
            let (kb, rest) = rest.split_at_mut(t * dk);
            let (vb, rest) = rest.split_at_mut(t * dv);
            let (gb, rest) = rest.split_at_mut(t * gw);
            let (bb, lse) = rest.split_at_mut(t);
            let gather = |src: &[f32], w: usize, dst: &mut [f32]| {
                super::gather_head(src, [b, t, h, w], bi, hi, dst)
            };
            gather(x.q, dk, qb);
            gather(x.k, dk, kb);
            gather(x.v, dv, vb);
            gather(x.g, gw, gb);
            gather(x.beta, 1, bb);
            let head = Head { q: qb, k: kb, v: vb, g: gb, beta: bb, dk, dv };
            match form {
                Form::Reference => reference(&cfg, &head, st, oh, lse),
                Form::Recurrent => recurrent(&cfg, &head, st, oh, lse),
                Form::Chunked(n) => chunked(&cfg, &head, n, st, oh, lse),
            };
        },
    );
    Ok(())
}
