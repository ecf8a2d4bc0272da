//! Kernelised linear attention (Katharopoulos et al. 2020): scores `scale · φ(q_i)·φ(k_j)`,
//! no softmax. With `norm` the output is divided by the normaliser
//! `den_i = scale · φ(q_i) · Σ_j φ(k_j) + eps · n_i` (sums over the `n_i` keys row `i` reads;
//! `eps = 0` for plain linear attention, NaLaFormer's mean-normalised `ε` otherwise).
//!
//! Conventions (also in `methods/linear/README.md`): with `norm`, `o_i = num_i / den_i` and
//! `lse_i = ln |den_i|` (`o_i = 0`, `lse_i = −∞` when `den_i = 0`); without `norm`,
//! `o_i = num_i` and `lse_i = 0`; a row that reads no key gets `o_i = 0`, `lse_i = −∞`. Never
//! NaN for finite inputs.

use super::delta::Form;
use super::{axpy, dot, keys_seen, FeatureMap};
use crate::error::Result;
use crate::par::Par;

/// What one call computes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// The feature map.
    pub map: FeatureMap,
    /// Causal (row `i` reads keys `j ≤ q_offset + i`) or not (every key).
    pub causal: bool,
    /// Divide by the normaliser.
    pub norm: bool,
    /// Score scale.
    pub scale: f32,
    /// Absolute position of query row 0 (causal only).
    pub q_offset: i64,
    /// Added to the normaliser once per key read (`norm` only; 0 = plain linear attention).
    pub eps: f32,
}

/// One head's inputs, rows contiguous: `q: [S_q, K]`, `k: [S_kv, K]`, `v: [S_kv, V]`.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// `K`.
    pub dk: usize,
    /// `V`.
    pub dv: usize,
}

impl Head<'_> {
    fn s_q(&self) -> usize {
        self.q.len() / self.dk
    }
    fn s_kv(&self) -> usize {
        self.k.len() / self.dk
    }
}

fn finish(cfg: &Config, num: &[f32], den: f32, seen: bool, o: &mut [f32]) -> f32 {
    if !seen || (cfg.norm && den == 0.0) {
        o.fill(0.0);
        return f32::NEG_INFINITY;
    }
    if !cfg.norm {
        o.copy_from_slice(num);
        return 0.0;
    }
    let inv = 1.0 / den;
    for (o, n) in o.iter_mut().zip(num) {
        *o = n * inv;
    }
    den.abs().ln()
}

/// The naive quadratic form in f64: every score `scale·φ(q_i)·φ(k_j)` materialised, plain
/// loops. Writes `o: [S_q, V]`, `lse: [S_q]`; returns the number of scores computed.
pub fn reference(cfg: &Config, h: &Head, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv, s_kv) = (h.dk, h.dv, h.s_kv());
    let phi = |x: &[f32]| -> Vec<f64> { x.iter().map(|&x| cfg.map.apply_f64(x as f64)).collect() };
    let fk: Vec<Vec<f64>> = (0..s_kv).map(|j| phi(&h.k[j * dk..(j + 1) * dk])).collect();
    let mut pairs = 0;
    for i in 0..h.s_q() {
        let fq = phi(&h.q[i * dk..(i + 1) * dk]);
        let n = if cfg.causal { keys_seen(cfg.q_offset, i, s_kv) } else { s_kv };
        let (mut num, mut den) = (vec![0.0f64; dv], 0.0f64);
        for (j, fk) in fk.iter().enumerate().take(n) {
            let s = cfg.scale as f64 * fq.iter().zip(fk).map(|(a, b)| a * b).sum::<f64>();
            den += s;
            for (c, x) in num.iter_mut().enumerate() {
                *x += s * h.v[j * dv + c] as f64;
            }
            pairs += 1;
        }
        let den = den + cfg.eps as f64 * n as f64;
        let num32: Vec<f32> = num
            .iter()
            .map(|&x| if cfg.norm && den != 0.0 { (x / den) as f32 } else { x as f32 })
            .collect();
        let dst = &mut o[i * dv..(i + 1) * dv];
        if n == 0 || (cfg.norm && den == 0.0) {
            dst.fill(0.0);
            lse[i] = f32::NEG_INFINITY;
        } else {
            dst.copy_from_slice(&num32);
            lse[i] = if cfg.norm { den.abs().ln() as f32 } else { 0.0 };
        }
    }
    pairs
}

