//! The dense building blocks every family shares: linear layers through one GEMM (faer), norms,
//! activations and rotary embeddings, all on row-major `[tokens, features]` f32 buffers.
//!
//! faer is called with an explicit parallelism value: the whole token block goes through one
//! multi-threaded GEMM per projection (weights `[out, in]` row-major, as PyTorch and GGUF store them,
//! read transposed without a copy).

use attn::primitives::simd::{dispatch, Kernel, Level, Simd};
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Threads for the dense parts of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threads(pub usize);

impl Threads {
    /// Every worker of the current rayon pool.
    pub fn all() -> Self {
        Self(rayon::current_num_threads())
    }

    fn faer(self) -> faer::Par {
        if self.0 <= 1 {
            faer::Par::Seq
        } else {
            faer::Par::rayon(self.0)
        }
    }
}

/// A dense linear layer `y = x·Wᵀ + b` with `W: [out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Row-major `[out, in]`.
    pub w: Vec<f32>,
    /// `[out]`, if the layer has a bias.
    pub b: Option<Vec<f32>>,
    /// Output features.
    pub out: usize,
    /// Input features.
    pub inp: usize,
}

impl Linear {
    /// Builds a layer, checking the buffer lengths.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] when `w` or `b` has the wrong length.
    pub fn new(w: Vec<f32>, b: Option<Vec<f32>>, out: usize, inp: usize) -> Result<Self> {
        if w.len() != out * inp || b.as_ref().is_some_and(|b| b.len() != out) {
            return Err(ModelError::Invalid(format!(
                "linear layer [{out}, {inp}] given {} weights and {:?} biases",
                w.len(),
                b.as_ref().map(Vec::len)
            )));
        }
        Ok(Self { w, b, out, inp })
    }

    /// `y[n, out] = x[n, in]·Wᵀ (+ b)`; `y` is overwritten.
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32], th: Threads) {
        debug_assert_eq!(x.len(), n * self.inp);
        debug_assert_eq!(y.len(), n * self.out);
        matmul_bt(x, n, self.inp, &self.w, self.out, y, th);
        if let Some(b) = &self.b {
            y.par_chunks_mut(self.out).for_each(|row| {
                for (o, bi) in row.iter_mut().zip(b) {
                    *o += bi;
                }
            });
        }
    }

    /// A freshly allocated `[n, out]` output.
    pub fn apply(&self, x: &[f32], n: usize, th: Threads) -> Vec<f32> {
        let mut y = vec![0.0; n * self.out];
        self.forward(x, n, &mut y, th);
        y
    }

    /// Parameter count.
    pub fn params(&self) -> usize {
        self.w.len() + self.b.as_ref().map_or(0, Vec::len)
    }
}

/// Rows per thread from which [`matmul_bt`] splits the rows between threads instead of running
/// one parallel product.
const SPLIT_ROWS: usize = 64;

/// Columns per thread from which [`matmul_bt`] splits the columns between threads when they
/// outnumber the rows four to one.
const SPLIT_COLS: usize = 256;

/// `dst = lhs·rhs` with the columns split into `parts` sequential products run in parallel.
fn column_parts(dst: MatMut<'_, f32>, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>, parts: usize) {
    if parts <= 1 {
        matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, faer::Par::Seq);
        clean_upper_state();
        return;
    }
    let left = parts / 2;
    let mid = dst.ncols() * left / parts;
    let (dl, dr) = dst.split_at_col_mut(mid);
    let (rl, rr) = rhs.split_at_col(mid);
    rayon::join(|| column_parts(dl, lhs, rl, left), || column_parts(dr, lhs, rr, parts - left));
}

