//! Linear and recurrent attention: a `K × V` state per head instead of the `n × n` matrix.
//!
//! Each mechanism comes in three forms that compute the same function (spec `linear.md` Part A):
//! - **reference** — the naive quadratic form, plain loops, f64 accumulation;
//! - **recurrent** — one token at a time, state in and out (decode; cost per token independent of
//!   the position);
//! - **chunked** — chunkwise-parallel prefill: inside a chunk of `C` tokens the quadratic form,
//!   across chunks the state is passed on (for the delta rule the UT representation, solved by
//!   forward substitution, with every decay factor of the form `exp(γ_i − γ_j) ≤ 1`).
//!
//! Layout: the kernels work on one head at a time, rows contiguous: `q, k: [T, K]`,
//! `v: [T, V]`, state `[K, V]` row-major, per-token gates `g: [T]` (natural-log decay, `≤ 0`) and
//! `beta: [T]`. [`gated_delta_rule`] takes the fla layout (`q, k: [B, T, H, K]`, `v: [B, T, H, V]`,
//! `g, beta: [B, T, H]`, state `[B, H, K, V]`) and gathers each head; [`linear_attention`] does
//! the same for causal unnormalised linear attention (fla's `naive_recurrent_linear_attn`). Both
//! are what `attn run --g --beta --initial-state --final-state` calls.
//!
//! Mechanisms: [`vanilla`] (kernelised linear attention with a feature map) and [`delta`] (the
//! gated delta rule of Gated DeltaNet and KDA); [`nala`] adds NaLaFormer's norm-aware feature maps
//! on top of [`vanilla`]. The FAVOR+ positive random feature map plugs into
//! [`FeatureMap`] once the shared RNG (`primitives/rng.rs`) lands: it needs a seeded projection
//! matrix, so it will be a variant carrying that matrix rather than a pure element-wise map.

pub mod delta;
pub mod nala;
pub mod vanilla;

pub use delta::{gated_delta_rule, DeltaInputs, Form};
pub use vanilla::{linear_attention, LinearInputs};

use crate::error::{Error, Result};
use crate::par::Par;
use std::sync::Mutex;

/// Element-wise feature map `φ` of kernelised linear attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureMap {
    /// `φ(x) = x`.
    Identity,
    /// `φ(x) = elu(x) + 1` (Katharopoulos et al. 2020): positive, so the normaliser is positive.
    Elu1,
    /// `φ(x) = elu(x)` (`x` for `x > 0`, `eˣ − 1` otherwise): can be negative (transNormer T1's
    /// kernel, used without a normaliser).
    Elu,
    /// `φ(x) = max(x, 0)`.
    Relu,
}

impl FeatureMap {
    /// `φ(x)` in f32.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            FeatureMap::Identity => x,
            FeatureMap::Elu1 => {
                if x > 0.0 {
                    x + 1.0
                } else {
                    // The crate's exp2 polynomial (relative error ≤ 2.4e-7): libm's expf call
                    // was most of the chunked forms' time.
                    crate::primitives::simd::exp2_scalar(x * std::f32::consts::LOG2_E)
                }
            }
            FeatureMap::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            FeatureMap::Relu => x.max(0.0),
        }
    }

    /// `φ(x)` in f64 (references).
    #[inline]
    pub fn apply_f64(self, x: f64) -> f64 {
        match self {
            FeatureMap::Identity => x,
            FeatureMap::Elu1 => {
                if x > 0.0 {
                    x + 1.0
                } else {
                    x.exp()
                }
            }
            FeatureMap::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            FeatureMap::Relu => x.max(0.0),
        }
    }

    /// The name used in method specs (`identity`, `elu1`, `elu`, `relu`).
    pub fn name(self) -> &'static str {
        match self {
            FeatureMap::Identity => "identity",
            FeatureMap::Elu1 => "elu1",
            FeatureMap::Elu => "elu",
            FeatureMap::Relu => "relu",
        }
    }

    /// Parses [`FeatureMap::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "identity" => Some(FeatureMap::Identity),
            "elu1" | "elu+1" => Some(FeatureMap::Elu1),
            "elu" => Some(FeatureMap::Elu),
            "relu" => Some(FeatureMap::Relu),
            _ => None,
        }
    }
}

/// Which keys query row `i` reads in a causal linear method: keys `0..=pos_i` clamped to the
/// sequence, as a count (`0` = none). `pos_i = q_offset + i` (spec §0: bottom-right alignment
/// is the caller's `q_offset`).
#[inline]
pub fn keys_seen(q_offset: i64, i: usize, s_kv: usize) -> usize {
    (q_offset + i as i64 + 1).clamp(0, s_kv as i64) as usize
}