/// The recurrent state of one head: `s = Σ_j φ(k_j) v_jᵀ` (`[K, V]` row-major),
/// `z = Σ_j φ(k_j)` (`[K]`) and the number of keys `n`.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// `[K, V]`.
    pub s: Vec<f32>,
    /// `[K]`.
    pub z: Vec<f32>,
    /// Keys added.
    pub n: u64,
}

impl State {
    /// The empty state.
    pub fn new(dk: usize, dv: usize) -> Self {
        Self { s: vec![0.0; dk * dv], z: vec![0.0; dk], n: 0 }
    }

    /// Adds one key/value pair (raw `k`; `φ` applied here).
    pub fn update(&mut self, map: FeatureMap, k: &[f32], v: &[f32]) {
        let dv = v.len();
        self.n += 1;
        for (c, &x) in k.iter().enumerate() {
            let f = map.apply(x);
            self.z[c] += f;
            axpy(&mut self.s[c * dv..(c + 1) * dv], f, v);
        }
    }

    /// Reads the state with query `q` (raw): writes `o` and returns `lse` ([`Config`] rules);
    /// `seen` says whether any key has been added.
    pub fn read(&self, cfg: &Config, q: &[f32], seen: bool, o: &mut [f32]) -> f32 {
        let dv = o.len();
        let mut num = vec![0.0f32; dv];
        let mut den = 0.0f32;
        for (c, &x) in q.iter().enumerate() {
            let f = cfg.scale * cfg.map.apply(x);
            den += f * self.z[c];
            axpy(&mut num, f, &self.s[c * dv..(c + 1) * dv]);
        }
        den += cfg.eps * self.n as f32;
        finish(cfg, &num, den, seen, o)
    }
}

/// The recurrent form: keys are added one at a time to `state` (in: the state before key 0, out:
/// after the last key); each causal row is read right after its last key, each non-causal row
/// after all keys. Returns 0 scores computed.
pub fn recurrent(cfg: &Config, h: &Head, state: &mut State, o: &mut [f32], lse: &mut [f32]) -> u64 {
    let (dk, dv, s_q, s_kv) = (h.dk, h.dv, h.s_q(), h.s_kv());
    let seen0 = state.z.iter().any(|&z| z != 0.0);
    let mut i = 0;
    let mut emit = |state: &State, upto: usize, i: &mut usize| {
        while *i < s_q && (!cfg.causal || keys_seen(cfg.q_offset, *i, s_kv) <= upto) {
            let seen = upto > 0 || seen0;
            lse[*i] =
                state.read(cfg, &h.q[*i * dk..(*i + 1) * dk], seen, &mut o[*i * dv..(*i + 1) * dv]);
            *i += 1;
        }
    };
    if cfg.causal {
        emit(state, 0, &mut i);
    }
    for j in 0..s_kv {
        state.update(cfg.map, &h.k[j * dk..(j + 1) * dk], &h.v[j * dv..(j + 1) * dv]);
        if cfg.causal || j + 1 == s_kv {
            emit(state, j + 1, &mut i);
        }
    }
    0
}

/// The chunkwise-parallel form with chunks of `chunk` keys: rows whose last key falls in a chunk
/// read the state before the chunk plus the chunk's keys up to their own (quadratic inside the
/// chunk); then the chunk is added to the state. Non-causal: the state of every key, read once
/// per row. Returns the scores computed inside chunks.
///
/// Causal self-attention prefill (`S_q = S_kv`, row `i` reads keys `0..=i`) and non-causal calls
/// run as tiles of matrix products ([`chunked_tiles`]); other row layouts row by row
/// ([`chunked_rows`]). Both compute the same equations.
pub fn chunked(
    cfg: &Config,
    h: &Head,
    chunk: usize,
    state: &mut State,
    o: &mut [f32],
    lse: &mut [f32],
) -> u64 {
    let (s_q, s_kv) = (h.s_q(), h.s_kv());
    let aligned = s_q == s_kv && s_kv > 0 && keys_seen(cfg.q_offset, 0, s_kv) == 1;
    if (cfg.causal && aligned) || (!cfg.causal && s_kv > 0) {
        chunked_tiles(cfg, h, chunk, state, o, lse)
    } else {
        chunked_rows(cfg, h, chunk, state, o, lse)
    }
}