/// `y[n, m] = x[n, k]·wᵀ` for a row-major `w: [m, k]` (read transposed, no copy).
pub fn matmul_bt(x: &[f32], n: usize, k: usize, w: &[f32], m: usize, y: &mut [f32], th: Threads) {
    if n == 0 || m == 0 {
        return;
    }
    let seq = |x: &[f32], y: &mut [f32], n: usize, par: faer::Par| {
        let lhs = MatRef::from_row_major_slice(x, n, k);
        let rhs = MatRef::from_row_major_slice(w, m, k).transpose();
        let dst = MatMut::from_row_major_slice_mut(y, n, m);
        matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, par);
    };
    if th.0 > 1 && m >= 4 * n && m >= th.0 * SPLIT_COLS {
        // Far more output columns than rows (the vocabulary logits of a block of rows): split
        // the columns, so that each thread packs only its share of `w` (splitting the rows
        // would have every thread pack all of it, which costs as much as the product here).
        let lhs = MatRef::from_row_major_slice(x, n, k);
        let rhs = MatRef::from_row_major_slice(w, m, k).transpose();
        let dst = MatMut::from_row_major_slice_mut(y, n, m);
        column_parts(dst, lhs, rhs, th.0);
        return;
    }
    if th.0 > 1 && n >= th.0 * SPLIT_ROWS {
        // Enough rows for every thread: one sequential product per block of rows, with no
        // synchronisation inside the product (faer's parallel product waits at barriers between
        // its panels, which cost up to a fifth of BERT's time here).
        let rows = n.div_ceil(th.0);
        y.par_chunks_mut(rows * m).zip(x.par_chunks(rows * k)).for_each(|(yc, xc)| {
            seq(xc, yc, xc.len() / k, faer::Par::Seq);
            clean_upper_state();
        });
        return;
    }
    let par = th.faer();
    seq(x, y, n, par);
    // faer's assembly micro-kernels return with the upper halves of the vector registers dirty;
    // on the threads that ran them, the next non-VEX SSE code (Rust's baseline float code, as in
    // the activations) then ran ~60× slower here (measured: SiLU over 3.1M floats 11 ms → 700 ms).
    // `vzeroupper` on every thread that may have run a kernel restores full speed.
    clean_upper_state();
    if matches!(par, faer::Par::Rayon(_)) {
        rayon::broadcast(|_| clean_upper_state());
    }
}

/// Executes `vzeroupper` where the CPU has AVX (no-op elsewhere).
pub fn clean_upper_state() {
    #[cfg(target_arch = "x86_64")]
    {
        // `vzeroupper` only clears the upper halves of vector registers, which no live value
        // of the caller occupies across this call.
        #[target_feature(enable = "avx")]
        fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper()
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX was detected at run time.
            unsafe { zero_upper() }
        }
    }
}

/// LayerNorm over the last axis of `x: [n, dim]`, in place.
pub fn layer_norm(x: &mut [f32], dim: usize, gamma: &[f32], beta: &[f32], eps: f32) {
    x.par_chunks_mut(dim).for_each(|row| {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = ((f64::from(*v) - mean) * inv) as f32 * g + b;
        }
    });
}

/// RMSNorm over the last axis: `x·w/√(mean(x²)+eps)`, from `x` into `y` (may not alias).
pub fn rms_norm(x: &[f32], dim: usize, w: &[f32], eps: f32, y: &mut [f32]) {
    y.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(|(yr, xr)| rms_row(xr, w, eps, yr));
}

/// RMSNorm in place.
pub fn rms_norm_inplace(x: &mut [f32], dim: usize, w: &[f32], eps: f32) {
    x.par_chunks_mut(dim).for_each(|row| {
        let inv = rms_inv(row, eps);
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * inv * g;
        }
    });
}

fn rms_inv(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / row.len() as f64;
    (1.0 / (ms + f64::from(eps)).sqrt()) as f32
}

/// RMSNorm of one row.
pub fn rms_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let inv = rms_inv(x, eps);
    for ((o, &v), g) in y.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

/// GELU with the error function (BERT): `x·(1 + erf(x/√2))/2`, with [`erf_fast`] (absolute
/// error ≤ 1.5e-7, below f32 resolution of the result).
pub fn gelu_erf(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * (1.0 + erf_fast(x / std::f64::consts::SQRT_2))) as f32
}

/// [`gelu_erf`] over a slice, in place, with attn's SIMD level: the same formula in f32 lanes
/// (`erf` by Abramowitz & Stegun 7.1.26, its `exp` by [`Simd::exp2`]). Written as
/// `½(x + |x| − |x|·y)` with `y = 1 − erf(|x|/√2)`, so negative inputs lose nothing to
/// cancellation. Absolute error ≤ 1e-6·max(1, |x|) against the f64 GELU (tested); every element,
/// the slice's tail included, goes through the same lane code.
pub fn gelu_erf_slice(x: &mut [f32]) {
    dispatch(Level::current(), GeluErf(x));
}