/// `a · b` in f32 (a fixed order: 8 interleaved partial sums, then a fixed tree; the compiler
/// may vectorise it but not reorder it, so results do not depend on the SIMD level).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[l] += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `y += a · x`.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Copies head `hi` of batch element `bi` out of an fla-layout array `src: [B, T, H, W]` into
/// `dst: [T, W]` (rows contiguous).
pub(crate) fn gather_head(
    src: &[f32],
    [_, t, h, w]: [usize; 4],
    bi: usize,
    hi: usize,
    dst: &mut [f32],
) {
    for s in 0..t {
        let row = (bi * t + s) * h + hi;
        dst[s * w..(s + 1) * w].copy_from_slice(&src[row * w..(row + 1) * w]);
    }
}

/// Validates the inputs of an fla-layout API ([`gated_delta_rule`], [`linear_attention`]) of
/// shape `[B, T, H, K, V]`: no zero dimension, every `(name, length, wanted)` of `lengths`
/// matching, every `(name, data, row width)` of `finite` finite (reported as `[b, t, h, col]`),
/// and the initial state, when given, of length `B·H·K·V` and finite.
pub(crate) fn check_fla(
    op: &'static str,
    [b, t, h, dk, dv]: [usize; 5],
    lengths: &[(&'static str, usize, usize)],
    finite: &[(&'static str, &[f32], usize)],
    initial_state: Option<&[f32]>,
) -> Result<()> {
    for (dim, n) in [("B", b), ("T", t), ("H", h), ("K", dk), ("V", dv)] {
        if n == 0 {
            return Err(Error::Empty { op, dim });
        }
    }
    for &(name, got, want) in lengths {
        if got != want {
            return Err(Error::Shape {
                op,
                detail: format!("{name}: {got} elements, want {want}"),
            });
        }
    }
    for &(name, data, w) in finite {
        if let Some(p) = data.iter().position(|a| !a.is_finite()) {
            let (row, d) = (p / w, p % w);
            return Err(Error::NonFinite {
                op,
                tensor: name,
                index: [row / (t * h), row / h % t, row % h, d],
                value: data[p],
            });
        }
    }
    match initial_state {
        Some(s0) => check_state(op, s0, [b, h, dk, dv]),
        None => Ok(()),
    }
}

/// Checks an initial state `[B, H, K, V]`: its length and that every value is finite.
pub(crate) fn check_state(op: &'static str, s0: &[f32], [b, h, dk, dv]: [usize; 4]) -> Result<()> {
    if s0.len() != b * h * dk * dv {
        return Err(Error::Shape {
            op,
            detail: format!("initial_state: {} elements, want {}", s0.len(), b * h * dk * dv),
        });
    }
    if let Some(p) = s0.iter().position(|a| !a.is_finite()) {
        // Reported as [b, h, k, v].
        let index = [p / (h * dk * dv), p / (dk * dv) % h, p / dv % dk, p % dv];
        return Err(Error::NonFinite { op, tensor: "initial_state", index, value: s0[p] });
    }
    Ok(())
}

/// The per-head driver of the fla-layout APIs ([`gated_delta_rule`], [`linear_attention`]):
/// for each (batch, head) pair, `f(buf, b, h, state, o_head)` runs with that head's state
/// (`[K, V]`, set to its slice of `initial_state` or zeros; left as the final state) and its
/// output rows `o_head: [T, V]`; `buf` is `buf_len` floats of per-worker scratch. Heads are spread
/// over `par`, each computed by one worker, so results do not depend on the thread count. The
/// rows are then scattered into `o: [B, T, H, V]`.
pub(crate) fn fla_heads(
    [b, t, h, dv]: [usize; 4],
    initial_state: Option<&[f32]>,
    par: Par,
    o: &mut [f32],
    final_state: &mut [f32],
    buf_len: usize,
    f: impl Fn(&mut [f32], usize, usize, &mut [f32], &mut [f32]) + Sync,
) {
    let heads = b * h;
    let per = final_state.len() / heads.max(1);
    let jobs = par.threads().min(heads).max(1);
    let slots: Vec<Mutex<(&mut [f32], Vec<f32>)>> =
        final_state.chunks_mut(per).map(|s| Mutex::new((s, vec![0.0f32; t * dv]))).collect();
    par.run(jobs, |wkr| {
        let mut buf = vec![0.0f32; buf_len];
        for hd in (wkr..heads).step_by(jobs) {
            let mut slot = slots[hd].lock().unwrap_or_else(|e| e.into_inner());
            let (st, oh) = &mut *slot;
            match initial_state {
                Some(s0) => st.copy_from_slice(&s0[hd * per..(hd + 1) * per]),
                None => st.fill(0.0),
            }
            f(&mut buf, hd / h, hd % h, st, oh);
        }
    });
    for (hd, slot) in slots.into_iter().enumerate() {
        let (_, oh) = slot.into_inner().unwrap_or_else(|e| e.into_inner());
        let (bi, hi) = (hd / h, hd % h);
        for s in 0..t {
            let row = (bi * t + s) * h + hi;
            o[row * dv..(row + 1) * dv].copy_from_slice(&oh[s * dv..(s + 1) * dv]);
        }
    }
}