/// [`chunked`] as matrix products (one faer GEMM per step, one thread). Causal (rows aligned with
/// keys), per chunk of `n` tokens with features `Φq = s·φ(Q)`, `Φk = φ(K)`:
///
/// ```text
/// P   = tril(Φq Φkᵀ)                          (in-chunk scores, row a sees keys b ≤ a)
/// num = Φq S + P V,   den = Φq z + P·1 + ε (n_before + a + 1)
/// S  += Φkᵀ V,        z  += Φkᵀ 1
/// ```
///
/// Non-causal: the state of all keys by the same update, then every row reads it
/// (`num = Φq S`, `den = Φq z + ε n`), 64 rows per product.
pub fn chunked_tiles(
    cfg: &Config,
    h: &Head,
    chunk: usize,
    state: &mut State,
    o: &mut [f32],
    lse: &mut [f32],
) -> u64 {
    use crate::primitives::gemm::{gemm, gemm_at_add, gemm_bt};
    let (dk, dv, s_q, s_kv) = (h.dk, h.dv, h.s_q(), h.s_kv());
    let c = chunk.max(1);
    let mut fq = vec![0.0f32; c * dk];
    let mut fk = vec![0.0f32; c * dk];
    let mut p = vec![0.0f32; c * c];
    let mut num = vec![0.0f32; c * dv];
    let mut pairs = 0u64;
    let features = |x: &[f32], alpha: f32, dst: &mut [f32]| {
        dst.iter_mut().zip(x).for_each(|(d, &x)| *d = alpha * cfg.map.apply(x));
    };
    let add_keys = |state: &mut State, fk: &[f32], v: &[f32], n: usize| {
        gemm_at_add(&mut state.s, fk, v, [n, dk, dv]);
        for f in fk[..n * dk].chunks_exact(dk) {
            state.z.iter_mut().zip(f).for_each(|(z, &x)| *z += x);
        }
        state.n += n as u64;
    };
    if cfg.causal {
        let mut c0 = 0;
        while c0 < s_kv {
            let n = c.min(s_kv - c0);
            features(&h.q[c0 * dk..(c0 + n) * dk], cfg.scale, &mut fq[..n * dk]);
            features(&h.k[c0 * dk..(c0 + n) * dk], 1.0, &mut fk[..n * dk]);
            let v = &h.v[c0 * dv..(c0 + n) * dv];
            gemm(&mut num, &fq, &state.s, [n, dk, dv], false);
            gemm_bt(&mut p, &fq, &fk, [n, dk, n], false);
            for a in 0..n {
                p[a * n + a + 1..(a + 1) * n].fill(0.0);
            }
            gemm(&mut num, &p, v, [n, n, dv], true);
            for a in 0..n {
                let den = dot(&fq[a * dk..(a + 1) * dk], &state.z)
                    + p[a * n..a * n + a + 1].iter().sum::<f32>()
                    + cfg.eps * (state.n + a as u64 + 1) as f32;
                let row = c0 + a;
                lse[row] = finish(
                    cfg,
                    &num[a * dv..(a + 1) * dv],
                    den,
                    true,
                    &mut o[row * dv..(row + 1) * dv],
                );
            }
            pairs += (n * (n + 1) / 2) as u64;
            add_keys(state, &fk, v, n);
            c0 += n;
        }
        return pairs;
    }
    // Non-causal: every key into the state, then every row reads it.
    let mut c0 = 0;
    while c0 < s_kv {
        let n = c.min(s_kv - c0);
        features(&h.k[c0 * dk..(c0 + n) * dk], 1.0, &mut fk[..n * dk]);
        add_keys(state, &fk, &h.v[c0 * dv..(c0 + n) * dv], n);
        c0 += n;
    }
    // The row-by-row form counts the last chunk's keys as in-chunk scores for every row.
    let last = s_kv - (s_kv - 1) / c * c;
    let mut r0 = 0;
    while r0 < s_q {
        let n = c.min(s_q - r0);
        features(&h.q[r0 * dk..(r0 + n) * dk], cfg.scale, &mut fq[..n * dk]);
        gemm(&mut num, &fq, &state.s, [n, dk, dv], false);
        for a in 0..n {
            let den = dot(&fq[a * dk..(a + 1) * dk], &state.z) + cfg.eps * state.n as f32;
            let row = r0 + a;
            lse[row] = finish(
                cfg,
                &num[a * dv..(a + 1) * dv],
                den,
                true,
                &mut o[row * dv..(row + 1) * dv],
            );
        }
        pairs += (n * last) as u64;
        r0 += n;
    }
    pairs
}