struct GeluErf<'a>(&'a mut [f32]);

impl Kernel for GeluErf<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let n = self.0.len();
        let main = n - n % S::LANES;
        let (body, tail) = self.0.split_at_mut(main);
        for c in body.chunks_exact_mut(S::LANES) {
            // SAFETY: `dispatch` runs this at a level the CPU has; `c` holds LANES values.
            unsafe { S::store(c.as_mut_ptr(), gelu_erf_lanes::<S>(S::load(c.as_ptr()))) }
        }
        if !tail.is_empty() {
            let mut buf = [0f32; 16];
            buf[..tail.len()].copy_from_slice(tail);
            // SAFETY: as above; `buf` holds 16 ≥ LANES values.
            unsafe { S::store(buf.as_mut_ptr(), gelu_erf_lanes::<S>(S::load(buf.as_ptr()))) }
            tail.copy_from_slice(&buf[..tail.len()]);
        }
    }
}

/// GELU (erf) of one register; see [`gelu_erf_slice`].
///
/// # Safety
/// The CPU supports `S`'s level.
#[inline(always)]
unsafe fn gelu_erf_lanes<S: Simd>(x: S::V) -> S::V {
    // SAFETY: the caller guarantees the level.
    unsafe {
        let (zero, one) = (S::splat(0.0), S::splat(1.0));
        let ax = S::max(x, S::sub(zero, x));
        let a = S::mul(ax, S::splat(std::f32::consts::FRAC_1_SQRT_2));
        let t = S::div(one, S::fma(S::splat(0.327_591_1), a, one));
        let mut poly = S::splat(1.061_405_4);
        for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
            poly = S::fma(poly, t, S::splat(c));
        }
        // e^{−a²} = 2^{−a² log₂ e}; below −126 exp2 gives exactly 0 (GELU ≈ 0 there).
        let e = S::exp2(S::mul(S::mul(a, a), S::splat(-std::f32::consts::LOG2_E)));
        let y = S::mul(S::mul(t, poly), e);
        S::mul(S::splat(0.5), S::sub(S::add(x, ax), S::mul(ax, y)))
    }
}

/// `out[i] = act(g[i]) · u[i]` for a gated FFN, with attn's SIMD level: SiLU `x·σ(x)` when
/// `tanh_gelu` is false, else the tanh-approximate GELU written as `x·σ(2c(x + 0.044715x³))`,
/// `c = √(2/π)` (the same function: `½(1 + tanh z) = σ(2z)`). `σ` uses [`Simd::exp2`] with its
/// exponent clamped to ±126, where `σ` is 0 or 1 to f32 precision. Relative error against the
/// f64 functions ≤ `(1 + 0.1·|z|)·1e-6` for `σ(z)` (the f32 rounding of the exponent; 3e-6 at the
/// `|z| ≈ 20` where σ's tail still matters), plus 1e-30 absolute where σ underflows (tested);
/// the tail goes through the same lane code.
pub fn gated_act(g: &[f32], u: &[f32], out: &mut [f32], tanh_gelu: bool) {
    dispatch(Level::current(), GatedAct { g, u, out, tanh_gelu });
}

struct GatedAct<'a> {
    g: &'a [f32],
    u: &'a [f32],
    out: &'a mut [f32],
    tanh_gelu: bool,
}

impl Kernel for GatedAct<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self) {
        let n = self.out.len().min(self.g.len()).min(self.u.len());
        let main = n - n % S::LANES;
        let tanh_gelu = self.tanh_gelu;
        for ((o, g), u) in self.out[..main]
            .chunks_exact_mut(S::LANES)
            .zip(self.g[..main].chunks_exact(S::LANES))
            .zip(self.u[..main].chunks_exact(S::LANES))
        {
            // SAFETY: `dispatch` runs this at a level the CPU has; each chunk holds LANES values.
            unsafe {
                let y = gated_lanes::<S>(S::load(g.as_ptr()), S::load(u.as_ptr()), tanh_gelu);
                S::store(o.as_mut_ptr(), y);
            }
        }
        if main < n {
            let (mut gb, mut ub) = ([0f32; 16], [0f32; 16]);
            let t = n - main;
            gb[..t].copy_from_slice(&self.g[main..n]);
            ub[..t].copy_from_slice(&self.u[main..n]);
            // SAFETY: as above; the buffers hold 16 ≥ LANES values.
            unsafe {
                let y = gated_lanes::<S>(S::load(gb.as_ptr()), S::load(ub.as_ptr()), tanh_gelu);
                S::store(gb.as_mut_ptr(), y);
            }
            self.out[main..n].copy_from_slice(&gb[..t]);
        }
    }
}