/// [`chunked`] row by row, for any row layout.
pub fn chunked_rows(
    cfg: &Config,
    h: &Head,
    chunk: usize,
    state: &mut State,
    o: &mut [f32],
    lse: &mut [f32],
) -> u64 {
    let (dk, dv, s_q, s_kv) = (h.dk, h.dv, h.s_q(), h.s_kv());
    let chunk = chunk.max(1);
    let seen0 = state.z.iter().any(|&z| z != 0.0);
    let fk: Vec<f32> = h.k.iter().map(|&x| cfg.map.apply(x)).collect();
    let mut fq = vec![0.0f32; dk];
    let mut num = vec![0.0f32; dv];
    let mut pairs = 0u64;
    let mut i = 0;
    let ks = |i: usize| if cfg.causal { keys_seen(cfg.q_offset, i, s_kv) } else { s_kv };
    // Rows that read the initial state only.
    while i < s_q && ks(i) == 0 {
        lse[i] = state.read(cfg, &h.q[i * dk..(i + 1) * dk], seen0, &mut o[i * dv..(i + 1) * dv]);
        i += 1;
    }
    let mut c0 = 0;
    while c0 < s_kv {
        let c1 = (c0 + chunk).min(s_kv);
        while i < s_q && ks(i) <= c1 {
            let n = ks(i);
            for (f, &x) in fq.iter_mut().zip(&h.q[i * dk..(i + 1) * dk]) {
                *f = cfg.scale * cfg.map.apply(x);
            }
            num.fill(0.0);
            let mut den = 0.0f32;
            for (c, &f) in fq.iter().enumerate() {
                den += f * state.z[c];
                axpy(&mut num, f, &state.s[c * dv..(c + 1) * dv]);
            }
            for j in c0..n {
                let s = dot(&fq, &fk[j * dk..(j + 1) * dk]);
                den += s;
                axpy(&mut num, s, &h.v[j * dv..(j + 1) * dv]);
            }
            pairs += (n - c0) as u64;
            den += cfg.eps * (state.n + (n - c0) as u64) as f32;
            lse[i] = finish(cfg, &num, den, true, &mut o[i * dv..(i + 1) * dv]);
            i += 1;
        }
        state.n += (c1 - c0) as u64;
        for j in c0..c1 {
            let fkj = &fk[j * dk..(j + 1) * dk];
            let vj = &h.v[j * dv..(j + 1) * dv];
            for (c, &f) in fkj.iter().enumerate() {
                state.z[c] += f;
                axpy(&mut state.s[c * dv..(c + 1) * dv], f, vj);
            }
        }
        c0 = c1;
    }
    while i < s_q {
        lse[i] = state.read(cfg, &h.q[i * dk..(i + 1) * dk], true, &mut o[i * dv..(i + 1) * dv]);
        i += 1;
    }
    pairs
}

/// Inputs in the fla layout: `q, k: [B, T, H, K]`, `v: [B, T, H, V]`.
#[derive(Debug, Clone, Copy)]
pub struct LinearInputs<'a> {
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// `[B, T, H, K, V]`.
    pub shape: [usize; 5],
    /// Query scale (fla default `K^-1/2`).
    pub scale: f32,
    /// The feature map `φ` applied to q and k.
    pub map: FeatureMap,
}