/// `act(g)·u` on one register; see [`gated_act`].
///
/// # Safety
/// The CPU supports `S`'s level.
#[inline(always)]
unsafe fn gated_lanes<S: Simd>(g: S::V, u: S::V, tanh_gelu: bool) -> S::V {
    // SAFETY: the caller guarantees the level.
    unsafe {
        let one = S::splat(1.0);
        let z = if tanh_gelu {
            let c = (2.0 / std::f32::consts::PI).sqrt();
            let g3 = S::mul(S::mul(g, g), g);
            S::mul(S::splat(2.0 * c), S::fma(S::splat(0.044_715), g3, g))
        } else {
            g
        };
        // 2^{−z log₂ e} with the exponent kept in [−126, 126]: max(min(a, 126), −126) as
        // −max(−max(a, −126), −126) (the trait has no min).
        let lim = S::splat(-126.0);
        let a = S::mul(z, S::splat(-std::f32::consts::LOG2_E));
        let a = S::sub(S::splat(0.0), S::max(S::sub(S::splat(0.0), S::max(a, lim)), lim));
        S::mul(S::div(g, S::add(one, S::exp2(a))), u)
    }
}

/// The error function by Abramowitz & Stegun 7.1.26 (one `exp` and a degree-5 polynomial;
/// absolute error ≤ 1.5e-7), ~20× cheaper than the series of [`erf`].
pub fn erf_fast(x: f64) -> f64 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-a * a).exp()).copysign(x)
}

/// The error function, to double precision (Abramowitz–Stegun 7.1.26 is too coarse for a
/// 1e-5 agreement; this uses the series for small |x| and the continued fraction for large).
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // Maclaurin series: erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)).
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …)))) (Lentz).
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(x)
}

/// How rotary embedding pairs the features of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeStyle {
    /// Pairs `(2i, 2i+1)` (GGUF `llama` after the converter's permutation; ggml mode 0).
    Interleaved,
    /// Pairs `(i, i + d/2)` (GPT-NeoX, HF `rotate_half`; Qwen2, Gemma).
    HalfSplit,
}

/// Rotary position embedding tables for one θ and head size.
#[derive(Debug, Clone)]
pub struct Rope {
    /// Style.
    pub style: RopeStyle,
    /// Rotated features per head (`≤ head_dim`, even).
    pub rot_dim: usize,
    inv_freq: Vec<f64>,
}

impl Rope {
    /// Frequencies `θ^(−2i/rot_dim)`, optionally divided by a linear scaling factor.
    pub fn new(style: RopeStyle, rot_dim: usize, theta: f64, linear_scale: f64) -> Self {
        let inv_freq = (0..rot_dim / 2)
            .map(|i| theta.powf(-(2.0 * i as f64) / rot_dim as f64) / linear_scale)
            .collect();
        Self { style, rot_dim, inv_freq }
    }

    /// A RoPE with the given frequencies (radians per position of each pair; `rot_dim` is twice
    /// their number), as recorded by [`Rope::inv_freq`].
    pub fn from_inv_freq(style: RopeStyle, inv_freq: Vec<f64>) -> Self {
        Self { style, rot_dim: 2 * inv_freq.len(), inv_freq }
    }