/// The naive form of [`linear_attention`] for one head, f64, plain loops: every score
/// `scale·φ(q_i)·φ(k_j)` (`j ≤ i`) materialised, plus the read of the initial state `state`
/// (`[K, V]`, in; the final state `S₀ + Σ_j φ(k_j) v_jᵀ` out).
fn reference_causal_state(map: FeatureMap, scale: f32, h: &Head, state: &mut [f32], o: &mut [f32]) {
    let (dk, dv, t) = (h.dk, h.dv, h.s_kv());
    let phi = |x: &[f32]| -> Vec<f64> { x.iter().map(|&x| map.apply_f64(x as f64)).collect() };
    let fk: Vec<Vec<f64>> = (0..t).map(|j| phi(&h.k[j * dk..(j + 1) * dk])).collect();
    let mut s: Vec<f64> = state.iter().map(|&x| x as f64).collect();
    let mut num = vec![0.0f64; dv];
    for i in 0..t {
        let fq: Vec<f64> =
            phi(&h.q[i * dk..(i + 1) * dk]).iter().map(|x| x * scale as f64).collect();
        num.fill(0.0);
        for (c, &f) in fq.iter().enumerate() {
            for (n, &x) in num.iter_mut().zip(&s[c * dv..(c + 1) * dv]) {
                *n += f * x;
            }
        }
        for (j, fkj) in fk.iter().enumerate().take(i + 1) {
            let score: f64 = fq.iter().zip(fkj).map(|(a, b)| a * b).sum();
            for (n, &x) in num.iter_mut().zip(&h.v[j * dv..(j + 1) * dv]) {
                *n += score * x as f64;
            }
        }
        for (d, &n) in o[i * dv..(i + 1) * dv].iter_mut().zip(&num) {
            *d = n as f32;
        }
    }
    for (j, fkj) in fk.iter().enumerate() {
        for (c, &f) in fkj.iter().enumerate() {
            for (x, &v) in s[c * dv..(c + 1) * dv].iter_mut().zip(&h.v[j * dv..(j + 1) * dv]) {
                *x += f * v as f64;
            }
        }
    }
    for (d, &x) in state.iter_mut().zip(&s) {
        *d = x as f32;
    }
}

/// Causal, unnormalised kernelised linear attention over fla-layout inputs, with a state in and
/// out: `S_t = S_{t−1} + φ(k_t) v_tᵀ`, `o_t = S_tᵀ (scale · φ(q_t))`, from `S₀ = initial_state`
/// (`[B, H, K, V]`, zeros when `None`). Writes `o: [B, T, H, V]` and the final state
/// `[B, H, K, V]`. With [`FeatureMap::Identity`] this is fla's `naive_recurrent_linear_attn`
/// with `normalize=False`.
///
/// # Errors
/// [`Error::Empty`](crate::Error::Empty) for a zero dimension,
/// [`Error::Shape`](crate::Error::Shape) for a slice of the wrong length,
/// [`Error::NonFinite`](crate::Error::NonFinite) for a non-finite input.
pub fn linear_attention(
    x: &LinearInputs,
    initial_state: Option<&[f32]>,
    form: Form,
    par: Par,
    o: &mut [f32],
    final_state: &mut [f32],
) -> Result<()> {
    let [b, t, h, dk, dv] = x.shape;
    super::check_fla(
        "linear_attention",
        x.shape,
        &[
            ("q", x.q.len(), b * t * h * dk),
            ("k", x.k.len(), b * t * h * dk),
            ("v", x.v.len(), b * t * h * dv),
            ("o", o.len(), b * t * h * dv),
            ("final_state", final_state.len(), b * h * dk * dv),
        ],
        &[("q", x.q, dk), ("k", x.k, dk), ("v", x.v, dv)],
        initial_state,
    )?;
    let cfg =
        Config { map: x.map, causal: true, norm: false, scale: x.scale, q_offset: 0, eps: 0.0 };
    let buf_len = t * (2 * dk + dv + 1);
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
            let (vb, lse) = rest.split_at_mut(t * dv);
            super::gather_head(x.q, [b, t, h, dk], bi, hi, qb);
            super::gather_head(x.k, [b, t, h, dk], bi, hi, kb);
            super::gather_head(x.v, [b, t, h, dv], bi, hi, vb);
            let head = Head { q: qb, k: kb, v: vb, dk, dv };
            if form == Form::Reference {
                reference_causal_state(x.map, x.scale, &head, st, oh);
                return;
            }
            // The normaliser sum z is unused without `norm`; the kernels add to `s` in place.
            let mut state = State { s: st.to_vec(), z: vec![0.0; dk], n: 0 };
            match form {
                Form::Chunked(n) => chunked(&cfg, &head, n, &mut state, oh, lse),
                _ => recurrent(&cfg, &head, &mut state, oh, lse),
            };
            st.copy_from_slice(&state.s);
        },
    );
    Ok(())
}