    /// The frequencies `θ^(−2i/rot_dim)/scale`, one per rotated pair (radians per position).
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Rotates every head of `x: [n, heads·head_dim]` whose row `t` sits at position `pos0 + t`.
    pub fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize, pos0: usize) {
        let n = x.len() / (heads * head_dim).max(1);
        self.table(pos0, n).apply(x, heads, head_dim);
    }

    /// The cos/sin table of positions `pos0 .. pos0 + n` (computed once, applied to every layer
    /// that shares this RoPE).
    pub fn table(&self, pos0: usize, n: usize) -> RopeTable {
        let half = self.rot_dim / 2;
        let mut cs = vec![(0f32, 0f32); n * half];
        cs.par_chunks_mut(half.max(1)).enumerate().for_each(|(t, row)| {
            let pos = (pos0 + t) as f64;
            for (i, c) in row.iter_mut().enumerate() {
                let (s, co) = (pos * self.inv_freq[i]).sin_cos();
                *c = (co as f32, s as f32);
            }
        });
        RopeTable { style: self.style, half, pos0, cs }
    }

    /// Whether two RoPEs rotate identically (same style, size and frequencies).
    pub fn same_as(&self, other: &Rope) -> bool {
        self.style == other.style
            && self.rot_dim == other.rot_dim
            && self.inv_freq == other.inv_freq
    }
}

/// Precomputed `(cos, sin)` per position and frequency.
#[derive(Debug, Clone)]
pub struct RopeTable {
    style: RopeStyle,
    half: usize,
    /// First position.
    pub pos0: usize,
    cs: Vec<(f32, f32)>,
}

impl RopeTable {
    /// Rotates `x: [n, heads·head_dim]` (row `t` at position `pos0 + t`).
    #[allow(clippy::needless_range_loop)] // i indexes two feature positions and the table
    pub fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize) {
        let half = self.half;
        if half == 0 {
            return;
        }
        x.par_chunks_mut(heads * head_dim).zip(self.cs.par_chunks(half)).for_each(|(r, cs)| {
            for h in r.chunks_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = match self.style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::HalfSplit => (i, i + half),
                    };
                    let ((c, s), (x0, x1)) = (cs[i], (h[a], h[b]));
                    h[a] = x0 * c - x1 * s;
                    h[b] = x0 * s + x1 * c;
                }
            }
        });
    }
}

/// Log-softmax of one row of logits, in f64 for the sums.
pub fn log_softmax_at(logits: &[f32], index: usize) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let s: f64 = logits.iter().map(|&v| f64::from(v - m).exp()).sum();
    f64::from(logits[index] - m) - s.ln()
}

/// Normalises each row of `x: [n, dim]` to unit L2 norm (rows of zeros stay zero).
pub fn l2_normalize(x: &mut [f32], dim: usize) {
    for row in x.chunks_mut(dim) {
        let n = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        let n = n.max(1e-12);
        for v in row {
            *v = (f64::from(*v) / n) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_gelu_matches_f64_at_every_level() {
        // 2001 points on [−20, 20] (an odd count: the slice has a tail at every level).
        let xs: Vec<f32> = (0..2001).map(|i| -20.0 + 0.02 * i as f32).collect();
        for level in Level::available() {
            let mut got = xs.clone();
            attn::primitives::simd::with_level(level, || gelu_erf_slice(&mut got));
            for (&x, &g) in xs.iter().zip(&got) {
                let x64 = f64::from(x);
                let want = 0.5 * x64 * (1.0 + erf(x64 / std::f64::consts::SQRT_2));
                let err = (f64::from(g) - want).abs();
                assert!(err <= 1e-6 * x64.abs().max(1.0), "{level:?} x = {x}: {g} vs {want}");
            }
            // Far negative: exactly 0 once e^{−x²/2} underflows, never NaN.
            let mut far = vec![-1e30f32, -50.0, f32::MIN];
            attn::primitives::simd::with_level(level, || gelu_erf_slice(&mut far));
            assert!(far.iter().all(|&g| g == 0.0), "{level:?}: {far:?}");
        }
    }

    #[test]
    fn vector_gated_activations_match_f64_at_every_level() {
        // 1001 gate values on [−100, 100] (a tail at every level), up values of both signs.
        let g: Vec<f32> = (0..1001).map(|i| -100.0 + 0.2 * i as f32).collect();
        let u: Vec<f32> = (0..1001).map(|i| if i % 3 == 0 { -1.5 } else { 0.75 }).collect();
        for level in Level::available() {
            for tanh_gelu in [false, true] {
                let mut out = vec![f32::NAN; g.len()];
                attn::primitives::simd::with_level(level, || {
                    gated_act(&g, &u, &mut out, tanh_gelu)
                });
                for ((&x, &y), &o) in g.iter().zip(&u).zip(&out) {
                    let x64 = f64::from(x);
                    // x·σ(z); for the GELU ½(1 + tanh(z/2)) = σ(z) (written with σ: in f64,
                    // 1 + tanh cancels to 0 for z below −38).
                    let z = if tanh_gelu {
                        2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044_715 * x64.powi(3))
                    } else {
                        x64
                    };
                    let want = x64 / (1.0 + (-z).exp()) * f64::from(y);
                    let err = (f64::from(o) - want).abs();
                    // Evaluating z in f32 (a few roundings) moves e^z by up to ~2e-7·|z| relative.
                    assert!(
                        err <= (1e-6 + 2.5e-7 * z.abs()) * want.abs() + 1e-30,
                        "{level:?} tanh_gelu {tanh_gelu} x = {x}: {o} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn erf_matches_known_values() {
        // Values from tables of the error function.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (-1.0, -0.842_700_792_949_714_9),
        ] {
            assert!((erf(x) - e).abs() < 1e-13, "erf({x}) = {} ≠ {e}", erf(x));
        }
    }

    #[test]
    fn fast_erf_is_within_its_documented_bound() {
        let mut worst = 0f64;
        for i in -6000..=6000 {
            let x = f64::from(i) * 1e-3;
            worst = worst.max((erf_fast(x) - erf(x)).abs());
        }
        assert!(worst <= 1.5e-7, "max |erf_fast − erf| = {worst}");
    }

    #[test]
    fn linear_matches_plain_loops() {
        let (n, inp, out) = (5, 7, 3);
        let x: Vec<f32> = (0..n * inp).map(|i| (i as f32 * 0.3).sin()).collect();
        let w: Vec<f32> = (0..out * inp).map(|i| (i as f32 * 0.7).cos()).collect();
        let b = vec![0.5, -1.0, 2.0];
        let l = Linear::new(w.clone(), Some(b.clone()), out, inp).unwrap();
        for th in [Threads(1), Threads(2)] {
            let y = l.apply(&x, n, th);
            for i in 0..n {
                for o in 0..out {
                    let e: f32 =
                        (0..inp).map(|k| x[i * inp + k] * w[o * inp + k]).sum::<f32>() + b[o];
                    assert!((y[i * out + o] - e).abs() < 1e-5);
                }
            }
        }
        assert!(Linear::new(w, None, out, inp + 1).is_err());
    }

    #[test]
    fn rope_styles_rotate_the_documented_pairs() {
        let d = 4;
        let mut a = vec![1.0, 2.0, 3.0, 4.0];
        let mut b = a.clone();
        Rope::new(RopeStyle::Interleaved, d, 10_000.0, 1.0).apply(&mut a, 1, d, 1);
        Rope::new(RopeStyle::HalfSplit, d, 10_000.0, 1.0).apply(&mut b, 1, d, 1);
        let (c0, s0) = (1f64.cos() as f32, 1f64.sin() as f32);
        let f1 = 10_000f64.powf(-0.5);
        let (c1, s1) = (f1.cos() as f32, f1.sin() as f32);
        let ea =
            [1.0 * c0 - 2.0 * s0, 1.0 * s0 + 2.0 * c0, 3.0 * c1 - 4.0 * s1, 3.0 * s1 + 4.0 * c1];
        let eb =
            [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 1.0 * s0 + 3.0 * c0, 2.0 * s1 + 4.0 * c1];
        for i in 0..4 {
            assert!((a[i] - ea[i]).abs() < 1e-6 && (b[i] - eb[i]).abs() < 1e-6, "{a:?} {b:?}");
        }
        // Position 0 is the identity.
        let mut z = vec![1.0, 2.0, 3.0, 4.0];
        Rope::new(RopeStyle::HalfSplit, d, 1e6, 1.0).apply(&mut z, 1, d, 0);
        assert_eq!(z, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn norms_normalise() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 1.0, 2.0];
        layer_norm(&mut x, 4, &[1.0; 4], &[0.0; 4], 0.0);
        for r in x.chunks(4) {
            let m: f32 = r.iter().sum::<f32>() / 4.0;
            let v: f32 = r.iter().map(|a| (a - m) * (a - m)).sum::<f32>() / 4.0;
            assert!(m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5);
        }
        let mut y = vec![3.0, 4.0];
        rms_norm_inplace(&mut y, 2, &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
    }
}
